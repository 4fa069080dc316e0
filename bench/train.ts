/**
 * Training-step benchmarks: bloom's whole DinoBloom step (pipelines/train/trainer.ts: teacher
 * forward and targets, student forward and backward with DINO, iBOT and KoLeo, per-module
 * clipping, AdamW, EMA, one read-back) in images/s, next to PyTorch CPU running the same step
 * (scripts/bench/torch_train_step.py), the two alternating steps with the same thread count. An image is one source image with its
 * two 224 px global crops; both sides use the same iBOT masks (batchMasks, written to .npy for
 * the peer) and DinoBloom's real heads (2048 hidden, 256 bottleneck, 65,536 prototypes).
 */
import { join } from "node:path";
import { writeNpy } from "../data/npy.ts";
import { dinobloomConfig, PRESETS, type TrainConfig } from "../pipelines/train/config.ts";
import { type BatchMasks, batchMasks, MaskingGenerator } from "../pipelines/train/masking.ts";
import { mulberry32 } from "../graph/random.ts";
import { Trainer } from "../pipelines/train/trainer.ts";
import { vitConfig } from "../graph/vit.ts";
import type { ModelPass } from "../graph/tune.ts";
import { fmtBytes } from "../kernels/pool.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { BenchRow, BenchSuite } from "./harness.ts";
import { randomTensor, tuneFor } from "./model.ts";
import { loaderRow } from "./loader.ts";
import {
  comparisonRow,
  interleave,
  ourThreads,
  peerScript,
  PeerSession,
  type PeerSkipped,
  type Rounds,
} from "./peers.ts";

/** iBOT masks for `batch` images (2·batch crops, crop-major) as the trainer's data would give. */
export function stepMasks(cfg: TrainConfig, batch: number, seed = 5): BatchMasks {
  const grid = cfg.imageSize / cfg.vit.patch;
  return batchMasks(new MaskingGenerator(grid), 2 * batch, mulberry32(seed), {
    probability: cfg.maskProbability,
    ratio: cfg.maskRatio,
  });
}

/** One pass of Trainer.step for `batch` images with `masks` (graph/tune.ts `ModelPass`). */
export function trainPass(cfg: TrainConfig, batch: number, masks: BatchMasks): ModelPass {
  const m = Math.min(cfg.microBatch, batch);
  return {
    images: 2 * m,
    image: cfg.imageSize,
    training: true,
    head: cfg.head,
    masked: maskedPerMicroBatch(masks, batch, m),
  };
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

/**
 * Bloom's step and PyTorch's (`torch_train_step.py` on the same masks, kept alive across
 * rounds) in alternating rounds with the same thread count; the trainer is freed afterwards.
 */
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
  const S = cfg.imageSize;
  const notes = [
    `${2 * B} crops ${S} px, ${cfg.head.prototypes} prototypes, ${masks.count} masked patches`,
  ];
  const micro = Math.min(cfg.microBatch, B);
  if (micro < B) notes.push(`micro-batch ${micro}`);
  const threads = ourThreads();
  const dir = await Deno.makeTempDir({ prefix: "bloom-bench-train-" });
  const file = join(dir, "masks.npy");
  await writeNpy(file, {
    dtype: "u8",
    shape: [2 * B, masks.masks.length / (2 * B)],
    data: masks.masks,
  });
  const peer: PeerSession | PeerSkipped = opts.peers ?? true
    ? await PeerSession.open(peerScript("torch_train_step.py"), [
      ...trainPeerArgs(cfg, B),
      ...["--masks", file, "--warmup", String(plan.warmup), "--threads", String(threads)],
    ], { timeoutMs: 4 * 3600_000 })
    : { ok: false, reason: "peers disabled" };
  const before = gpu.pool.stats().peakLiveBytes;
  const trainer = await Trainer.create(gpu, cfg);
  const crops = randomTensor(gpu, [2 * B, 3, S, S]);
  let rounds: Rounds;
  try {
    if (opts.tune ?? true) notes.push(await tuneFor(gpu, cfg.vit, trainPass(cfg, B, masks)));
    for (let i = 0; i < plan.warmup; i++) await trainer.step(crops, masks);
    rounds = await interleave(iters, async () => {
      const t0 = performance.now();
      await trainer.step(crops, masks);
      return performance.now() - t0;
    }, peer);
    const peak = gpu.pool.stats().peakLiveBytes;
    if (peak > before) notes.push(`pool peak ${fmtBytes(peak)}`);
  } finally {
    gpu.release(crops);
    trainer.destroy();
    await gpu.sync();
    gpu.pool.trim(0);
    if (peer instanceof PeerSession) await peer.close();
    await Deno.remove(dir, { recursive: true });
  }
  return comparisonRow(
    c.name,
    { ours: B, peer: B },
    rounds,
    "pytorch cpu",
    { ours: threads, peer: peer instanceof PeerSession ? Number(peer.info.threads) : threads },
    notes.join("; "),
  );
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
