/**
 * Layout `imagefolder`: `<root>/<class>/…/<image>`, images by extension (jpg,
 * jpeg, png, tif, tiff, bmp), at any depth under the class folder (Acevedo,
 * Raabin, the BCCD crops). Class names are the folder names, sorted
 * (or `--classes`, in its order); images directly under the root have no
 * class and are refused.
 */
import { join } from "node:path";
import {
  dedupeKeys,
  type Enumeration,
  isImageName,
  type ItemError,
  keyFromPath,
  resolveClasses,
  type SampleSource,
} from "./sample.ts";
import { listDir, requireDir, walkImages, walkScope } from "./walk.ts";

/** Lists the samples of a folder-per-class tree. */
export async function enumerateImageFolder(
  root: string,
  opts: { classes?: string[]; followLinks?: boolean } = {},
): Promise<Enumeration> {
  await requireDir(root, "--input");
  const errors: ItemError[] = [];
  const scope = await walkScope(root, errors, opts);
  const top = await listDir(root, scope);
  for (const f of top.files) {
    if (isImageName(f)) {
      errors.push({
        path: join(root, f),
        reason: "image outside a class folder; move it into <input>/<class>/",
      });
    }
  }
  const samples: SampleSource[] = [];
  for (const cls of top.dirs) {
    for (const f of await walkImages(join(root, cls), cls, scope)) {
      samples.push({ key: keyFromPath(f.rel), path: f.path, rel: f.rel, label: cls });
    }
  }
  const unique = dedupeKeys(samples, errors);
  // Folder names are the classes even when a folder is empty, as torchvision's
  // ImageFolder counts them, so class indices match between datasets.
  const wanted = opts.classes ?? top.dirs;
  const resolved = resolveClasses(unique, errors, wanted);
  return { samples: resolved.samples, classes: resolved.classes, errors };
}
