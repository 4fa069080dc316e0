/**
 * `DIR/manifest.json` and `DIR/errors.jsonl`: what a finished ingest wrote.
 * The manifest is written last and atomically, so a directory without one is
 * visibly incomplete (the loader refuses it as a manifest directory).
 */
import { join } from "node:path";
import type { InputError } from "./sample.ts";
import type { ShardRecord } from "../ingest/state.ts";
import { writeAtomic } from "../ingest/state.ts";

/** Manifest format tag and version, checked by readers. */
export const MANIFEST_FORMAT = "bloom-webdataset";
export const MANIFEST_VERSION = 1;

/** A shard as the manifest lists it. */
export interface ManifestShard {
  name: string;
  split: string;
  samples: number;
  bytes: number;
  sha256: string;
}

/** Per-split counts. */
export interface SplitCounts {
  samples: number;
  /** Samples per class name (labelled layouts). */
  perClass: Record<string, number>;
}

/** The manifest document. */
export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  created: string;
  classes: string[];
  /** Side of the square images in the shards. */
  size: number;
  /** Extension of the image member: "png" or "jpg". */
  imageExt: "png" | "jpg";
  counts: Record<string, SplitCounts>;
  shards: ManifestShard[];
  /** Keys per split, in shard order. */
  splits: Record<string, string[]>;
  /** The run's parameters (the command line, resolved). */
  params: Record<string, unknown>;
  /** Inputs refused (see errors.jsonl). */
  errors: number;
  /** Samples written in all. */
  samples: number;
}

/** Builds the manifest from the finished shards' records, in plan order. */
export function buildManifest(
  records: ShardRecord[],
  classes: string[],
  params: Record<string, unknown> & { size: number; format: "png" | "jpg" },
  errorCount: number,
): Manifest {
  const counts: Record<string, SplitCounts> = {};
  const splits: Record<string, string[]> = {};
  const shards: ManifestShard[] = [];
  let samples = 0;
  for (const r of records) {
    const c = counts[r.split] ??= { samples: 0, perClass: {} };
    const keys = splits[r.split] ??= [];
    for (let i = 0; i < r.keys.length; i++) {
      keys.push(r.keys[i]);
      if (r.cls[i] >= 0) {
        const name = classes[r.cls[i]];
        c.perClass[name] = (c.perClass[name] ?? 0) + 1;
      }
    }
    c.samples += r.keys.length;
    samples += r.keys.length;
    if (r.samples > 0) {
      shards.push({
        name: r.name,
        split: r.split,
        samples: r.samples,
        bytes: r.bytes,
        sha256: r.sha256,
      });
    }
  }
  // Per-class counts listed in class-index order, whatever order samples came in.
  for (const c of Object.values(counts)) {
    c.perClass = Object.fromEntries(
      classes.filter((n) => n in c.perClass).map((n) => [n, c.perClass[n]]),
    );
  }
  return {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    created: new Date().toISOString(),
    classes,
    size: params.size,
    imageExt: params.format,
    counts,
    shards,
    splits,
    params,
    errors: errorCount,
    samples,
  };
}

/** Writes errors.jsonl, then manifest.json (both atomically, the manifest last). */
export async function writeOutputs(
  outDir: string,
  manifest: Manifest,
  errors: InputError[],
): Promise<void> {
  const lines = errors.map((e) => JSON.stringify({ path: e.path, reason: e.reason }));
  await writeAtomic(join(outDir, "errors.jsonl"), lines.length ? lines.join("\n") + "\n" : "");
  await writeAtomic(join(outDir, "manifest.json"), JSON.stringify(manifest, null, 1) + "\n");
}

/**
 * Reads and checks a manifest; throws naming the file and what is wrong
 * (absent: the ingest did not finish; wrong format or version).
 */
export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, "manifest.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new Error(
      `${path} not found: '${dir}' is not a finished ingest (rerun deno task ingest to complete it)`,
    );
  }
  let m: Manifest;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path} is not valid JSON (${(e as Error).message})`);
  }
  if (m.format !== MANIFEST_FORMAT || m.version !== MANIFEST_VERSION) {
    throw new Error(
      `${path} has format ${m.format} v${m.version}; this reader knows ` +
        `${MANIFEST_FORMAT} v${MANIFEST_VERSION} (re-ingest with this version)`,
    );
  }
  return m;
}
