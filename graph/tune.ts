/**
 * Autotuning for a model: measures the kernel variants on the running adapter
 * for what a ViT pass runs (every linear layer, with the DINO/iBOT heads and
 * the backward when training; its attention; the row kernels), within a time
 * budget, and caches the choices (kernels/autotune.ts). Until a shape is tuned
 * the shipped defaults of the adapter's class run (kernels/defaults.ts), so a
 * first run starts at near-tuned speed without waiting for tuning.
 *
 * The one list of a model's matmul shapes lives here (`modelMatmulShapes`):
 * the train and embed commands tune it, and the benchmarks tune and check
 * the same list.
 */
import { adapterClass } from "../kernels/adapters.ts";
import { tuneAttention } from "../kernels/attention.ts";
import { fmtSeconds, TuneBudget } from "../kernels/autotune.ts";
import { ROW_CAP_KEY, rowTuner } from "../kernels/common/rows.ts";
import type { BindingLimits } from "../kernels/common/split.ts";
import { classDefaults } from "../kernels/defaults.ts";
import {
  type MatmulShape,
  planEtaMs,
  planMatmulTuning,
  tuneMatmul,
} from "../kernels/matmul/mod.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { tuneRowKernels } from "../kernels/softmax.ts";
import type { HeadConfig } from "./heads.ts";
import { weightGradSpans } from "./rules.ts";
import type { VitConfig } from "./vit.ts";

// ------------------------------------------------------------------ linear layers

/** One linear layer as the graph runs it: `rows` input rows of `inDim` → `outDim`. */
export interface LinearUse {
  rows: number;
  inDim: number;
  outDim: number;
  /** Whether backward needs the input's gradient (false for the patch embedding: pixels). */
  inputGrad: boolean;
}

/** Patch grid and tokens per image of a ViT at `image` px. */
export function tokenCounts(cfg: VitConfig, image: number): { patches: number; tokens: number } {
  const g = Math.floor(image / cfg.patch);
  if (g < 1) throw new RangeError(`image ${image} px is smaller than one ${cfg.patch} px patch`);
  return { patches: g * g, tokens: 1 + cfg.registers + g * g };
}

/** Every linear layer of a ViT forward over `images` images (one entry per distinct shape). */
export function vitLinears(cfg: VitConfig, images: number, image: number): LinearUse[] {
  const { patches, tokens } = tokenCounts(cfg, image);
  const D = cfg.dim;
  const H = cfg.mlpHidden;
  const rows = images * tokens;
  return [
    { rows: images * patches, inDim: 3 * cfg.patch * cfg.patch, outDim: D, inputGrad: false },
    { rows, inDim: D, outDim: 3 * D, inputGrad: true },
    { rows, inDim: D, outDim: D, inputGrad: true },
    { rows, inDim: D, outDim: cfg.ffn === "mlp" ? H : 2 * H, inputGrad: true },
    { rows, inDim: H, outDim: D, inputGrad: true },
  ];
}

/** The four linear layers of a DINO/iBOT head applied to `rows` rows. */
export function headLinears(head: HeadConfig, rows: number): LinearUse[] {
  return [
    { rows, inDim: head.inDim, outDim: head.hidden, inputGrad: true },
    { rows, inDim: head.hidden, outDim: head.hidden, inputGrad: true },
    { rows, inDim: head.hidden, outDim: head.bottleneck, inputGrad: true },
    { rows, inDim: head.bottleneck, outDim: head.prototypes, inputGrad: true },
  ];
}

/**
 * Row counts of the blocks the weight gradient dyᵀ·x is summed over (the linear rule's
 * `weightGradSpans`), so that tuning sees the K the kernels run.
 */
export function weightGradBlocks(
  rows: number,
  inDim: number,
  outDim: number,
  limits: BindingLimits,
): number[] {
  return weightGradSpans(limits, rows, outDim, inDim).map((c) => c.count);
}

/**
 * The matmul shapes these linears run (graph/rules.ts `linear`): forward x·Wᵀ; with
 * `training`, also dx = dy·W (where the input needs a gradient) and dW = dyᵀ·x, the latter
 * over row blocks where `limits` force a split. Sorted by work, so that tuning measures each
 * shape class on its cheapest member.
 */
export function linearMatmulShapes(
  uses: readonly LinearUse[],
  training: boolean,
  limits?: BindingLimits,
): MatmulShape[] {
  const out: MatmulShape[] = [];
  for (const u of uses) {
    if (u.rows === 0) continue;
    out.push({ M: u.rows, N: u.outDim, K: u.inDim, transB: true });
    if (!training) continue;
    if (u.inputGrad) out.push({ M: u.rows, N: u.inDim, K: u.outDim });
    const blocks = limits ? weightGradBlocks(u.rows, u.inDim, u.outDim, limits) : [u.rows];
    for (const k of new Set(blocks)) out.push({ M: u.outDim, N: u.inDim, K: k, transA: true });
  }
  return byWork(out);
}

function byWork(shapes: MatmulShape[]): MatmulShape[] {
  return shapes.sort((a, b) => a.M * a.N * a.K - b.M * b.N * b.K);
}

// ------------------------------------------------------------------ a model pass

/** What one pass of a model runs. */
export interface ModelPass {
  /** Images per forward (and backward) pass: a training pass has 2 global crops per image. */
  images: number;
  /** Image side in pixels. */
  image: number;
  /** Forward and backward (the trainer: the teacher's forward, the student's both). */
  training: boolean;
  /** The DINO/iBOT heads, run on the CLS row of every image and on the masked tokens. */
  head?: HeadConfig;
  /** Masked tokens per pass the iBOT head runs on, one entry per count to cover. */
  masked?: readonly number[];
}

/**
 * Every matmul shape one pass of `vit` (and its heads) runs, sorted by work;
 * with `limits`, the weight gradients follow the linear rule's split.
 */
export function modelMatmulShapes(
  vit: VitConfig,
  pass: ModelPass,
  limits?: BindingLimits,
): MatmulShape[] {
  const uses = vitLinears(vit, pass.images, pass.image);
  if (pass.head) {
    uses.push(...headLinears(pass.head, pass.images));
    for (const m of pass.masked ?? []) uses.push(...headLinears(pass.head, m));
  }
  return linearMatmulShapes(uses, pass.training, limits);
}

/**
 * The masked tokens a training pass of `crops` crops of `patches` patches
 * expects: iBOT masks a `probability` share of the crops, each at a ratio
 * drawn across `ratio` (pipelines/train/masking.ts), so about their product.
 */
export function expectedMaskedTokens(
  crops: number,
  patches: number,
  masking: { probability: number; ratio: readonly [number, number] },
): number {
  const [lo, hi] = masking.ratio;
  return Math.round(Math.floor(crops * masking.probability) * patches * (lo + hi) / 2);
}

/** What `tuneForVit` measured. */
export interface TuneReport {
  /** Matmul shape classes the pass runs. */
  matmulClasses: number;
  /** Kernel shapes measured now (0: everything was cached, or the defaults suffice). */
  measured: number;
  /** Kernel shapes left for a later run because the budget ran out. */
  deferred: number;
  seconds: number;
}

/**
 * Default tuning budget: a first run on a new machine starts its real work within this many
 * seconds of tuning (the shipped defaults run meanwhile, and later runs continue the tuning).
 */
export const DEFAULT_TUNE_BUDGET_MS = 10_000;

/** Options of `tuneForVit` besides the pass. */
export interface TuneForVitOptions {
  /** Progress lines: what is tuned, how many candidates, the ETA, what is left. */
  log?: (s: string) => void;
  /** Milliseconds of tuning at most (default `DEFAULT_TUNE_BUDGET_MS`; Infinity: all). */
  budgetMs?: number;
}

/**
 * Tunes what a pass of `cfg` runs (`modelMatmulShapes`, its attention, the row kernels) within
 * a time budget: the adapter class's shipped defaults (kernels/defaults.ts) run where nothing
 * is tuned; the cost model prunes candidates that cannot win before anything is measured; the
 * cheapest shape classes are measured first, and what does not fit is left for a later run.
 * Results are cached per adapter: a second call measures nothing new.
 */
export async function tuneForVit(
  gpu: Gpu,
  cfg: VitConfig,
  pass: ModelPass & TuneForVitOptions,
): Promise<TuneReport> {
  const t0 = performance.now();
  const budget = new TuneBudget(pass.budgetMs ?? DEFAULT_TUNE_BUDGET_MS);
  const log = pass.log;
  const shapes = modelMatmulShapes(cfg, pass, gpu.limits);
  const plans = planMatmulTuning(gpu, shapes);
  const attentionOps = pass.training ? (["fwd", "dq", "dkv"] as const) : (["fwd"] as const);
  const rowsTuned = rowTuner().lookup(gpu.adapter.name, ROW_CAP_KEY) !== undefined;
  const todo = plans.filter((p) => !p.cached && p.kept.length > 1);
  const d = classDefaults(gpu);
  if (todo.length > 0 || !rowsTuned) {
    const kept = todo.reduce((n, p) => n + p.kept.length, 0);
    const pruned = todo.reduce((n, p) => n + p.pruned.length, 0);
    const eta = todo.reduce((t, p) => t + planEtaMs(gpu, p, budget, 3, new Set()), 0);
    log?.(
      `autotune on ${gpu.adapter.name} (${adapterClass(gpu.adapter)} class; shipped defaults ` +
        `${d.measured ? "measured" : "unmeasured"} for it run until tuned): ` +
        `${todo.length} of ${plans.length} matmul shape classes to tune, ${kept} candidates ` +
        `(${pruned} ruled out by the cost model), attention ${attentionOps.join("/")}, row ` +
        `kernels; matmul ETA ${fmtSeconds(eta)}, budget ${fmtSeconds(budget.totalMs)}`,
    );
  }
  const step = { done: 0, total: plans.length + attentionOps.length + 1 };
  const mm = await tuneMatmul(gpu, shapes, { budget, log, step });
  // Batch ≥ 4: with one image the many-rows-per-invocation variants get too few workgroups.
  const at = await tuneAttention(gpu, {
    batch: Math.min(pass.images, 4),
    tokens: tokenCounts(cfg, pass.image).tokens,
    heads: cfg.heads,
    headDim: cfg.dim / cfg.heads,
  }, { ops: attentionOps, budget, log, step });
  step.done++;
  let rowsMeasured = 0;
  if (!rowsTuned) {
    // Four caps × two probes, ~2–3 s on llvmpipe.
    const eta = d.measured && ["software", "swiftshader"].includes(adapterClass(gpu.adapter))
      ? 3000
      : 1000;
    if (budget.fits(eta)) {
      log?.(`autotune [${step.done}/${step.total}] row kernels: 4 caps, ETA ${fmtSeconds(eta)}`);
      await tuneRowKernels(gpu);
      rowsMeasured = 1;
    }
  }
  const measured = mm.filter((r) => r.choice !== null && !r.cached).length +
    at.tunings.filter((r) => !r.cached).length + rowsMeasured;
  const deferred = mm.filter((r) => r.skipped === "budget").length +
    (!rowsTuned && !rowsMeasured ? 1 : 0);
  const seconds = (performance.now() - t0) / 1000;
  if (measured > 0 || deferred > 0) {
    log?.(
      `autotune: measured ${measured} kernel shapes for ${gpu.adapter.name} in ` +
        `${seconds.toFixed(1)} s (cached for later runs)` +
        (deferred ? `; ${deferred} left for later runs (the shipped defaults run for them)` : ""),
    );
  }
  return { matmulClasses: mm.length, measured, deferred, seconds };
}
