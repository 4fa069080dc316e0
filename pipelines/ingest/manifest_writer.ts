/**
 * Builds a finished ingest's manifest from its shard records and writes it,
 * with `errors.jsonl`: the errors first, the manifest last, both atomically,
 * so a directory with a manifest is complete. The format and its reader are
 * in pipelines/dataset/manifest.ts.
 */
import { join } from "node:path";
import { writeTextAtomic } from "../../data/file.ts";
import {
  type Manifest,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  type ManifestShard,
  type SplitCounts,
} from "../dataset/manifest.ts";
import type { ItemError } from "../dataset/sample.ts";
import { splitRecord, stratifiedOrigin } from "../../eval/split_record.ts";
import type { ShardRecord } from "./state.ts";

/** What the manifest records of the split: the `--split` fraction and seed, patient-level or not. */
export interface SplitParams {
  /** `--split` (train fraction), or null: no re-split. */
  trainSize: number | null;
  seed: number;
  /** Whole patients were split (mil). */
  byPatient: boolean;
}

/** The split's origin in words, from the ingest's parameters and the split names it made. */
export function ingestSplitOrigin(p: SplitParams, names: readonly string[]): string {
  if (p.trainSize !== null) return stratifiedOrigin(p.trainSize, p.seed, p.byPatient);
  return names.length === 1 && names[0] === "all"
    ? "no split (every sample in 'all')"
    : `the dataset's own split folders (${names.join(", ")})`;
}

/** Builds the manifest from the finished shards' records, in plan order. */
export async function buildManifest(
  records: ShardRecord[],
  classes: string[],
  params: Record<string, unknown> & { size: number; format: "png" | "jpg" },
  errorCount: number,
  split: SplitParams,
): Promise<Manifest> {
  // Maps, not objects: split and class names come from the dataset (a class folder may be
  // called "constructor"), so they must never meet Object.prototype.
  const perSplit = new Map<string, { samples: number; perClass: Map<string, number> }>();
  const keysBySplit = new Map<string, string[]>();
  const shards: ManifestShard[] = [];
  let samples = 0;
  for (const r of records) {
    let c = perSplit.get(r.split);
    if (!c) perSplit.set(r.split, c = { samples: 0, perClass: new Map() });
    let keys = keysBySplit.get(r.split);
    if (!keys) keysBySplit.set(r.split, keys = []);
    for (let i = 0; i < r.keys.length; i++) {
      keys.push(r.keys[i]);
      if (r.cls[i] >= 0) {
        const name = classes[r.cls[i]];
        c.perClass.set(name, (c.perClass.get(name) ?? 0) + 1);
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
  const counts: Record<string, SplitCounts> = Object.fromEntries(
    [...perSplit].map(([split, c]) => [split, {
      samples: c.samples,
      perClass: Object.fromEntries(
        classes.filter((n) => c.perClass.has(n)).map((n) => [n, c.perClass.get(n)!]),
      ),
    }]),
  );
  const splits: Record<string, string[]> = Object.fromEntries(keysBySplit);
  const names = [...keysBySplit.keys()].sort();
  const keys = names.flatMap((n) => keysBySplit.get(n)!);
  const splitOf = names.flatMap((n) => keysBySplit.get(n)!.map(() => n));
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
    split: await splitRecord(ingestSplitOrigin(split, names), keys, splitOf),
    params,
    errors: errorCount,
    samples,
  };
}

/** Writes errors.jsonl, then manifest.json (both atomically, the manifest last). */
export async function writeOutputs(
  outDir: string,
  manifest: Manifest,
  errors: ItemError[],
): Promise<void> {
  const lines = errors.map((e) => JSON.stringify({ path: e.path, reason: e.reason }));
  await writeTextAtomic(join(outDir, "errors.jsonl"), lines.length ? lines.join("\n") + "\n" : "");
  await writeTextAtomic(join(outDir, "manifest.json"), JSON.stringify(manifest, null, 1) + "\n");
}
