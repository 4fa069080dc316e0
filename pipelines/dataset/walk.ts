/**
 * Directory listing for the folder layouts: paths only, sorted by code unit
 * at every level so enumeration order (and so keys, plans and shards) does not
 * depend on the filesystem's order.
 */
import { join } from "node:path";
import { byCodeUnit, isImageName } from "./sample.ts";

/** A file found under a root: its path and its path relative to the root ('/'-separated). */
export interface FoundFile {
  path: string;
  rel: string;
}

/** Sorted entries of one directory, split into subdirectories and files. */
export async function listDir(dir: string): Promise<{ dirs: string[]; files: string[] }> {
  const dirs: string[] = [];
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".")) continue; // .DS_Store, ._AppleDouble, .ipynb_checkpoints
    if (e.isDirectory) dirs.push(e.name);
    else if (e.isFile) files.push(e.name);
    else if (e.isSymlink) {
      // Follow links; a dangling one is kept as a file so it is reported as unreadable.
      try {
        const st = await Deno.stat(join(dir, e.name));
        (st.isDirectory ? dirs : files).push(e.name);
      } catch {
        files.push(e.name);
      }
    }
  }
  return { dirs: dirs.sort(byCodeUnit), files: files.sort(byCodeUnit) };
}

/**
 * Every image file (by extension) under `root`, recursively, depth-first in
 * sorted order. Directory cycles through links are cut by real path.
 */
export async function walkImages(root: string, relBase = ""): Promise<FoundFile[]> {
  const out: FoundFile[] = [];
  const seen = new Set<string>();
  async function visit(dir: string, rel: string): Promise<void> {
    const real = await Deno.realPath(dir);
    if (seen.has(real)) return;
    seen.add(real);
    const { dirs, files } = await listDir(dir);
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
    throw new Deno.errors.NotFound(`${what} '${path}' does not exist`);
  }
  if (!st.isDirectory) throw new Error(`${what} '${path}' is not a directory`);
}
