/**
 * Layout `mil`: patient-level sets (AML Hehr): `<split>/<class>/<patient>/…`
 * images. Every cell carries its patient's class; the patient id is the
 * folder name and must belong to one class only. Without `--split` the source
 * split folders are the output splits; with it, patients are re-split.
 */
import { join } from "node:path";
import {
  dedupeKeys,
  type Enumeration,
  type InputError,
  isImageName,
  keyFromPath,
  resolveClasses,
  type SampleSource,
} from "./sample.ts";
import { listDir, requireDir, walkImages } from "./walk.ts";

/** Lists the cells of a split/class/patient tree. */
export async function enumerateMil(
  root: string,
  opts: { classes?: string[] } = {},
): Promise<Enumeration> {
  await requireDir(root, "--input");
  const errors: InputError[] = [];
  const samples: SampleSource[] = [];
  const patientClass = new Map<string, string>();
  const classFolders = new Set<string>();
  const misplaced = (path: string) =>
    errors.push({
      path,
      reason: "image not under <split>/<class>/<patient>/; the mil layout needs that depth",
    });
  const top = await listDir(root);
  for (const f of top.files) if (isImageName(f)) misplaced(join(root, f));
  for (const split of top.dirs) {
    const splitDir = join(root, split);
    const classes = await listDir(splitDir);
    for (const f of classes.files) if (isImageName(f)) misplaced(join(splitDir, f));
    for (const cls of classes.dirs) {
      classFolders.add(cls);
      const clsDir = join(splitDir, cls);
      const patients = await listDir(clsDir);
      for (const f of patients.files) if (isImageName(f)) misplaced(join(clsDir, f));
      for (const patient of patients.dirs) {
        const prev = patientClass.get(patient);
        const cells = await walkImages(join(clsDir, patient), `${split}/${cls}/${patient}`);
        if (prev !== undefined && prev !== cls) {
          for (const c of cells) {
            errors.push({
              path: c.path,
              reason: `patient '${patient}' appears under classes '${prev}' and '${cls}'`,
            });
          }
          continue;
        }
        patientClass.set(patient, cls);
        for (const c of cells) {
          samples.push({
            key: keyFromPath(c.rel),
            path: c.path,
            rel: c.rel,
            label: cls,
            patient,
            sourceSplit: split,
          });
        }
      }
    }
  }
  const unique = dedupeKeys(samples, errors);
  const resolved = resolveClasses(unique, errors, opts.classes ?? [...classFolders].sort());
  return { samples: resolved.samples, classes: resolved.classes, errors };
}
