/**
 * Resume bookkeeping: one small JSON record per finished shard in
 * `DIR/.ingest/NAME.json`, written atomically (tmp + fsync + rename) after the shard itself is
 * renamed into place. A shard counts as done on a rerun only when its record
 * exists, names the same plan hash, and the shard file has the recorded size;
 * anything else is redone.
 */
import { join } from "node:path";
import { writeTextAtomic } from "../../data/file.ts";
import type { ItemError } from "../dataset/sample.ts";
import type { ShardInfo } from "./shard_writer.ts";

/** The state folder inside the output directory. */
export const STATE_DIR = ".ingest";

/** What is remembered about a finished shard. */
export interface ShardRecord extends ShardInfo {
  split: string;
  planHash: string;
  /** Keys written, in shard order. */
  keys: string[];
  /** Class index of each written key (-1: unlabelled), for the manifest's counts. */
  cls: number[];
  /** Planned samples that failed, with why. */
  errors: ItemError[];
}

/** Saves a finished shard's record. */
export async function saveRecord(outDir: string, rec: ShardRecord): Promise<void> {
  await Deno.mkdir(join(outDir, STATE_DIR), { recursive: true });
  await writeTextAtomic(join(outDir, STATE_DIR, `${rec.name}.json`), JSON.stringify(rec));
}

/**
 * The record of shard `name` if it is finished for `planHash`: the record
 * exists and parses, the hash matches, and the shard file (none for a shard
 * whose samples all failed) has the recorded size. Otherwise null.
 */
export async function loadFinished(
  outDir: string,
  name: string,
  planHash: string,
): Promise<ShardRecord | null> {
  let rec: unknown;
  try {
    rec = JSON.parse(await Deno.readTextFile(join(outDir, STATE_DIR, `${name}.json`)));
  } catch {
    return null;
  }
  if (!wellFormed(rec) || rec.planHash !== planHash || rec.name !== name) return null;
  if (rec.samples === 0) return rec;
  try {
    const st = await Deno.stat(join(outDir, name));
    return st.isFile && st.size === rec.bytes ? rec : null;
  } catch {
    return null;
  }
}

/**
 * Whether `rec` has every field the manifest is built from, with its type
 * (a record damaged on disk is redone, never trusted into a TypeError).
 */
function wellFormed(rec: unknown): rec is ShardRecord {
  if (typeof rec !== "object" || rec === null) return false;
  const r = rec as Record<string, unknown>;
  const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === "string");
  const count = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  return typeof r.name === "string" && typeof r.split === "string" &&
    typeof r.planHash === "string" && typeof r.sha256 === "string" && count(r.samples) &&
    count(r.bytes) && strings(r.keys) && r.samples === (r.keys as string[]).length &&
    Array.isArray(r.cls) &&
    r.cls.length === (r.keys as string[]).length && r.cls.every(Number.isSafeInteger) &&
    Array.isArray(r.errors) &&
    r.errors.every((e) =>
      typeof e === "object" && e !== null && typeof e.path === "string" &&
      typeof e.reason === "string"
    );
}

/** Names of shards that have a record (made by an earlier run of the ingest). */
export async function recordedShards(outDir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(join(outDir, STATE_DIR))) {
      if (e.isFile && e.name.endsWith(".tar.json")) out.push(e.name.slice(0, -".json".length));
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out;
}

/** Removes a shard and its record (stale shards of an earlier, different plan). */
export async function removeShard(outDir: string, name: string): Promise<void> {
  await Deno.remove(join(outDir, name)).catch(() => {});
  await Deno.remove(join(outDir, STATE_DIR, `${name}.json`)).catch(() => {});
}
