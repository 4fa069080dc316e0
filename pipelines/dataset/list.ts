/**
 * Layout `list`: a text file of image paths, one per line (what the
 * reference trainer reads); blank lines and lines starting with '#' are
 * skipped. Relative paths are relative to the list's folder. No labels.
 */
import { dirname, isAbsolute, join, normalize, relative, resolve } from "node:path";
import {
  badPathReason,
  dedupeKeys,
  type Enumeration,
  type ItemError,
  keyFromPath,
  LayoutError,
  type SampleSource,
} from "./sample.ts";

/** The deepest folder that holds every path ('/'-separated absolute paths). */
function commonFolder(paths: string[]): string {
  if (paths.length === 0) return "/";
  let parts = paths[0].split("/").slice(0, -1);
  for (const p of paths.slice(1)) {
    const q = p.split("/");
    let i = 0;
    while (i < parts.length && i < q.length - 1 && parts[i] === q[i]) i++;
    parts = parts.slice(0, i);
  }
  return parts.join("/") || "/";
}

/**
 * Lists the samples named by a path list. Keys come from each path relative
 * to the deepest folder holding all of them (`/data/pbc/a/1.jpg`,
 * `/data/pbc/b/2.jpg` give `a__1`, `b__2`), so they do not depend on where
 * the list file lives; the json's `source` is the line as written.
 */
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
  const base = resolve(dirname(listPath));
  const errors: ItemError[] = [];
  const lines: { line: string; path: string }[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const why = badPathReason(line);
    if (why) {
      errors.push({ path: `${listPath}:${i + 1}`, reason: `line ${why}` });
      return;
    }
    lines.push({ line, path: isAbsolute(line) ? normalize(line) : join(base, line) });
  });
  const root = commonFolder(lines.map((l) => l.path));
  const samples: SampleSource[] = lines.map(({ line, path }) => ({
    key: keyFromPath(relative(root, path)),
    path,
    rel: line,
    label: null,
  }));
  return { samples: dedupeKeys(samples, errors), classes: [], errors };
}
