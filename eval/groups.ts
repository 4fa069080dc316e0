/**
 * Which group a cell belongs to, read off its path: the sample or patient
 * `predict` counts a differential for (`--group-by`), the source (dataset,
 * scanner, site) a batch-effect report compares (`--source-by`). One rule
 * grammar for both:
 *
 * - `depth:N` (or just `N`): the N-th folder of the cell's path, 0 the first
 *   (`siteA/P01/cell.png` → depth 0 `siteA`, depth 1 `P01`);
 * - `regex:PATTERN` (or any other text): a regular expression searched in
 *   the path; its first capture group, else the whole match;
 * - no rule: the fallback the caller gives (a patient id, the cell's folder).
 */
import { InputError } from "../data/errors.ts";

/** The group of one cell from its path; throws an Error naming the path when the rule cannot place it. */
export type Grouper = (path: string) => string;

/** The folders of a path, outermost first (the file name dropped). */
export function pathFolders(path: string): string[] {
  return path.split(/[\\/]+/).filter((s) => s && s !== ".").slice(0, -1);
}

/**
 * A grouper for `spec` (module comment); `flag` names the option in errors.
 * A malformed rule (a bad regular expression) throws an InputError at once.
 */
export function makeGrouper(spec: string, flag = "--group-by"): Grouper {
  const depth = /^(?:depth:)?(\d+)$/.exec(spec);
  if (depth) {
    const n = Number(depth[1]);
    return (path) => {
      const f = pathFolders(path);
      if (n >= f.length) {
        throw new Error(
          `${flag} depth:${n}: ${path} has ${f.length} folder level(s) (${f.join("/") || "none"})`,
        );
      }
      return f[n];
    };
  }
  const source = spec.startsWith("regex:") ? spec.slice(6) : spec;
  let re: RegExp;
  try {
    re = new RegExp(source);
  } catch (e) {
    throw new InputError(
      `${flag}: '${source}' is neither depth:N nor a regular expression (${(e as Error).message})`,
    );
  }
  return (path) => {
    const m = re.exec(path);
    if (!m) throw new Error(`${flag} /${source}/ does not match ${path}`);
    return m[1] ?? m[0];
  };
}
