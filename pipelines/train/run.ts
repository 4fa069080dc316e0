/**
 * A training run: data → GPU augmentation → DinoBloom steps, with
 * metrics.jsonl, a progress line, periodic kNN evaluation, atomic teacher
 * checkpoints that DinoBloom's PyTorch loader reads, a resume file, Ctrl-C
 * handling and a stop on a non-finite loss.
 *
 * Determinism (what makes --resume continue the same trajectory): the data
 * order is fixed by (seed, pass), every crop's augmentation by (seed, sample
 * id), every step's iBOT masks by (seed, step); the resume file records the
 * trainer state and the data position, nothing else is random.
 */
import { join } from "node:path";
import { writeSafetensors } from "../../data/safetensors.ts";
import { KNeighborsClassifier } from "../../eval/knn.ts";
import { matrix } from "../../eval/matrix.ts";
import { accuracy, balancedAccuracy } from "../../eval/metrics.ts";
import { tuneForVit } from "../../graph/tune.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import { augmentGlobalCrops, DINOBLOOM_AUGMENT } from "../augment.ts";
import { embedBatch } from "../embed.ts";
import { openLoader } from "../loader.ts";
import { Progress } from "../progress.ts";
import { trainTestSplit } from "../../eval/split.ts";
import type { TrainConfig } from "./config.ts";
import { batchMasks, MaskingGenerator } from "./masking.ts";
import { seeded, type StepMetrics, Trainer } from "./trainer.ts";

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
}

/** kNN evaluation of the teacher on a labelled set. */
export interface KnnScore {
  step: number;
  k: number;
  accuracy: number;
  balancedAccuracy: number;
  images: number;
}

/** What a finished (or interrupted) run reports. */
export interface RunSummary {
  steps: number;
  interrupted: boolean;
  knn: KnnScore[];
  finalCheckpoint: string;
  last?: StepMetrics;
}

/** The run was stopped by the user; a checkpoint and the resume file were written. */
export class InterruptedError extends Error {
  override name = "InterruptedError";
}

const RESUME = "resume.safetensors";

/** Embeds a labelled set with the teacher and scores kNN (k = 20 or fewer) on a 50/50 split. */
export async function knnScore(
  gpu: Gpu,
  trainer: Trainer,
  data: string,
  opts: { workers?: number; seed?: number } = {},
): Promise<Omit<KnnScore, "step">> {
  const cfg = trainer.cfg;
  // The evaluation protocol: bilinear resize straight to the model's input side.
  const loader = await openLoader(data, {
    batchSize: 32,
    size: cfg.imageSize,
    resample: "bilinear",
    workers: opts.workers,
  });
  const feats: Float32Array[] = [];
  const labels: number[] = [];
  let dim = 0;
  for await (const b of loader.batches()) {
    const e = await embedBatch(gpu, { arena: trainer.teacher, config: cfg.vit }, b, {
      inputSize: cfg.imageSize,
    });
    feats.push(e.features);
    dim = e.dim;
    for (let i = 0; i < b.count; i++) labels.push(b.labels[i]);
  }
  if (labels.some((l) => l < 0)) {
    throw new Error(
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
  const split = trainTestSplit(labels, { trainSize: 0.5, seed: opts.seed ?? 42 });
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
  };
}

/** Runs (or resumes) training. */
export async function runTraining(gpu: Gpu, opts: RunOptions): Promise<RunSummary> {
  const log = opts.log ?? ((s: string) => console.error(s));
  const cfg = opts.config;
  const out = opts.out;
  const format = opts.format ?? "pth";
  await Deno.mkdir(join(out, "checkpoints"), { recursive: true });
  const metricsPath = join(out, "metrics.jsonl");
  const resumePath = join(out, RESUME);
  let trainer: Trainer;
  let position = { pass: 0, batch: 0 };
  const knn: KnnScore[] = [];
  if (opts.resume) {
    if (!(await exists(resumePath))) {
      throw new Error(
        `nothing to resume in ${out}: no ${RESUME} (start a new run without --resume)`,
      );
    }
    const r = await Trainer.restore(gpu, resumePath, cfg);
    trainer = r.trainer;
    position = (r.extra.position as typeof position) ?? position;
    knn.push(...((r.extra.knn as KnnScore[] | undefined) ?? []));
    await truncateMetrics(metricsPath, trainer.iteration);
    log(
      `resuming ${out} at step ${trainer.iteration} (data pass ${position.pass}, batch ${position.batch})`,
    );
  } else {
    if (await exists(metricsPath)) {
      throw new Error(
        `${out} already holds a run (metrics.jsonl); pass --resume to continue it or choose another --out`,
      );
    }
    trainer = await Trainer.create(gpu, cfg, opts.init);
  }
  const total = opts.steps ?? cfg.epochs * cfg.epochLength;
  if (opts.autotune ?? true) {
    const grid = cfg.imageSize / cfg.vit.patch;
    await tuneForVit(gpu, cfg.vit, {
      tokens: grid * grid + 1 + cfg.vit.registers,
      batch: 2 * cfg.microBatch,
      training: true,
      log,
    });
  }
  const loader = await openLoader(opts.data, {
    batchSize: cfg.batch,
    seed: cfg.seed,
    dropLast: true,
    workers: opts.workers,
  });
  const perPass = loader.length === null ? null : Math.floor(loader.length / cfg.batch);
  if (perPass === 0) {
    throw new Error(
      `${opts.data}: ${loader.length} images are fewer than one batch of ${cfg.batch}; ` +
        "lower --batch or add data",
    );
  }
  const grid = cfg.imageSize / cfg.vit.patch;
  const masker = new MaskingGenerator(grid);
  const augment = { ...DINOBLOOM_AUGMENT, outSize: cfg.imageSize };
  const evalEvery = opts.evalEvery ?? 0;
  const saveEvery = opts.saveEvery ?? Math.max(1, Math.min(1000, total));
  const evaluate = async () => {
    if (!opts.evalData) return;
    const s = await knnScore(gpu, trainer, opts.evalData, {
      workers: opts.workers,
      seed: cfg.seed,
    });
    const score = { step: trainer.iteration, ...s };
    knn.push(score);
    log(
      `kNN (k=${s.k}) on ${opts.evalData} at step ${score.step}: accuracy ${pct(s.accuracy)}, ` +
        `balanced ${pct(s.balancedAccuracy)}`,
    );
    await appendLine(metricsPath, { kind: "knn", ...score });
  };
  const save = async (final: boolean) => {
    const step = trainer.iteration;
    const name = final
      ? `teacher_final.${format}`
      : `checkpoints/teacher_${String(step).padStart(7, "0")}.${format}`;
    const path = join(out, name);
    if (format === "pth") await trainer.saveTeacher(path);
    else {await writeSafetensors(path, await trainer.teacherStateDict(), {
        "bloom.config": JSON.stringify(cfg),
      });}
    await trainer.saveState(resumePath, { position, knn });
    return path;
  };

  if (!opts.resume || knn.length === 0) await evaluate();
  const progress = new Progress(total - trainer.iteration, {
    unit: "steps",
    label: "train",
    silent: opts.quiet,
  });
  let last: StepMetrics | undefined;
  let interrupted = false;
  let finalPath = "";
  try {
    outer: while (trainer.iteration < total) {
      let skip = position.batch;
      for await (const batch of loader.batches(position.pass)) {
        if (skip > 0) {
          skip--;
          continue;
        }
        const t0 = performance.now();
        const images = gpu.uploadBytes(batch.pixels);
        const ids = Array.from(
          { length: batch.count },
          (_, i) => position.pass * 1_000_003 + position.batch * cfg.batch + i,
        );
        const { crops } = augmentGlobalCrops(gpu, images, {
          count: batch.count,
          size: batch.size,
          seed: cfg.seed,
          sampleIds: ids,
          config: augment,
        });
        gpu.release(images);
        const masks = batchMasks(
          masker,
          2 * batch.count,
          seeded(cfg.seed * 1_000_003 + trainer.iteration),
          {
            probability: cfg.maskProbability,
            ratio: cfg.maskRatio,
          },
        );
        let m: StepMetrics;
        try {
          m = await trainer.step(crops, masks);
        } finally {
          gpu.release(crops);
        }
        position = { pass: position.pass, batch: position.batch + 1 };
        const imagesPerSecond = batch.count / ((performance.now() - t0) / 1000);
        last = m;
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
        });
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
      position = { pass: position.pass + 1, batch: 0 };
    }
  } finally {
    progress.done();
  }
  if (interrupted) {
    const path = await save(false);
    log(
      `interrupted at step ${trainer.iteration}: wrote ${path} and ${resumePath}; continue with --resume`,
    );
    trainer.destroy();
    throw new InterruptedError(`stopped at step ${trainer.iteration}`);
  }
  await evaluate();
  finalPath = await save(true);
  log(`wrote ${finalPath}`);
  const steps = trainer.iteration;
  trainer.destroy();
  return { steps, interrupted, knn, finalCheckpoint: finalPath, last };
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
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
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, keep.map((l) => l + "\n").join(""));
  await Deno.rename(tmp, path);
}
