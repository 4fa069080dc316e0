/**
 * WebDataset samples from tar shards: consecutive members that share a key
 * (the member name up to the first dot of its base name) form one sample,
 * exactly as the `webdataset` Python package groups them.
 */
import { readTarFile } from "../../data/tar.ts";

/** One sample of a shard: its key and its members by extension ("png", "cls", "json"). */
export interface ShardSample {
  key: string;
  files: Map<string, Uint8Array>;
  /** The shard it came from. */
  shard: string;
}

/** Splits a member name into WebDataset key and extension. */
export function splitMemberName(name: string): { key: string; ext: string } | null {
  const slash = name.lastIndexOf("/");
  const dot = name.indexOf(".", slash + 1);
  if (dot <= slash + 1) return null; // no extension, or a dot-file
  return { key: name.slice(0, dot), ext: name.slice(dot + 1).toLowerCase() };
}

/**
 * Streams the samples of one shard, holding one sample in memory at a time.
 * A damaged shard throws the tar reader's error (a CheckpointError naming the
 * shard and the byte offset) at the point it breaks; the sample being
 * gathered then is dropped, since members of it may be missing. The loader
 * catches it, skips the rest of the shard and reports it.
 */
export async function* readShardSamples(path: string): AsyncGenerator<ShardSample> {
  let cur: ShardSample | null = null;
  for await (const f of readTarFile(path)) {
    const parts = splitMemberName(f.name);
    if (!parts) continue;
    if (!cur || cur.key !== parts.key) {
      if (cur) yield cur;
      cur = { key: parts.key, files: new Map(), shard: path };
    }
    cur.files.set(parts.ext, f.data);
  }
  if (cur) yield cur;
}
