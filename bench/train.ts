/**
 * Training-step benchmarks: bloom's whole DinoBloom step (pipelines/train/trainer.ts: teacher
 * forward and targets, student forward and backward with DINO, iBOT and KoLeo, per-module
 * clipping, AdamW, EMA, one read-back) in images/s, next to PyTorch CPU running the same step
 * in the same run (scripts/bench/torch_train_step.py). An image is one source image with its
 * two 224 px global crops; both sides use the same iBOT masks (batchMasks, written to .npy for
 * the peer) and DinoBloom's real heads (2048 hidden, 256 bottleneck, 65,536 prototypes).
 */
import { join } from "node:path";
import { writeNpy } from "../data/npy.ts";
import { dinobloomConfig, PRESETS, type TrainConfig } from "../pipelines/train/config.ts";
import { type BatchMasks, batchMasks, MaskingGenerator } from "../pipelines/train/masking.ts";
import { seeded, Trainer } from "../pipelines/train/trainer.ts";
import { vitConfig } from "../graph/vit.ts";
import type { MatmulShape } from "../kernels/matmul.ts";
import { fmtBytes } from "../kernels/pool.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { type BenchRow, type BenchSuite, timeHost } from "./harness.ts";
import {
  type BindingLimits,
  headLinears,
  linearMatmulShapes,
  randomTensor,
  tokenCounts,
  tuneFor,
  vitLinears,
} from "./model.ts";
import { loaderRow } from "./loader.ts";
import { type PeerOutcome, peerRow, peerScript, runPeer } from "./peers.ts";

/** iBOT masks for `batch` images (2·batch crops, crop-major) as the trainer's data would give. */
export function stepMasks(cfg: TrainConfig, batch: number, seed = 5): BatchMasks {
  const grid = cfg.imageSize / cfg.vit.patch;
  return batchMasks(new MaskingGenerator(grid), 2 * batch, seeded(seed), {
    probability: cfg.maskProbability,
    ratio: cfg.maskRatio,
  });
}

/**
 * Every matmul shape one Trainer.step runs for `batch` images with `masks`: per micro-batch of
 * m images, the teacher's forward (2m crops, its heads on 2m CLS rows and the masked tokens)
 * and the student's forward and backward of the same.
 */
export function trainStepMatmulShapes(
  cfg: TrainConfig,
  batch: number,
  masks: BatchMasks,
  limits?: BindingLimits,
): MatmulShape[] {
  const m = Math.min(cfg.microBatch, batch);
  const shapes: MatmulShape[] = [];
  for (const count of maskedPerMicroBatch(masks, batch, m)) {
    const uses = [
      ...vitLinears(cfg.vit, 2 * m, cfg.imageSize),
      ...headLinears(cfg.head, 2 * m),
      ...headLinears(cfg.head, count),
    ];
    shapes.push(...linearMatmulShapes(uses, false), ...linearMatmulShapes(uses, true, limits));
  }
  return shapes.sort((a, b) => a.M * a.N * a.K - b.M * b.N * b.K);
}

/** Masked tokens in each micro-batch of `m` images (both crops of images p·m … p·m+m−1). */
export function maskedPerMicroBatch(masks: BatchMasks, batch: number, m: number): number[] {
  const patches = masks.masks.length / (2 * batch);
  const out: number[] = [];
  for (let first = 0; first < batch; first += m) {
    let count = 0;
    for (const c of [0, 1]) {
      const lo = (c * batch + first) * patches;
      for (let i = lo; i < lo + m * patches; i++) count += masks.masks[i];
    }
    out.push(count);
  }
  return out;
}

/** One training row: a config at a batch. */
export interface TrainCase {
  /** Row name, e.g. "train step vit_small b8". */
  name: string;
  cfg: TrainConfig;
  batch: number;
  /** Timed steps for this case (default: the plan's), for steps that take many minutes. */
  iters?: number;
}

/** What the suite runs, and how often. */
export interface TrainPlan {
  cases: TrainCase[];
  warmup: number;
  iters: number;
}

function trainCase(name: string, cfg: TrainConfig, batch: number, iters?: number): TrainCase {
  return { name, cfg: { ...cfg, batch, microBatch: batch }, batch, iters };
}

/**
 * ViT-S b8 and b32 with DinoBloom's heads at 224 px, and the demo preset (its small ViT and
 * heads at its own image size) at b32; quick mode: the demo preset at b4 only. Full heads
 * (65,536 prototypes) even at b32, where the heads alone cost minutes a step on llvmpipe.
 */
export function trainPlan(quick: boolean): TrainPlan {
  const demo = PRESETS.demo();
  if (quick) {
    return { cases: [trainCase("train step small model b4", demo, 4)], warmup: 1, iters: 2 };
  }
  const small = (b: number) => dinobloomConfig(vitConfig("vit_small"), b);
  return {
    cases: [
      trainCase("train step vit_small b8", small(8), 8),
      // ~20 min a step on each side on 2 loaded cores: two timed steps.
      trainCase("train step vit_small b32", small(32), 32, 2),
      trainCase("train step small model b32", demo, 32),
    ],
    warmup: 1,
    iters: 3,
  };
}

/** torch_train_step.py arguments for a config (masks file and timing added by the caller). */
export function trainPeerArgs(cfg: TrainConfig, batch: number): string[] {
  const v = cfg.vit;
  if (v.ffn !== "mlp" || v.registers > 0) {
    throw new RangeError("torch_train_step.py builds MLP-FFN models without registers");
  }
  if (v.posGrid * v.patch !== cfg.imageSize) {
    // Neither side then interpolates position embeddings, so the interpolation mode cannot differ.
    throw new RangeError(
      `train bench: imageSize ${cfg.imageSize} must equal posGrid·patch (${v.posGrid * v.patch})`,
    );
  }
  if (cfg.centering !== "sinkhorn_knopp") {
    throw new RangeError("torch_train_step.py times Sinkhorn-Knopp centering only");
  }
  const h = cfg.head;
  return [
    ...["--dim", v.dim, "--depth", v.depth, "--heads", v.heads, "--mlp", v.mlpHidden],
    ...["--patch", v.patch, "--pos-grid", v.posGrid, "--image", cfg.imageSize, "--batch", batch],
    ...["--hidden", h.hidden, "--bottleneck", h.bottleneck, "--prototypes", h.prototypes],
    ...["--clip", cfg.clipGrad, "--koleo-eps", cfg.koleoEps],
    ...["--patch-embed-lr-mult", cfg.patchEmbedLrMult],
  ].map(String);
}

/** Times bloom's step; frees the trainer before returning, so the peer has the memory. */
async function timeBloomStep(
  gpu: Gpu,
  cfg: TrainConfig,
  masks: BatchMasks,
  warmup: number,
  iters: number,
  tune: boolean,
  notes: string[],
): Promise<number> {
  const B = cfg.batch;
  const S = cfg.imageSize;
  const before = gpu.pool.stats().peakLiveBytes;
  const trainer = await Trainer.create(gpu, cfg);
  const crops = randomTensor(gpu, [2 * B, 3, S, S]);
  try {
    if (tune) {
      const { tokens } = tokenCounts(cfg.vit, S);
      const pass = { tokens, batch: 2 * cfg.microBatch, training: true };
      const shapes = trainStepMatmulShapes(cfg, B, masks, gpu.limits);
      notes.push(await tuneFor(gpu, cfg.vit, pass, shapes));
    }
    const ms = await timeHost(() => trainer.step(crops, masks), { warmup, iters });
    notes.push(`median of ${iters} after ${warmup} warm-up`);
    const peak = gpu.pool.stats().peakLiveBytes;
    if (peak > before) notes.push(`pool peak ${fmtBytes(peak)}`);
    return ms;
  } finally {
    gpu.release(crops);
    trainer.destroy();
    // Free pooled buffers too (llvmpipe's live in this process's memory) before PyTorch runs.
    await gpu.sync();
    gpu.pool.trim(0);
  }
}

/** Runs torch_train_step.py on the same masks. */
async function timePeerStep(
  cfg: TrainConfig,
  masks: BatchMasks,
  warmup: number,
  iters: number,
): Promise<PeerOutcome> {
  const B = cfg.batch;
  const dir = await Deno.makeTempDir({ prefix: "bloom-bench-train-" });
  try {
    const file = join(dir, "masks.npy");
    const shape = [2 * B, masks.masks.length / (2 * B)];
    await writeNpy(file, { dtype: "u8", shape, data: masks.masks });
    return await runPeer(peerScript("torch_train_step.py"), [
      ...trainPeerArgs(cfg, B),
      ...["--masks", file, "--warmup", String(warmup), "--iters", String(iters)],
    ], { timeoutMs: 4 * 3600_000 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function trainRow(
  gpu: Gpu,
  c: TrainCase,
  plan: TrainPlan,
  opts: TrainSuiteOptions,
): Promise<BenchRow> {
  const B = c.batch;
  const iters = c.iters ?? plan.iters;
  trainPeerArgs(c.cfg, B); // refuse configs the peer cannot mirror before spending minutes
  const masks = stepMasks(c.cfg, B);
  const cfg = { ...c.cfg, batch: B };
  const notes = [
    `${2 * B} crops ${cfg.imageSize} px, ${cfg.head.prototypes} prototypes, ` +
    `${masks.count} masked patches`,
  ];
  const micro = Math.min(cfg.microBatch, B);
  if (micro < B) notes.push(`micro-batch ${micro}`);
  const ms = await timeBloomStep(gpu, cfg, masks, plan.warmup, iters, opts.tune ?? true, notes);
  const peer: PeerOutcome = opts.peers ?? true
    ? await timePeerStep(cfg, masks, plan.warmup, iters)
    : { ok: false, reason: "peers disabled" };
  return peerRow(c.name, ms, B, peer, "pytorch cpu", notes.join("; "));
}

/** Knobs of the training suite (the smoke test turns off peers and tuning, and shrinks shapes). */
export interface TrainSuiteOptions {
  /** Shapes per mode (default `trainPlan`). */
  plan?: (quick: boolean) => TrainPlan;
  /** Run the PyTorch peer (default true); off, the rows say "peers disabled". */
  peers?: boolean;
  /** Tune the step's matmul classes before timing (default true; cached classes are free). */
  tune?: boolean;
  /** Time the loader against the fastest step (default true). */
  loader?: boolean;
}

/** The training suite with these options. */
export function makeTrainSuite(opts: TrainSuiteOptions = {}): BenchSuite {
  return {
    name: "train",
    async run({ gpu, quick }) {
      const plan = (opts.plan ?? trainPlan)(quick);
      const rows: BenchRow[] = [];
      for (const c of plan.cases) rows.push(await trainRow(gpu, c, plan, opts));
      if (opts.loader ?? true) {
        // The most demanding consumer: the step that takes images in fastest.
        const fastest = rows.filter((r) => Number.isFinite(r.rate))
          .reduce<BenchRow | null>((a, r) => (a && a.rate! >= r.rate! ? a : r), null);
        const consumer = fastest ? { name: fastest.name, rate: fastest.rate! } : null;
        rows.push(await loaderRow(gpu, consumer, quick));
      }
      return rows;
    },
  };
}

/**
 * DinoBloom training steps (ViT-S b8, b32, the demo model) next to PyTorch CPU, and the loader
 * next to the fastest of them.
 */
export const trainSuite: BenchSuite = makeTrainSuite();
