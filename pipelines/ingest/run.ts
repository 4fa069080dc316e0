/**
 * `runIngest`: enumerate → plan → decode in parallel → write shards in plan
 * order → errors.jsonl → manifest.json. The CLI (`cli/ingest.ts`) is a thin
 * shell over it; tests and the benchmark call it directly.
 *
 * Invariants:
 * - Memory is bounded by the decode window (`2 × workers + 2` images, whose
 *   decoding leases pixel and file memory from fixed budgets,
 *   dataset/decode_budget.ts), not by the dataset: only paths and labels are
 *   enumerated up front.
 * - Shard bytes depend on the plan only, never on which decode finished
 *   first (the ordered map is the reorder buffer).
 * - A finished shard is never rewritten by a rerun with the same plan; a
 *   partial one (`.tar.tmp`) always is.
 * - Bad inputs (images, rows, annotations, links out of the input) are
 *   recorded, never thrown; only unusable options (an --out inside the
 *   input among them), an unusable input root or an I/O failure of the
 *   output stop the run.
 */
import { join, resolve } from "node:path";
import { InputError } from "../../data/errors.ts";
import {
  encodeCell,
  imageCodecVersion,
  ImageError,
  setImageThreads,
  withImageFile,
} from "../dataset/images.ts";
import { Interrupted } from "../interrupt.ts";
import { Progress, type ProgressOptions } from "../progress.ts";
import { enumerate, isLayout, type Layout, LAYOUTS } from "../dataset/layouts.ts";
import type { Manifest } from "../dataset/manifest.ts";
import { buildManifest, writeOutputs } from "./manifest_writer.ts";
import { orderedMap } from "../dataset/ordered.ts";
import {
  assignSplits,
  type OutputParams,
  type PlannedSample,
  type PlannedShard,
  planShards,
  SHARD_NAME,
} from "./plan.ts";
import type { ItemError, SampleSource } from "../dataset/sample.ts";
import { type SampleFiles, ShardWriter } from "./shard_writer.ts";
import {
  loadFinished,
  recordedShards,
  removeShard,
  saveRecord,
  type ShardRecord,
} from "./state.ts";
import { squareCrop, VOC_CROP } from "../dataset/voc.ts";
import { lockOutput } from "../output_lock.ts";
import { replacedShards, replacementWarning } from "./replaced.ts";
import { isInside, realPathOf } from "../dataset/walk.ts";

/** Everything `deno task ingest` takes. */
export interface IngestOptions {
  input: string;
  layout: Layout;
  out: string;
  /** Output side (default 224). */
  size?: number;
  format?: "png" | "jpg";
  /** JPEG quality (default 95). */
  quality?: number;
  /** Samples per shard (default 1000). */
  shardSize?: number;
  /** Train fraction for a stratified train/test split. */
  split?: number;
  /** Seed of the split and of the sample order (default 42). */
  seed?: number;
  /** Images decoded in parallel (default: the number of cores). */
  workers?: number;
  /** Wanted classes, in class-index order (voc default: WBC). */
  classes?: string[];
  /** Smallest accepted side of a source image or crop (default 16). */
  minSize?: number;
  /** VOC crop margin as a fraction of the box size (default 0.1). */
  margin?: number;
  /** Follow symbolic links out of the input root (default: refused, recorded in errors.jsonl). */
  followLinks?: boolean;
  /** Another ingest writes `out`: wait for it (default: stop, naming it; pipelines/output_lock.ts). */
  wait?: boolean;
}

/** What a run did. */
export interface IngestSummary {
  outDir: string;
  /** Candidate inputs (samples planned plus inputs refused before planning). */
  inputs: number;
  samples: number;
  errors: number;
  shardsWritten: number;
  shardsSkipped: number;
  /** Images decoded and written in this run (skipped shards excluded). */
  processed: number;
  seconds: number;
  /** processed / seconds. */
  rate: number;
  manifest: Manifest;
}

/** Callbacks for the CLI and tests. */
export interface IngestHooks {
  /** Progress display options; `false` for none. */
  progress?: ProgressOptions | false;
  /** Called after each shard is finished and recorded. */
  onShard?: (rec: ShardRecord) => void;
  /** Warnings and waiting notes (default: stderr). */
  log?: (line: string) => void;
  /**
   * Stops the run (Ctrl-C): finished shards are kept, the one being written is
   * dropped, and `Interrupted` says what was kept.
   */
  signal?: AbortSignal;
}

/** A bad option value; `flag` names the command-line flag. */
export class IngestOptionError extends InputError {
  override name = "IngestOptionError";
  constructor(readonly flag: string, message: string) {
    super(`--${flag} ${message}`);
  }
}

type Resolved = Required<Omit<IngestOptions, "split" | "classes" | "wait">> & {
  split?: number;
  classes?: string[];
};

/**
 * Defaults and ranges of the numeric options, keyed by flag: the one
 * declaration `resolveOptions` checks and `deno task ingest` parses and shows.
 */
export const INGEST_LIMITS = {
  size: { default: 224, min: 1, max: 4096 },
  quality: { default: 95, min: 1, max: 100 },
  "shard-size": { default: 1000, min: 1, max: 1e9 },
  seed: { default: 42, min: 0, max: 0xffffffff },
  workers: { min: 1, max: 1024 },
  "min-size": { default: 16, min: 1, max: 1e6 },
  margin: { default: 0.1, min: 0, max: 2 },
  split: { above: 0, below: 1 },
} as const;

function checkInt(flag: keyof typeof INGEST_LIMITS, v: number): void {
  const { min, max } = INGEST_LIMITS[flag] as { min: number; max: number };
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new IngestOptionError(flag, `must be an integer in [${min}, ${max}], got ${v}`);
  }
}

/** Fills defaults and checks every option, naming the flag and the fix. */
export function resolveOptions(o: IngestOptions): Resolved {
  if (!o.input) throw new IngestOptionError("input", "is required: the dataset root or file");
  if (!o.out) throw new IngestOptionError("out", "is required: the output directory");
  if (!isLayout(o.layout)) {
    throw new IngestOptionError("layout", `must be one of ${LAYOUTS.join("|")}, got '${o.layout}'`);
  }
  const r: Resolved = {
    input: o.input,
    layout: o.layout,
    out: o.out,
    size: o.size ?? INGEST_LIMITS.size.default,
    format: o.format ?? "png",
    quality: o.quality ?? INGEST_LIMITS.quality.default,
    shardSize: o.shardSize ?? INGEST_LIMITS["shard-size"].default,
    split: o.split,
    seed: o.seed ?? INGEST_LIMITS.seed.default,
    workers: o.workers ?? navigator.hardwareConcurrency ?? 1,
    classes: o.classes,
    minSize: o.minSize ?? INGEST_LIMITS["min-size"].default,
    margin: o.margin ?? INGEST_LIMITS.margin.default,
    followLinks: Boolean(o.followLinks),
  };
  checkInt("size", r.size);
  if (r.format !== "png" && r.format !== "jpg") {
    throw new IngestOptionError("format", `must be png or jpg, got '${r.format}'`);
  }
  checkInt("quality", r.quality);
  checkInt("shard-size", r.shardSize);
  checkInt("seed", r.seed);
  checkInt("workers", r.workers);
  checkInt("min-size", r.minSize);
  if (r.split !== undefined && !(r.split > 0 && r.split < 1)) {
    throw new IngestOptionError(
      "split",
      `must be a train fraction in (0, 1) such as 0.8, got ${r.split}`,
    );
  }
  const { min: mmin, max: mmax } = INGEST_LIMITS.margin;
  if (!(Number.isFinite(r.margin) && r.margin >= mmin && r.margin <= mmax)) {
    throw new IngestOptionError(
      "margin",
      `must be a fraction in [${mmin}, ${mmax}] such as 0.1, got ${r.margin}`,
    );
  }
  if (r.classes) {
    const c = r.classes.map((s) => s.trim());
    if (c.length === 0 || c.some((s) => s === "")) {
      throw new IngestOptionError("classes", "must be a comma-separated list of non-empty names");
    }
    if (new Set(c).size !== c.length) {
      throw new IngestOptionError("classes", `lists a class twice: ${c.join(",")}`);
    }
    r.classes = c;
  }
  return r;
}

/** Stats every sample's file; missing, empty and non-file inputs become errors. */
async function statSamples(
  samples: SampleSource[],
  classes: string[],
  errors: ItemError[],
): Promise<PlannedSample[]> {
  const planned: PlannedSample[] = [];
  const stats = orderedMap(samples, async (s) => {
    try {
      return { s, st: await Deno.stat(s.path), why: null };
    } catch (e) {
      const why = e instanceof Deno.errors.NotFound
        ? "unreadable: file not found"
        : e instanceof Deno.errors.PermissionDenied
        ? "unreadable: permission denied"
        : `unreadable: ${(e as Error).message}`;
      return { s, st: null, why };
    }
  }, { concurrency: 16 });
  for await (const { s, st, why } of stats) {
    if (!st) errors.push({ path: s.path, reason: why! });
    else if (st.isDirectory) errors.push({ path: s.path, reason: "unreadable: is a directory" });
    else if (st.size === 0) errors.push({ path: s.path, reason: "empty file (0 bytes)" });
    else {
      planned.push({
        ...s,
        cls: s.label === null ? -1 : classes.indexOf(s.label),
        split: "",
        bytes: st.size,
        mtime: st.mtime?.getTime() ?? 0,
      });
    }
  }
  return planned;
}

/** The outcome of decoding one planned sample. */
type Decoded =
  | { ok: true; sample: PlannedSample; files: SampleFiles }
  | { ok: false; sample: PlannedSample; reason: string };

const enc = new TextEncoder();

async function decodeSample(s: PlannedSample, r: Resolved): Promise<Decoded> {
  try {
    const crop = s.box ? squareCrop(s.box, r.margin) : undefined;
    const cell = await withImageFile(s.path, (bytes) =>
      encodeCell(bytes, {
        size: r.size,
        format: r.format,
        quality: r.quality,
        minSize: r.minSize,
        crop,
        pad: "edge",
      }));
    const meta: Record<string, unknown> = {
      key: s.key,
      source: s.rel,
      label: s.label,
      class_index: s.cls >= 0 ? s.cls : null,
      split: s.split,
      width: cell.info.width,
      height: cell.info.height,
      source_format: cell.info.format,
      source_space: cell.info.space,
      source_bits: cell.info.bits,
      format: r.format,
      quality: r.format === "jpg" ? r.quality : null,
      size: r.size,
    };
    if (s.patient !== undefined) meta.patient = s.patient;
    if (s.sourceSplit !== undefined) meta.source_split = s.sourceSplit;
    if (s.box) {
      meta.box = s.box;
      meta.box_index = s.boxIndex;
      meta.crop = cell.crop;
      if (cell.padding) meta.padding = cell.padding;
    }
    const files: SampleFiles = [[r.format, cell.data]];
    if (s.cls >= 0) files.push(["cls", enc.encode(String(s.cls))]);
    files.push(["json", enc.encode(JSON.stringify(meta))]);
    return { ok: true, sample: s, files };
  } catch (e) {
    const reason = e instanceof ImageError
      ? e.message
      : `unexpected decoder error: ${e instanceof Error ? e.message : String(e)}`;
    return { ok: false, sample: s, reason };
  }
}

/**
 * Refuses an --out inside a folder --input (imagefolder, voc, mil). Refused
 * rather than left out of the walk: every other command that reads the
 * input folder (train --data, embed --input) would still walk into it, so
 * its folder would be a class there, and the class list would differ
 * between commands and between a first ingest and its rerun.
 */
async function refuseOutInsideInput(r: Resolved): Promise<void> {
  if (r.layout === "csv" || r.layout === "list") return; // a file names its images
  let input: string;
  try {
    input = await Deno.realPath(r.input);
  } catch {
    return; // the layout reports a missing input
  }
  const out = await realPathOf(r.out);
  if (isInside(out, input)) {
    throw new IngestOptionError(
      "out",
      `${r.out} is inside --input ${r.input}: a rerun (and train or embed on ${r.input}) ` +
        `would read the output back as input, its folder as a class; choose an --out ` +
        `outside ${r.input}`,
    );
  }
}

/** Removes leftovers that the new plan does not own: partial files, stale shards. */
async function tidyOutput(outDir: string, plan: PlannedShard[]): Promise<void> {
  await Deno.remove(join(outDir, "manifest.json")).catch(() => {});
  const planned = new Set(plan.map((s) => s.name));
  for await (const e of Deno.readDir(outDir)) {
    if (e.isFile && e.name.endsWith(".tar.tmp") && SHARD_NAME.test(e.name.slice(0, -4))) {
      await Deno.remove(join(outDir, e.name));
    }
  }
  for (const name of await recordedShards(outDir)) {
    if (!planned.has(name)) await removeShard(outDir, name);
  }
}

/**
 * Runs an ingest. Throws `IngestOptionError` for bad options, `LayoutError`
 * for an unusable input root, and I/O errors of the output directory; bad
 * inputs only ever end up in errors.jsonl.
 */
export async function runIngest(
  options: IngestOptions,
  hooks: IngestHooks = {},
): Promise<IngestSummary> {
  const r = resolveOptions(options);
  const t0 = performance.now();
  const outDir = resolve(r.out);
  await refuseOutInsideInput(r);
  const en = await enumerate(r.layout, r.input, {
    classes: r.classes,
    followLinks: r.followLinks,
  });
  const errors = en.errors;
  const inputs = en.samples.length + en.errors.length;
  const planned = await statSamples(en.samples, en.classes, errors);
  const params: OutputParams = {
    codec: imageCodecVersion(),
    size: r.size,
    format: r.format,
    quality: r.format === "jpg" ? r.quality : 0,
    minSize: r.minSize,
    margin: r.layout === "voc" ? r.margin : 0,
    crop: r.layout === "voc" ? VOC_CROP : "",
    classes: en.classes,
  };
  if (planned.length > 0) {
    try {
      assignSplits(planned, { trainSize: r.split, seed: r.seed });
    } catch (e) {
      if (e instanceof RangeError) {
        throw new IngestOptionError("split", `cannot split: ${e.message}`);
      }
      throw e;
    }
  }
  const plan = planShards(planned, r.shardSize, r.seed, params);

  // One ingest per --out at a time, from here (inputs checked) until the manifest is written.
  const log = hooks.log ?? ((s: string) => console.error(s));
  await using _lock = await lockOutput(outDir, "directory", { wait: options.wait, log });
  const replaced = await replacedShards(outDir, plan);
  if (replaced.length) log(await replacementWarning(outDir, replaced, r));
  await tidyOutput(outDir, plan);
  const records = new Map<string, ShardRecord>();
  const todo: PlannedShard[] = [];
  for (const shard of plan) {
    const rec = await loadFinished(outDir, shard.name, shard.planHash);
    if (rec) records.set(shard.name, rec);
    else todo.push(shard);
  }

  const total = planned.length;
  const progress = hooks.progress === false
    ? new Progress(total, { silent: true })
    : new Progress(total, { unit: "images", label: "ingest", ...hooks.progress });
  const skippedSamples = plan.filter((s) => records.has(s.name))
    .reduce((n, s) => n + s.samples.length, 0);
  if (skippedSamples > 0) progress.resumed(skippedSamples, `resumed ${records.size} shards`);

  const prevThreads = setImageThreads(r.workers > 1 ? 1 : 0);
  const tRun = performance.now();
  let processed = 0;
  let stopped = false;
  try {
    const items = todo.flatMap((shard) => shard.samples.map((sample) => ({ shard, sample })));
    const decoded = orderedMap(
      items,
      async ({ shard, sample }) => ({ shard, d: await decodeSample(sample, r) }),
      { concurrency: r.workers, window: 2 * r.workers + 2 },
    );
    let writer: ShardWriter | null = null;
    let current: PlannedShard | null = null;
    let seen = 0;
    let rec: ShardRecord | null = null;
    try {
      for await (const { shard, d } of decoded) {
        if (hooks.signal?.aborted) {
          stopped = true;
          break;
        }
        if (shard !== current) {
          current = shard;
          seen = 0;
          writer = await ShardWriter.create(outDir, shard.name);
          rec = {
            name: shard.name,
            split: shard.split,
            planHash: shard.planHash,
            samples: 0,
            bytes: 0,
            sha256: "",
            keys: [],
            cls: [],
            errors: [],
          };
        }
        seen++;
        processed++;
        if (d.ok) {
          await writer!.add(d.sample.key, d.files);
          rec!.keys.push(d.sample.key);
          rec!.cls.push(d.sample.cls);
        } else {
          rec!.errors.push({ path: d.sample.path, reason: d.reason });
        }
        progress.tick(1);
        if (seen === shard.samples.length) {
          if (writer!.samples > 0) Object.assign(rec!, await writer!.close());
          else await writer!.abort(); // every sample failed: no empty shard file
          await saveRecord(outDir, rec!);
          records.set(shard.name, rec!);
          hooks.onShard?.(rec!);
          writer = null;
        }
      }
    } finally {
      await writer?.abort();
    }
  } finally {
    setImageThreads(prevThreads);
  }
  const runSeconds = (performance.now() - tRun) / 1000;
  if (stopped) {
    const kept = [...records.values()].reduce((n, rec) => n + rec.keys.length, 0);
    throw new Interrupted(
      `kept ${records.size} of ${plan.length} shards (${kept} of ${total} images) in ${outDir}/`,
    );
  }

  const ordered = plan.map((s) => records.get(s.name)!);
  for (const rec of ordered) errors.push(...rec.errors);
  const manifest = await buildManifest(
    ordered,
    en.classes,
    {
      layout: r.layout,
      input: r.input,
      size: r.size,
      format: r.format,
      quality: r.format === "jpg" ? r.quality : null,
      shardSize: r.shardSize,
      split: r.split ?? null,
      seed: r.seed,
      classes: en.classes,
      minSize: r.minSize,
      margin: r.layout === "voc" ? r.margin : null,
      crop: r.layout === "voc" ? VOC_CROP : null,
      workers: r.workers,
      codec: params.codec,
    },
    errors.length,
    {
      trainSize: r.split ?? null,
      seed: r.seed,
      byPatient: planned.some((s) => s.patient !== undefined),
    },
  );
  await writeOutputs(outDir, manifest, errors);
  progress.done(`${manifest.samples} written, ${errors.length} errors`);
  return {
    outDir,
    inputs,
    samples: manifest.samples,
    errors: errors.length,
    shardsWritten: todo.length,
    shardsSkipped: plan.length - todo.length,
    processed,
    seconds: (performance.now() - t0) / 1000,
    rate: runSeconds > 0 ? processed / runSeconds : 0,
    manifest,
  };
}
