/**
 * Layout `list`: a text file of image paths, one per line (what the
 * reference trainer reads); blank lines and lines starting with '#' are
 * skipped. Relative paths are relative to the list's folder. No labels.
 */
import { dirname, isAbsolute, join, normalize, relative } from "node:path";
import {
  dedupeKeys,
  type Enumeration,
  type InputError,
  keyFromPath,
  LayoutError,
  type SampleSource,
} from "./sample.ts";

/** Lists the samples named by a path list. */
export async function enumerateList(listPath: string): Promise<Enumeration> {
  let text: string;
  try {
    text = await Deno.readTextFile(listPath);
  } catch (e) {
    throw new LayoutError(
      `--input '${listPath}' cannot be read (${(e as Error).message}); the list layout ` +
        `takes a text file with one image path per line`,
    );
  }
  const base = dirname(listPath);
  const errors: InputError[] = [];
  const samples: SampleSource[] = [];
  for (const line of text.split(/\r?\n/)) {
    const p = line.trim();
    if (p === "" || p.startsWith("#")) continue;
    const path = isAbsolute(p) ? normalize(p) : join(base, p);
    // Keys come from the path as seen from the list's folder; paths outside it
    // keep their absolute form (minus the root) so keys stay unique.
    const fromBase = relative(base, path).replace(/\\/g, "/");
    const rel = fromBase.startsWith("..") ? path.replace(/^\/+/, "") : fromBase;
    samples.push({ key: keyFromPath(rel), path, rel, label: null });
  }
  return { samples: dedupeKeys(samples, errors), classes: [], errors };
}
