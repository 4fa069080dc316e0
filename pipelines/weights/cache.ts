/**
 * The weights cache: a folder of verified checkpoints, one `NAME.pth` per
 * name with a `NAME.json` record beside it (where the file came from, its
 * size and SHA-256, and whether that hash was published or recorded on first
 * download). A file counts as cached only when its record exists and the
 * sizes agree; records are written before the file is renamed into place,
 * so a crash never leaves a file that looks complete.
 *
 * Layout of `$BLOOM_CACHE_DIR` (default `~/.cache/bloom/weights`):
 *   NAME.pth        the checkpoint, complete and verified
 *   NAME.json       its record
 *   NAME.pth.part   a download in progress (resumed on the next run)
 *   NAME.pth.part.json  what the part is of: URL, validators, offset hashed
 *   NAME.pth.lock   held while one process downloads NAME
 */
import { join } from "node:path";
import { writeTextAtomic } from "../../data/file.ts";
import { sha256File } from "../../data/hash.ts";
import { UNPUBLISHED, type WeightsEntry, type WeightsSource } from "./registry.ts";

/** The cache folder: `$BLOOM_CACHE_DIR`, else `$XDG_CACHE_HOME/bloom/weights`, else `~/.cache/bloom/weights`. */
export function defaultCacheDir(env: (k: string) => string | undefined = Deno.env.get): string {
  const dir = env("BLOOM_CACHE_DIR");
  if (dir) return dir;
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "bloom", "weights");
  const home = env("HOME") ?? env("USERPROFILE");
  if (!home) {
    throw new Error(
      "cannot place the weights cache: neither BLOOM_CACHE_DIR nor HOME is set; " +
        "set BLOOM_CACHE_DIR to a folder with room for the checkpoints",
    );
  }
  return join(home, ".cache", "bloom", "weights");
}

/** How a cached file's hash is known. */
export type HashOrigin = "published" | "first-use";

/** The record kept beside a cached checkpoint. */
export interface CacheRecord {
  name: string;
  file: string;
  /** The URL it was downloaded from (a mirror's, when BLOOM_WEIGHTS_URL was set). */
  url: string;
  /** The table's source it matches (its URL in the table). */
  source: string;
  bytes: number;
  sha256: string;
  /** "published": matched the table's hash; "first-use": none published, recorded as found. */
  hash: HashOrigin;
  fetched: string;
}

/** A cached checkpoint. */
export interface CachedWeights {
  name: string;
  path: string;
  record: CacheRecord;
}

/** Paths of one name's files in `dir`. */
export function cachePaths(dir: string, entry: Pick<WeightsEntry, "file">, name: string) {
  const file = join(dir, entry.file);
  return {
    file,
    record: join(dir, `${name}.json`),
    part: `${file}.part`,
    partInfo: `${file}.part.json`,
    lock: `${file}.lock`,
  };
}

/**
 * The cached file for `name`, or null when it is missing, has no record, its
 * size differs from the record, or the record's hash is not one the table
 * now lists for that source (the table changed: download again).
 */
export async function findCached(
  dir: string,
  name: string,
  entry: WeightsEntry,
): Promise<CachedWeights | null> {
  const p = cachePaths(dir, entry, name);
  const record = await readRecord(p.record);
  if (!record) return null;
  let size: number;
  try {
    size = (await Deno.stat(p.file)).size;
  } catch {
    return null;
  }
  if (size !== record.bytes) return null;
  const src = entry.sources.find((s) => s.url === record.source);
  if (!src) return null;
  if (src.sha256 !== UNPUBLISHED && src.sha256 !== record.sha256) return null;
  if (src.bytes !== UNPUBLISHED && src.bytes !== record.bytes) return null;
  return { name, path: p.file, record };
}

/** Reads a record; null when missing or unreadable. */
export async function readRecord(path: string): Promise<CacheRecord | null> {
  try {
    const r = JSON.parse(await Deno.readTextFile(path)) as CacheRecord;
    return typeof r.sha256 === "string" && typeof r.bytes === "number" ? r : null;
  } catch {
    return null;
  }
}

/** Writes JSON to `path` atomically and durably (data/file.ts `writeTextAtomic`). */
export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeTextAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/** The expected size and hash of `src`, as a short phrase for messages. */
export function describeExpectation(src: WeightsSource): string {
  const size = src.bytes === UNPUBLISHED ? "size unpublished" : `${src.bytes} bytes`;
  const hash = src.sha256 === UNPUBLISHED ? "SHA-256 unpublished" : `SHA-256 ${src.sha256}`;
  return `${size}, ${hash}`;
}

/** Result of verifying one cached file. */
export interface VerifyResult {
  name: string;
  path: string;
  ok: boolean;
  /** What was wrong, when not ok. */
  problem?: string;
  expected?: string;
  found?: string;
}

/**
 * Re-hashes a cached file against its record (and the table). A file that
 * fails is removed with its record, so it is never loaded; the result says
 * what was wrong.
 */
export async function verifyCached(
  dir: string,
  name: string,
  entry: WeightsEntry,
): Promise<VerifyResult | null> {
  const p = cachePaths(dir, entry, name);
  const record = await readRecord(p.record);
  const bytes = await Deno.stat(p.file).then((st) => st.size, () => null);
  if (!record && bytes === null) return null;
  const fail = async (problem: string, expected?: string, found?: string) => {
    await Deno.remove(p.file).catch(() => {});
    await Deno.remove(p.record).catch(() => {});
    return { name, path: p.file, ok: false, problem, expected, found };
  };
  if (!record) return await fail("no record beside the file (an interrupted or foreign file)");
  if (bytes === null) return await fail("the record exists but the file is missing");
  const src = entry.sources.find((s) => s.url === record.source);
  const want = src && src.sha256 !== UNPUBLISHED ? src.sha256 : record.sha256;
  if (bytes !== record.bytes) {
    return await fail("size differs", `${record.bytes} bytes`, `${bytes}`);
  }
  const sha256 = await sha256File(p.file);
  if (sha256 !== want) return await fail("SHA-256 differs", want, sha256);
  return { name, path: p.file, ok: true };
}
