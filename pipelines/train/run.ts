/**
 * A training run: data → GPU augmentation → DinoBloom steps, with
 * metrics.jsonl, a progress line, periodic kNN evaluation, atomic teacher
 * checkpoints that DinoBloom's PyTorch loader reads, a resume file, Ctrl-C
 * handling and a stop on a non-finite loss.
 *
 * Robustness: images and shards the loaders skip go to errors.jsonl (once
 * each); a data pass that yields no batch stops the run (it would loop
 * forever); a directory left by a crash is resumed or restarted, never
 * stuck (`RunStart`).
 *
 * Determinism (what makes --resume continue the same trajectory): the data
 * order is fixed by (seed, pass), every crop's augmentation by (seed, sample
 * id), every step's iBOT masks by (seed, step); the resume file records the
 * trainer state and the data position, nothing else is random.
 *
 * Data-parallel (`comm` with several ranks, pipelines/mpi): `config.batch` is
 * the global batch; each rank reads its share of the stream, steps on it, and
 * only rank 0 writes checkpoints, metrics and progress. Sample ids, masks and
 * the data order are those of the one-rank run, so any number of ranks (and
 * `--resume` with another number) follows the same trajectory.
 */
import { join } from "node:path";
import { InputError } from "../../data/errors.ts";
import { exists, writeTextAtomic } from "../../data/file.ts";
import { writeSafetensors } from "../../data/safetensors.ts";
import { KNeighborsClassifier } from "../../eval/knn.ts";
import { matrix } from "../../eval/matrix.ts";
import { accuracy, balancedAccuracy } from "../../eval/metrics.ts";
import { trainedCheckpointMeta } from "../../graph/checkpoint.ts";
import { mulberry32 } from "../../graph/random.ts";
import { expectedMaskedTokens, tuneForVit } from "../../graph/tune.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import { augmentGlobalCrops, DINOBLOOM_AUGMENT } from "../augment.ts";
import { embedBatch } from "../embed.ts";
import { checkSource, openLoader } from "../loader.ts";
import { Progress } from "../progress.ts";
import { trainTestSplit } from "../../eval/split.ts";
import {
  carriedSplit,
  shortHash,
  type SplitRecord,
  splitRecord,
  trainTestRecord,
} from "../../eval/split_record.ts";
import { SPLIT_ORIGIN_KEY, splitOriginOf } from "../dataset/split_origin.ts";
import type { TrainConfig } from "./config.ts";
import { batchMasks, MaskingGenerator } from "./masking.ts";
import { NonFiniteLossError, type StepMetrics, Trainer } from "./trainer.ts";
import { allgatherJson, type Comm, shareFromRoot, SoloComm } from "../mpi/comm.ts";
import { agree, dataFingerprint, tensorsDigest } from "../mpi/agree.ts";
import { localMasks, rankBatch } from "../mpi/shard.ts";
import { abortOnSignals, injectedFault, removeStalePartials, RunGuard } from "../mpi/stop.ts";
import { collective } from "../mpi/world.ts";
import { lockOutput } from "../output_lock.ts";
import { Interrupted } from "../interrupt.ts";

/** Options of a run. */
export interface RunOptions {
  config: TrainConfig;
  /** Training images: shards (dir with manifest.json or .tar files), a folder or a list file. */
  data: string | string[];
  /** Initial weights (DINOv2 or DinoBloom checkpoint); fresh DINOv2 init when absent. */
  init?: string;
  /** Output directory: metrics.jsonl, checkpoints/, teacher_final.pth, resume.safetensors. */
  out: string;
  /** Optimiser steps in all (default: epochs × epochLength). */
  steps?: number;
  /** Continue the run in `out`. */
  resume?: boolean;
  /** A labelled set (folder per class or shards) for periodic kNN evaluation. */
  evalData?: string;
  /** Evaluate every N steps (and at the start and end); 0 = only start and end. */
  evalEvery?: number;
  /** Write a checkpoint every N steps (and at the end). */
  saveEvery?: number;
  /** Checkpoint format: .pth (DinoBloom's loader) or .safetensors. */
  format?: "pth" | "safetensors";
  workers?: number;
  quiet?: boolean;
  /** Aborting stops after the current step with a checkpoint (Ctrl-C). */
  signal?: AbortSignal;
  /** Called after every step. */
  onStep?: (m: StepMetrics & { imagesPerSecond: number }) => void;
  /** Called for every line worth showing a person. */
  log?: (line: string) => void;
  /** Measure the kernel variants for this model first (once per adapter; cached). Default true. */
  autotune?: boolean;
  /** The ranks of a data-parallel run (pipelines/mpi); default: this process alone. */
  comm?: Comm;
  /** Folder sources: follow symbolic links out of the folder (default: refused, in errors.jsonl). */
  followLinks?: boolean;
  /** Another run writes `out`: wait for it (default: stop, naming it; pipelines/output_lock.ts). */
  wait?: boolean;
}

/** kNN evaluation of the teacher on a labelled set. */
export interface KnnScore {
  step: number;
  k: number;
  accuracy: number;
  balancedAccuracy: number;
  images: number;
  /** The split scored: its origin and membership hash (eval/split_record.ts). */
  split?: SplitRecord;
}

/** What a finished (or interrupted) run reports. */
export interface RunSummary {
  steps: number;
  interrupted: boolean;
  knn: KnnScore[];
  finalCheckpoint: string;
  last?: StepMetrics;
}

const RESUME = "resume.safetensors";

/**
 * Embeds a labelled set with the teacher and scores kNN (k = 20 or fewer):
 * train rows → test rows of the split the set carries (ingested with
 * `--split`), else of a stratified 50/50 split with `seed`, which the
 * score's `split` then says.
 */
export async function knnScore(
  gpu: Gpu,
  trainer: Trainer,
  data: string,
  opts: {
    workers?: number;
    seed?: number;
    onError?: (where: string, reason: string) => void;
    followLinks?: boolean;
  } = {},
): Promise<Omit<KnnScore, "step">> {
  const cfg = trainer.cfg;
  // The evaluation protocol: bilinear resize straight to the model's input side.
  const loader = await openLoader(data, {
    batchSize: 32,
    size: cfg.imageSize,
    resample: "bilinear",
    workers: opts.workers,
    onError: opts.onError,
    followLinks: opts.followLinks,
  });
  const feats: Float32Array[] = [];
  const labels: number[] = [];
  const keys: string[] = [];
  const splits: string[] = [];
  let dim = 0;
  for await (const b of loader.batches()) {
    const e = await embedBatch(gpu, { arena: trainer.teacher, config: cfg.vit }, b, {
      inputSize: cfg.imageSize,
    });
    feats.push(e.features);
    dim = e.dim;
    for (let i = 0; i < b.count; i++) {
      labels.push(b.labels[i]);
      keys.push(b.keys[i]);
      const s = b.meta[i]?.split;
      if (typeof s === "string" && s !== "") splits.push(s);
    }
  }
  if (labels.some((l) => l < 0)) {
    throw new InputError(
      `${data}: the evaluation set needs labels (a folder per class, or labelled shards)`,
    );
  }
  const n = labels.length;
  const all = new Float32Array(n * dim);
  let at = 0;
  for (const f of feats) {
    all.set(f, at);
    at += f.length;
  }
  const carried = splits.length === n ? carriedSplit(splits) : null;
  const seed = opts.seed ?? 42;
  const split = carried ?? trainTestSplit(labels, { trainSize: 0.5, seed });
  const record = carried
    ? await splitRecord(
      (await splitOriginOf(data))[SPLIT_ORIGIN_KEY] ?? `the per-sample split of ${data}`,
      keys,
      splits,
    )
    : await trainTestRecord(
      `train --eval: stratified 50/50, seed ${seed} (${data} carries no train/test split)`,
      keys,
      split,
    );
  const pick = (idx: number[]) => {
    const m = new Float32Array(idx.length * dim);
    idx.forEach((r, i) => m.set(all.subarray(r * dim, (r + 1) * dim), i * dim));
    return matrix(m, idx.length, dim, "embeddings");
  };
  const k = Math.min(20, split.train.length);
  const clf = new KNeighborsClassifier(pick(split.train), split.train.map((i) => labels[i]));
  const pred = await clf.predict(pick(split.test), k);
  const truth = split.test.map((i) => labels[i]);
  return {
    k,
    accuracy: accuracy(truth, pred),
    balancedAccuracy: balancedAccuracy(truth, pred),
    images: n,
    split: record,
  };
}

/**
 * What a run does with its `out` directory:
 * - "new": nothing of a run there; it starts.
 * - "resume": a resume file there and `resume` asked: it continues.
 * - "restart": a run that stopped before its first resume file (metrics or
 *   checkpoints, nothing to resume from): it starts over from step 0, with
 *   or without `resume`, dropping that run's metrics and errors.
 * A resume file without `resume` is refused (continue it or choose another
 * --out), and `resume` with no run there at all, so every crash leaves a
 * directory one of the two commands takes, and the message says which.
 */
export type RunStart = "new" | "resume" | "restart";

/**
 * Checks what a run can check without the GPU: the state of `out` (see
 * `RunStart`) and that `data` and `evalData`, when given, can be opened.
 * `runTraining` calls it first; commands call it before they start the GPU,
 * so a bad path costs nothing and creates nothing. Changes nothing.
 */
export async function checkRunInputs(
  opts: Pick<RunOptions, "out" | "resume" | "evalData"> & { data?: RunOptions["data"] },
): Promise<RunStart> {
  const start = await runStart(opts.out, Boolean(opts.resume));
  const output = { path: opts.out, flag: "--out" };
  if (opts.data !== undefined) await checkSource(opts.data, "--data", output);
  if (opts.evalData !== undefined) await checkSource(opts.evalData, "--eval", output);
  return start;
}

async function runStart(out: string, resume: boolean): Promise<RunStart> {
  if (await exists(join(out, RESUME))) {
    if (resume) return "resume";
    throw new InputError(
      `${out} holds a run that can be resumed (${RESUME}): pass --resume to continue it, ` +
        `or choose another --out for a new run`,
    );
  }
  const traces = await exists(join(out, "metrics.jsonl")) ||
    await exists(join(out, "checkpoints"));
  if (traces) return "restart";
  if (resume) {
    throw new InputError(
      `nothing to resume in ${out}: no run there (no ${RESUME}, no metrics.jsonl); ` +
        `start a new run without --resume, or check --out`,
    );
  }
  return "new";
}

/** Runs (or resumes) training. */
export async function runTraining(gpu: Gpu, opts: RunOptions): Promise<RunSummary> {
  const comm = opts.comm ?? new SoloComm();
  const root = comm.rank === 0;
  // Rank 0 speaks and writes for the run; the other ranks only train.
  const log = root ? opts.log ?? ((s: string) => console.error(s)) : () => {};
  const cfg = opts.config;
  const out = opts.out;
  const format = opts.format ?? "pth";
  const rb = rankBatch(cfg, comm);
  // Inputs first (creates nothing), then rank 0 locks --out and reads its state under the lock.
  if (root) await checkRunInputs(opts);
  await using _lock = root ? await lockOutput(out, "directory", { wait: opts.wait, log }) : null;
  const start = root ? await checkRunInputs(opts) : "new";
  if (!root) await checkSource(opts.data, "--data");
  // Ranks that would train on different things stop here, before any state moves.
  await agree(comm, {
    config: JSON.stringify(cfg),
    // Only rank 0 reads --init: the others need only agree that there is one.
    options: JSON.stringify({ steps: opts.steps, resume: opts.resume, init: !!opts.init, format }),
    data: await dataFingerprint(opts.data),
    deno: Deno.version.deno,
  }, "training run");
  const metricsPath = join(out, "metrics.jsonl");
  const resumePath = join(out, RESUME);
  // Rank 0 writes errors.jsonl; the other ranks' skipped images reach it through `gate` below.
  const bad = new ErrorLog(join(out, "errors.jsonl"), log, !root);
  let trainer: Trainer;
  let position = { pass: 0, batch: 0 };
  const knn: KnnScore[] = [];
  const guard = new RunGuard();
  if (!root) {
    // Rank 0 reads the weights and the resume file; the others receive them (joinRanks).
    trainer = Trainer.blank(gpu, cfg);
  } else if (start === "resume") {
    await bad.resume();
    const stale = await removeStalePartials(out);
    if (stale.length) log(`removed partial files of an interrupted write: ${stale.join(", ")}`);
    const r = await Trainer.restore(gpu, resumePath, cfg);
    trainer = r.trainer;
    position = (r.extra.position as typeof position) ?? position;
    knn.push(...((r.extra.knn as KnnScore[] | undefined) ?? []));
    await truncateMetrics(metricsPath, trainer.iteration);
    log(
      `resuming ${out} at step ${trainer.iteration} (data pass ${position.pass}, batch ${position.batch})`,
    );
  } else {
    if (start === "restart") {
      log(
        `${out} holds a run that stopped before its first checkpoint: nothing to resume, ` +
          `starting it over from step 0`,
      );
      await removeStalePartials(out);
      for (const f of [metricsPath, bad.path]) await Deno.remove(f).catch(() => {});
    }
    trainer = await Trainer.create(gpu, cfg, opts.init);
  }
  await trainer.joinRanks(comm);
  position = await shareFromRoot(comm, position);
  if (comm.size > 1) {
    const weights = [...trainer.student.chunks, ...trainer.teacher.chunks].map((c) => c.value);
    await agree(comm, { weights: await tensorsDigest(gpu, weights) }, "training run");
    log(
      `${comm.size} ranks, ${rb.local} images each per step (global batch ${rb.global}) over ${comm.transport}`,
    );
  }
  const total = opts.steps ?? cfg.epochs * cfg.epochLength;
  if (opts.autotune ?? true) {
    const grid = cfg.imageSize / cfg.vit.patch;
    const masking = { probability: cfg.maskProbability, ratio: cfg.maskRatio };
    await tuneForVit(gpu, cfg.vit, {
      images: 2 * rb.micro,
      image: cfg.imageSize,
      training: true,
      head: cfg.head,
      masked: [expectedMaskedTokens(2 * rb.micro, grid * grid, masking)],
      log,
    });
  }
  const loader = await openLoader(opts.data, {
    batchSize: rb.local,
    seed: cfg.seed,
    dropLast: true,
    workers: opts.workers,
    shard: comm.size > 1 ? { index: comm.rank, count: comm.size } : undefined,
    onError: bad.add,
    followLinks: opts.followLinks,
  });
  const perPass = loader.length === null ? null : Math.floor(loader.length / rb.local);
  if (perPass === 0) {
    throw new InputError(
      `${opts.data}: ${loader.length} images are fewer than one batch of ${cfg.batch}; ` +
        "lower --batch or add data",
    );
  }
  // Only now, with every input checked, does the run write into `out`.
  if (root) {
    await Deno.mkdir(join(out, "checkpoints"), { recursive: true });
    await bad.open();
  }
  const grid = cfg.imageSize / cfg.vit.patch;
  const masker = new MaskingGenerator(grid);
  const augment = { ...DINOBLOOM_AUGMENT, outSize: cfg.imageSize };
  const evalEvery = opts.evalEvery ?? 0;
  const saveEvery = opts.saveEvery ?? Math.max(1, Math.min(1000, total));
  const evaluate = async () => {
    if (!opts.evalData || !root) return;
    const s = await knnScore(gpu, trainer, opts.evalData, {
      workers: opts.workers,
      seed: cfg.seed,
      onError: bad.add,
      followLinks: opts.followLinks,
    });
    const score = { step: trainer.iteration, ...s };
    knn.push(score);
    log(
      `kNN (k=${s.k}) on ${opts.evalData} at step ${score.step}: accuracy ${pct(s.accuracy)}, ` +
        `balanced ${pct(s.balancedAccuracy)} (split sha256 ${shortHash(s.split!.sha256)})`,
    );
    await appendLine(metricsPath, { kind: "knn", ...score });
  };
  const save = async (final: boolean) => {
    const step = trainer.iteration;
    const name = final
      ? `teacher_final.${format}`
      : `checkpoints/teacher_${String(step).padStart(7, "0")}.${format}`;
    const path = join(out, name);
    if (!root) return path;
    await guard.writing([path], async () => {
      if (format === "pth") await trainer.saveTeacher(path);
      else {await writeSafetensors(path, await trainer.teacherStateDict(), {
          "bloom.config": JSON.stringify(cfg),
          ...trainedCheckpointMeta(cfg.vit, cfg.imageSize),
        });}
    }, () => guard.lastCheckpoint = { path, step });
    await guard.writing(
      [resumePath],
      () => trainer.saveState(resumePath, { position, knn }),
      () => guard.resumeStep = step,
    );
    return path;
  };
  /**
   * Every rank's state at a step boundary, the same array on every rank: whether it has a batch (a
   * step starts only when every rank has one: the ranks' shares can end a batch apart where images
   * fail), whether its data pass gave no batch at all, and its loader's counts. It carries the
   * images the other ranks skipped since the last call to rank 0, which writes them to
   * errors.jsonl. One process: its own state, nothing sent.
   */
  const gate = async (has: boolean, empty = false) => {
    const { decoded, failed, failedShards } = loader.stats;
    const notes = await allgatherJson(comm, {
      has,
      empty,
      decoded,
      failed,
      failedShards,
      skipped: bad.drain(),
    });
    if (root) notes.forEach((n, r) => bad.receive(n.skipped, r));
    return notes;
  };
  // A signal on any rank stops every rank at once (see pipelines/mpi/stop.ts).
  const unwatch = comm.size > 1 ? abortOnSignals(comm, guard) : null;
  const fault = comm.size > 1 ? injectedFault() : null;

  if (!opts.resume || knn.length === 0) await evaluate();
  const progress = new Progress(total - trainer.iteration, {
    unit: "steps",
    label: "train",
    silent: opts.quiet || !root,
  });
  let last: StepMetrics | undefined;
  let interrupted = false;
  let finalPath = "";
  try {
    outer: while (trainer.iteration < total) {
      let skip = position.batch;
      let notes: Awaited<ReturnType<typeof gate>> | null = null;
      const stepsBefore = trainer.iteration;
      for await (const batch of loader.batches(position.pass)) {
        if (skip > 0) {
          skip--;
          continue;
        }
        const now = await gate(true);
        if (!now.every((n) => n.has)) {
          notes = now; // another rank's share of this pass has ended
          break;
        }
        const t0 = performance.now();
        const images = gpu.uploadBytes(batch.pixels);
        const ids = Array.from(
          { length: batch.count },
          (_, i) => position.pass * 1_000_003 + position.batch * cfg.batch + rb.first + i,
        );
        const { crops } = augmentGlobalCrops(gpu, images, {
          count: batch.count,
          size: batch.size,
          seed: cfg.seed,
          sampleIds: ids,
          config: augment,
        });
        gpu.release(images);
        if (fault && fault.rank === comm.rank && fault.step === trainer.iteration) {
          if (fault.kind === "crash") {
            throw new Error(`crash injected by BLOOM_INJECT_FAULT at step ${trainer.iteration}`);
          }
          gpu.write(crops, new Float32Array(crops.numel).fill(NaN));
        }
        // The global batch's masks (as one rank would draw them), cut to this rank's images.
        const allMasks = batchMasks(
          masker,
          2 * rb.global,
          mulberry32(cfg.seed * 1_000_003 + trainer.iteration),
          {
            probability: cfg.maskProbability,
            ratio: cfg.maskRatio,
          },
        );
        const masks = comm.size > 1
          ? localMasks(allMasks, rb.global, rb.first, batch.count)
          : allMasks;
        let m: StepMetrics;
        try {
          m = await trainer.step(crops, masks);
        } catch (e) {
          // Every rank computed the same summed loss: every rank stops here, none aborts.
          throw e instanceof NonFiniteLossError && comm.size > 1 ? collective(e) : e;
        } finally {
          gpu.release(crops);
        }
        position = { pass: position.pass, batch: position.batch + 1 };
        const imagesPerSecond = rb.global / ((performance.now() - t0) / 1000);
        last = m;
        if (root) {
          await appendLine(metricsPath, {
            kind: "step",
            step: m.step,
            dino: m.dino,
            ibot: m.ibot,
            koleo: m.koleo,
            total: m.total,
            lr: m.lr,
            wd: m.wd,
            momentum: m.momentum,
            teacher_temp: m.teacherTemp,
            last_layer_lr: m.lastLayerLr,
            grad_norm: m.gradNorm,
            masked_patches: m.maskedPatches,
            images_per_s: imagesPerSecond,
            ...(m.sync
              ? {
                ranks: comm.size,
                grad_sync_ms: m.sync.commMs,
                grad_sync_exposed_ms: m.sync.exposedMs,
              }
              : {}),
          });
        }
        opts.onStep?.({ ...m, imagesPerSecond });
        progress.tick(1, `loss ${m.total.toFixed(4)} · ${imagesPerSecond.toFixed(1)} img/s`);
        const it = trainer.iteration;
        if (it % saveEvery === 0 && it < total) await save(false);
        if (evalEvery > 0 && it % evalEvery === 0 && it < total) await evaluate();
        if (opts.signal?.aborted) {
          interrupted = true;
          break outer;
        }
        if (it >= total) break outer;
      }
      notes ??= await gate(false, skip === position.batch);
      // A pass that stepped nowhere, where a rank neither stepped nor skipped a batch, will not do
      // better next time: decoding failures left fewer good images than one batch on that rank.
      if (trainer.iteration === stepsBefore && notes.some((n) => !n.has && n.empty)) {
        const sum = (k: "decoded" | "failed" | "failedShards") =>
          notes!.reduce((a, n) => a + n[k], 0);
        const shards = sum("failedShards");
        const e = new InputError(
          `${[opts.data].flat().join(", ")}: data pass ${position.pass} gave no full batch ` +
            `of ${rb.local} images${comm.size > 1 ? " on a rank" : ""} (${sum("decoded")} ` +
            `decoded, ${sum("failed")} failed${shards ? `, ${shards} shards unreadable` : ""}; ` +
            `see ${bad.path}), so training cannot go on; fix or remove the bad images, add ` +
            `data, or lower --batch`,
        );
        throw comm.size > 1 ? collective(e) : e;
      }
      position = { pass: position.pass + 1, batch: 0 };
    }
  } finally {
    progress.done();
  }
  // What the other ranks skipped after the last step's gate reaches errors.jsonl too.
  await gate(true);
  if (interrupted) {
    const path = await save(false);
    log(
      `interrupted at step ${trainer.iteration}: wrote ${path} and ${resumePath}; continue with --resume`,
    );
    trainer.destroy();
    throw new Interrupted(`a checkpoint at step ${trainer.iteration}: ${path} and ${resumePath}`);
  }
  await evaluate();
  finalPath = await save(true);
  unwatch?.();
  log(`wrote ${finalPath}`);
  const steps = trainer.iteration;
  trainer.destroy();
  return { steps, interrupted, knn, finalCheckpoint: finalPath, last };
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

/**
 * The run's `errors.jsonl`: every image or shard the loaders skipped, once
 * (a pass or an evaluation that meets it again adds nothing), logged once.
 * Lines wait in memory until the run directory exists (`open`). Under MPI only
 * rank 0 writes: another rank's log (`forward`) keeps its lines for `drain`,
 * and rank 0 records them with `receive` (the log line names the rank; the
 * record is the one a single process writes, so one image is listed once
 * whichever ranks met it).
 */
class ErrorLog {
  readonly path: string;
  #seen = new Set<string>();
  #pending: string[] = [];
  #outbox: string[] | null;
  #open = false;
  #log: (line: string) => void;

  constructor(path: string, log: (line: string) => void, forward = false) {
    this.path = path;
    this.#log = log;
    this.#outbox = forward ? [] : null;
  }

  /** Remembers what a resumed run already recorded. */
  async resume(): Promise<void> {
    try {
      const text = await Deno.readTextFile(this.path);
      for (const l of text.split("\n")) if (l.trim()) this.#seen.add(l);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  /** Starts writing (the directory exists now). */
  async open(): Promise<void> {
    this.#open = true;
    const lines = this.#pending.splice(0);
    if (lines.length) await Deno.writeTextFile(this.path, lines.join(""), { append: true });
  }

  /** Records one skipped item (a loader's onError). */
  add = (where: string, reason: string): void => {
    this.#record(JSON.stringify({ path: where, reason }), `skipped ${where}: ${reason}`);
  };

  /** Records the lines rank `rank` drained (rank 0). */
  receive(lines: readonly string[], rank: number): void {
    for (const line of lines) {
      const { path, reason } = JSON.parse(line) as { path: string; reason: string };
      this.#record(line, `skipped ${path} (rank ${rank}): ${reason}`);
    }
  }

  /** A forwarding log's lines since the last call (none for rank 0's). */
  drain(): string[] {
    return this.#outbox?.splice(0) ?? [];
  }

  #record(line: string, message: string): void {
    if (this.#seen.has(line)) return;
    this.#seen.add(line);
    if (this.#outbox) {
      this.#outbox.push(line);
      return;
    }
    this.#log(message);
    if (this.#open) Deno.writeTextFileSync(this.path, line + "\n", { append: true });
    else this.#pending.push(line + "\n");
  }
}

async function appendLine(path: string, obj: unknown): Promise<void> {
  await Deno.writeTextFile(path, JSON.stringify(obj) + "\n", { append: true });
}

/** Drops metric lines of steps the resume file does not cover (written after its last save). */
async function truncateMetrics(path: string, iteration: number): Promise<void> {
  if (!(await exists(path))) return;
  const lines = (await Deno.readTextFile(path)).split("\n").filter((l) => l.trim());
  const keep = lines.filter((l) => {
    try {
      const o = JSON.parse(l);
      return o.kind === "knn" ? o.step <= iteration : o.step < iteration;
    } catch {
      return false;
    }
  });
  await writeTextAtomic(path, keep.map((l) => l + "\n").join(""));
}
