/**
 * Directory listing for the folder layouts: paths only, sorted by code unit
 * at every level so enumeration order (and so keys, plans and shards) does not
 * depend on the filesystem's order.
 *
 * Symbolic links are followed only while they stay inside the input root
 * (by real path), unless `followLinks` (`--follow-links`) asks for all: a
 * link out of the root (one to `/` would walk the whole filesystem) is
 * recorded as an item error and not followed. Directory cycles through links
 * are cut by real path.
 */
import { basename, dirname, join, resolve, sep } from "node:path";
import { InputError } from "../../data/errors.ts";
import { byCodeUnit, isImageName, type ItemError } from "./sample.ts";

/** A file found under a root: its path and its path relative to the root ('/'-separated). */
export interface FoundFile {
  path: string;
  rel: string;
}

/** What a walk may enter, and where it records the links it refused. */
export interface WalkScope {
  /** Real path of the input root. */
  root: string;
  /** Follow links that leave the root too (`--follow-links`). */
  followLinks: boolean;
  /** Refused links go here (errors.jsonl). */
  errors: ItemError[];
}

/** The scope of a walk under `root` (which must exist). */
export async function walkScope(
  root: string,
  errors: ItemError[],
  opts: { followLinks?: boolean } = {},
): Promise<WalkScope> {
  return { root: await Deno.realPath(root), followLinks: Boolean(opts.followLinks), errors };
}

/** Whether real path `p` is `root` or inside it. */
export function isInside(p: string, root: string): boolean {
  return p === root || p.startsWith(root.endsWith(sep) ? root : root + sep);
}

/**
 * `p` resolved through links: the real path of its deepest existing ancestor
 * plus the rest (an output path need not exist yet).
 */
export async function realPathOf(p: string): Promise<string> {
  let base = resolve(p);
  const rest: string[] = [];
  while (true) {
    try {
      return join(await Deno.realPath(base), ...rest.reverse());
    } catch {
      const up = dirname(base);
      if (up === base) return resolve(p);
      rest.push(basename(base));
      base = up;
    }
  }
}

/** Sorted entries of one directory, split into subdirectories and files. */
export async function listDir(
  dir: string,
  scope: WalkScope,
): Promise<{ dirs: string[]; files: string[] }> {
  const dirs: string[] = [];
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".")) continue; // .DS_Store, ._AppleDouble, .ipynb_checkpoints
    if (e.isDirectory) dirs.push(e.name);
    else if (e.isFile) files.push(e.name);
    else if (e.isSymlink) {
      const path = join(dir, e.name);
      let real: string;
      let st: Deno.FileInfo;
      try {
        real = await Deno.realPath(path);
        st = await Deno.stat(real);
      } catch {
        files.push(e.name); // dangling: kept as a file, so it is reported as unreadable
        continue;
      }
      if (!scope.followLinks && !isInside(real, scope.root)) {
        scope.errors.push({
          path,
          reason: `symbolic link to ${real}, outside the input root ${scope.root}: not ` +
            `followed (pass --follow-links to follow links out of the input)`,
        });
        continue;
      }
      (st.isDirectory ? dirs : files).push(e.name);
    }
  }
  return { dirs: dirs.sort(byCodeUnit), files: files.sort(byCodeUnit) };
}

/**
 * Every image file (by extension) under `root`, recursively, depth-first in
 * sorted order, within `scope`. Directory cycles through links are cut by
 * real path.
 */
export async function walkImages(
  root: string,
  relBase: string,
  scope: WalkScope,
): Promise<FoundFile[]> {
  const out: FoundFile[] = [];
  const seen = new Set<string>();
  async function visit(dir: string, rel: string): Promise<void> {
    const real = await Deno.realPath(dir);
    if (seen.has(real)) return;
    seen.add(real);
    const { dirs, files } = await listDir(dir, scope);
    for (const f of files) {
      if (isImageName(f)) out.push({ path: join(dir, f), rel: rel ? `${rel}/${f}` : f });
    }
    for (const d of dirs) await visit(join(dir, d), rel ? `${rel}/${d}` : d);
  }
  await visit(root, relBase);
  return out;
}

/** Throws a clear error unless `path` is an existing directory. */
export async function requireDir(path: string, what: string): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch {
    throw new InputError(`${what} '${path}' does not exist`);
  }
  if (!st.isDirectory) throw new InputError(`${what} '${path}' is not a directory`);
}
