/**
 * The plan of a run: which sample goes to which split and shard, in which
 * order, and a hash per shard of everything its bytes depend on. The plan is
 * a pure function of the inputs (paths, sizes, mtimes, labels) and the
 * output parameters, which is what makes shards reproducible and resumable.
 */
import { createHash } from "node:crypto";
import { trainTestSplit } from "../../eval/split.ts";
import type { SampleSource } from "../dataset/sample.ts";
import { mixSeed, mulberry32, shuffleInPlace } from "../../graph/random.ts";

/** The parameters that change shard bytes (workers and paths of the output do not). */
export interface OutputParams {
  /** `imageCodecVersion()`: the code and library that make the bytes. */
  codec: string;
  size: number;
  format: "png" | "jpg";
  quality: number;
  minSize: number;
  margin: number;
  /** How boxes become crops (voc: `VOC_CROP`), "" without boxes. */
  crop: string;
  classes: string[];
}

/** A sample with its source file's identity, as planned. */
export interface PlannedSample extends SampleSource {
  /** Class index, or -1 for unlabelled samples. */
  cls: number;
  split: string;
  /** Source file size and modification time (ms), so a changed file changes the plan. */
  bytes: number;
  mtime: number;
}

/** One shard of the plan. */
export interface PlannedShard {
  /** `{split}-{NNNNNN}.tar` */
  name: string;
  split: string;
  samples: PlannedSample[];
  /** sha256 over the output parameters and every planned sample of the shard. */
  planHash: string;
}

/** How samples are divided into splits. */
export interface SplitSpec {
  /** Train fraction in (0, 1) (`--split`), or undefined for no re-split. */
  trainSize?: number;
  seed: number;
}

/** Zero-padded shard name. */
export function shardName(split: string, index: number): string {
  return `${split}-${String(index).padStart(6, "0")}.tar`;
}

/** Matches names `shardName` makes. */
export const SHARD_NAME = /^([A-Za-z0-9_-]+)-(\d{6})\.tar$/;

/** The split names are also file-name prefixes, so they are held to key rules. */
function safeSplitName(s: string): string {
  return s.replace(/[^A-Za-z0-9_-]/g, "_");
}

/**
 * Assigns splits: with `trainSize`, a scikit-learn-compatible stratified
 * split ("train"/"test"; mil samples split by patient, stratified by the
 * patients' classes; unlabelled samples split at random); without, mil
 * samples keep their source split folder and everything else is "all".
 */
export function assignSplits(samples: PlannedSample[], spec: SplitSpec): void {
  if (spec.trainSize === undefined) {
    for (const s of samples) s.split = safeSplitName(s.sourceSplit ?? "all");
    return;
  }
  const labelled = samples.every((s) => s.cls >= 0);
  const grouped = samples.some((s) => s.patient !== undefined);
  const labels = samples.map((s) => s.cls);
  const { train, test } = trainTestSplit(labels, {
    trainSize: spec.trainSize,
    seed: spec.seed,
    stratify: labelled,
    groups: grouped ? samples.map((s) => s.patient ?? `\u0000${s.key}`) : undefined,
  });
  for (const i of train) samples[i].split = "train";
  for (const i of test) samples[i].split = "test";
  const unassigned = samples.filter((s) => s.split === "");
  if (unassigned.length > 0) {
    throw new Error(
      `split left ${unassigned.length} samples unassigned (first ${unassigned[0].key})`,
    );
  }
}

/**
 * Orders each split's samples by a seeded shuffle of the sorted keys (so a
 * shard mixes classes, as WebDataset training wants, yet is reproducible) and
 * cuts them into shards of `shardSize`.
 */
export function planShards(
  samples: PlannedSample[],
  shardSize: number,
  seed: number,
  params: OutputParams,
): PlannedShard[] {
  const bySplit = new Map<string, PlannedSample[]>();
  for (const s of samples) {
    const list = bySplit.get(s.split) ?? [];
    list.push(s);
    bySplit.set(s.split, list);
  }
  const shards: PlannedShard[] = [];
  const splits = [...bySplit.keys()].sort();
  const paramsJson = JSON.stringify(params);
  for (const split of splits) {
    const list = bySplit.get(split)!.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    shuffleInPlace(list, mulberry32(mixSeed(seed, hashString(split))));
    for (let i = 0; i * shardSize < list.length; i++) {
      const part = list.slice(i * shardSize, (i + 1) * shardSize);
      const h = createHash("sha256").update(paramsJson);
      for (const s of part) {
        h.update(
          JSON.stringify([s.key, s.path, s.rel, s.label, s.cls, s.patient ?? null, s.box ?? null]),
        );
        h.update(`\u0000${s.bytes}\u0000${s.mtime}\n`);
      }
      shards.push({ name: shardName(split, i), split, samples: part, planHash: h.digest("hex") });
    }
  }
  return shards;
}

/** A 32-bit FNV-1a hash of a string (seeds per split name). */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
