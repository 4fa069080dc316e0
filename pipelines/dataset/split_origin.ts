/**
 * Where the split of ingested shards comes from, in the words metrics files
 * use ("ingest manifest data/bccd: stratified 80/20, seed 42"), for the
 * metadata `embed` writes beside each row's split (data/embeddings_file.ts)
 * and for `train --eval`. Each sample's split itself travels in its shard
 * (the `.json` member); this names its origin and the manifest's hash of it.
 */
import { basename, dirname, join } from "node:path";
import { type Manifest, readManifest } from "./manifest.ts";

/** Metadata keys of an embeddings file: the split's origin and the ingest's membership hash. */
export const SPLIT_ORIGIN_KEY = "bloom.split";
export const SPLIT_SHA256_KEY = "bloom.split_sha256";

/** The split origin of a manifest: its own record, else (older manifests) from its parameters. */
function originOf(m: Manifest): string {
  if (m.split) return m.split.origin;
  const p = m.params as { split?: number | null; seed?: number };
  return typeof p.split === "number" ? `--split ${p.split}, seed ${p.seed}` : "its split folders";
}

/**
 * The split's origin and hash for `input` (what embed, train and predict
 * read): a finished ingest's folder, or .tar shards (their folder's manifest
 * when it has one). Empty for other inputs (image folders, lists): they
 * carry no split.
 */
export async function splitOriginOf(
  input: string | readonly string[],
): Promise<Record<string, string>> {
  const paths = [input].flat();
  const tars = paths.length > 0 && paths.every((p) => p.endsWith(".tar"));
  const dir = tars ? dirname(paths[0]) : paths.length === 1 ? paths[0] : null;
  if (dir === null) return {};
  let m: Manifest | null = null;
  try {
    await Deno.stat(join(dir, "manifest.json"));
    m = await readManifest(dir);
  } catch {
    m = null;
  }
  if (!m) {
    return tars
      ? { [SPLIT_ORIGIN_KEY]: `ingest shards ${paths.map((p) => basename(p)).join(", ")}` }
      : {};
  }
  const which = tars ? `shards ${paths.map((p) => basename(p)).join(", ")} of ` : "";
  const out: Record<string, string> = {
    [SPLIT_ORIGIN_KEY]: `ingest ${which}manifest ${dir}: ${originOf(m)}`,
  };
  if (m.split) out[SPLIT_SHA256_KEY] = m.split.sha256;
  return out;
}
