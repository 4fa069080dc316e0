/**
 * Path-string helpers with node:path's meaning (`basename`, `extname`,
 * `dirname`), for the modules the browser page bundles too (the format
 * readers, the embeddings and head files): a browser has no `node:path`, and
 * these only ever look at the string. Both separators count, so Windows
 * paths read right as well; repeated separators count as one.
 */

const SEP = /[\\/]/;

function trimSeparators(path: string): string {
  let end = path.length;
  while (end > 1 && SEP.test(path[end - 1])) end--;
  return path.slice(0, end);
}

function lastSeparator(path: string): number {
  return Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
}

/** The last part of `path` (`basename("a/b.png")` → `"b.png"`), trailing separators ignored. */
export function basename(path: string): string {
  const p = trimSeparators(path);
  if (p.length === 1 && SEP.test(p)) return "";
  return p.slice(lastSeparator(p) + 1);
}

/** The extension of the last part, dot included (`".png"`), or `""`; a leading dot is not one. */
export function extname(path: string): string {
  const base = basename(path);
  const dot = base.lastIndexOf(".");
  return dot <= 0 || base === ".." ? "" : base.slice(dot);
}

/** Everything before the last part (`dirname("a/b.png")` → `"a"`; `"."` when there is none). */
export function dirname(path: string): string {
  const p = trimSeparators(path);
  const i = lastSeparator(p);
  if (i < 0) return ".";
  if (i === 0) return p[0];
  return trimSeparators(p.slice(0, i));
}
