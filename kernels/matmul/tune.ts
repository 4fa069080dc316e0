/**
 * Tuning: measures the matmul candidates worth measuring (the class's list, pruned by the cost
 * model, `cost.ts`) on the running adapter per shape class, records the fastest
 * (`autotune.ts` caches it across processes) and re-derives the adapter-wide defaults. Within a
 * time budget, classes whose predicted cost does not fit are left for a later run; the shipped
 * defaults (`../defaults.ts`) run meanwhile.
 */
import { type Autotuner, fmtSeconds, TuneBudget } from "../autotune.ts";
import type { Gpu } from "../runtime.ts";
import { predictCompileMs, pruneCandidates } from "./cost.ts";
import { matmulStrided } from "./dispatch.ts";
import {
  candidateTag,
  classDefaults,
  defaultKey,
  defaultRole,
  type MatmulShape,
  matmulTuner,
  type MatmulVariant,
  parseVariant,
  shapeClass,
  variantId,
} from "./variants.ts";

/** What `tuneMatmul` decided (or left) for one shape class. */
export interface MatmulTuning {
  key: string;
  /** The chosen variant's id; null when nothing was measured (`skipped` says why). */
  choice: string | null;
  ms: number;
  /** Best ms of every candidate measured (null: failed). */
  timings: Record<string, number | null>;
  /** True when the choice came from the cache. */
  cached: boolean;
  /** Candidates the cost model ruled out before measuring. */
  pruned: string[];
  /** Why nothing was measured: "one candidate" (nothing to choose) or "budget". */
  skipped?: "one candidate" | "budget";
}

/** Dimensions a shape is measured at, at most (the class is that of the real shape). */
export const MEASURE_CAP = 2048;

/** One shape class as tuning plans it. */
export interface MatmulTunePlan {
  key: string;
  /** The shape measured: the class's first shape with every dimension capped at MEASURE_CAP. */
  shape: MatmulShape;
  kept: MatmulVariant[];
  pruned: MatmulVariant[];
  /** Predicted run time of one call of each kept candidate (ms, uncalibrated). */
  predictedMs: number[];
  /** Whether a current record exists (nothing to measure). */
  cached: boolean;
}

/**
 * The tuning plan of these shapes on this adapter: one entry per shape class, with the
 * candidates the cost model keeps. Never measures.
 */
export function planMatmulTuning(
  gpu: Gpu,
  shapes: readonly MatmulShape[],
  opts: {
    tuner?: Autotuner<MatmulVariant>;
    candidates?: readonly MatmulVariant[];
    force?: boolean;
  } = {},
): MatmulTunePlan[] {
  const tuner = opts.tuner ?? matmulTuner();
  const d = classDefaults(gpu);
  const tag = candidateTag(gpu);
  const maxTex = gpu.limits.maxTextureDimension2D;
  const peakPerMs = d.peakGflops * 1e6;
  const plans: MatmulTunePlan[] = [];
  const seen = new Set<string>();
  for (const sh of shapes) {
    const batch = sh.batch ?? 1;
    const transA = sh.transA ?? false;
    const transB = sh.transB ?? false;
    const key = shapeClass(sh.M, sh.N, sh.K, batch, transA, transB);
    if (seen.has(key)) continue;
    seen.add(key);
    const cap = (x: number) => Math.min(x, MEASURE_CAP);
    const shape: MatmulShape = { M: cap(sh.M), N: cap(sh.N), K: cap(sh.K), batch, transA, transB };
    const p = pruneCandidates(opts.candidates ?? d.matmul.candidates, shape, d.matmul.cost, maxTex);
    const r = tuner.cache.get(gpu.adapter.name, tuner.op, key);
    const cached = !opts.force && !!r && r.tag === tag &&
      p.kept.every((v) => variantId(v) in r.timings);
    plans.push({
      key,
      shape,
      kept: p.kept,
      pruned: p.pruned,
      predictedMs: p.predicted.map((f) => f / peakPerMs),
      cached,
    });
  }
  return plans;
}

/** Predicted milliseconds to tune one planned class (compiles + warm-up + timed runs). */
export function planEtaMs(
  gpu: Gpu,
  plan: MatmulTunePlan,
  budget: TuneBudget,
  iters: number,
  compiled: ReadonlySet<string>,
): number {
  if (plan.cached || plan.kept.length < 2) return 0;
  const cost = classDefaults(gpu).matmul.cost;
  let ms = 0;
  for (const [i, v] of plan.kept.entries()) {
    if (!compiled.has(compileKey(v, plan.shape))) ms += predictCompileMs(v, cost);
    ms += (iters + 1) * budget.calibrated(plan.predictedMs[i]);
  }
  return ms;
}

function compileKey(v: MatmulVariant, s: MatmulShape): string {
  return `${variantId(v)}|${s.transA ? "T" : "N"}${s.transB ? "T" : "N"}`;
}

/** Options of `tuneMatmul`. */
export interface TuneMatmulOptions {
  tuner?: Autotuner<MatmulVariant>;
  /** Candidates instead of the class's list (still pruned by the cost model). */
  candidates?: readonly MatmulVariant[];
  /** Timed calls per candidate. */
  iters?: number;
  force?: boolean;
  /** Leave classes whose ETA does not fit for a later run (default: unbounded). */
  budget?: TuneBudget;
  /** Progress lines: what is tuned, how many candidates, the ETA. */
  log?: (line: string) => void;
  /** Numbering of the progress lines across a larger tuning ("matmul 3/7"). */
  step?: { done: number; total: number };
}

/**
 * Measures the kept candidates for each shape's class (skipping classes already tuned unless
 * `force`, and classes whose ETA overruns the budget), records the fastest, and refreshes the
 * adapter-wide defaults of each role: the candidate with the best geometric-mean slowdown over
 * every class tuned so far.
 */
export async function tuneMatmul(
  gpu: Gpu,
  shapes: readonly MatmulShape[],
  opts: TuneMatmulOptions = {},
): Promise<MatmulTuning[]> {
  const tuner = opts.tuner ?? matmulTuner();
  const budget = opts.budget ?? new TuneBudget(Infinity);
  const iters = opts.iters ?? 3;
  const tag = candidateTag(gpu);
  const plans = planMatmulTuning(gpu, shapes, opts);
  const results: MatmulTuning[] = [];
  const compiled = new Set<string>();
  const step = opts.step ?? { done: 0, total: plans.length };
  for (const plan of plans) {
    const pruned = plan.pruned.map(variantId);
    const base = { key: plan.key, ms: NaN, timings: {}, pruned };
    step.done++;
    if (plan.kept.length < 2) {
      results.push({ ...base, choice: null, cached: false, skipped: "one candidate" });
      continue;
    }
    const eta = planEtaMs(gpu, plan, budget, iters, compiled);
    if (!plan.cached && !budget.fits(eta)) {
      opts.log?.(
        `autotune [${step.done}/${step.total}] matmul ${plan.key}: left for a later run ` +
          `(ETA ${fmtSeconds(eta)}, ${fmtSeconds(budget.remainingMs())} of the budget left); ` +
          `the shipped default runs meanwhile`,
      );
      results.push({ ...base, choice: null, cached: false, skipped: "budget" });
      continue;
    }
    if (!plan.cached) {
      opts.log?.(
        `autotune [${step.done}/${step.total}] matmul ${plan.key}: ${plan.kept.length} ` +
          `candidates (${plan.pruned.length} ruled out by the cost model), ETA ${fmtSeconds(eta)}`,
      );
    }
    const { shape } = plan;
    const { M, N, K } = shape;
    const batch = shape.batch ?? 1;
    const rnd = (n: number) => {
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
      return x;
    };
    const a = gpu.tensor(rnd(batch * M * K));
    const b = gpu.tensor(rnd(batch * K * N));
    const out = gpu.empty([batch * M * N]);
    try {
      const predicted = new Map(plan.kept.map((v, i) => [v, plan.predictedMs[i]]));
      const r = await tuner.tune(
        gpu,
        plan.key,
        plan.kept,
        (variant) => () =>
          matmulStrided(gpu, {
            a,
            b,
            out,
            M,
            N,
            K,
            batch,
            transA: shape.transA ?? false,
            transB: shape.transB ?? false,
          }, { variant }),
        { iters, force: opts.force, tag },
      );
      if (!r.cached) {
        for (const v of plan.kept) {
          compiled.add(compileKey(v, shape));
          const ms = r.record.timings[variantId(v)];
          if (ms != null) budget.observe(predicted.get(v)!, ms);
        }
      }
      results.push({
        ...base,
        choice: r.record.choice,
        ms: r.record.ms,
        timings: r.record.timings,
        cached: r.cached,
      });
    } finally {
      gpu.release(a, b, out);
    }
  }
  refreshDefaults(gpu, tuner, tag);
  return results;
}

/**
 * Re-derives the adapter-wide default of each role from the current tuned classes of this
 * adapter: the candidate with the best geometric-mean slowdown over them, where a candidate
 * not measured for a class counts as 10× slower there.
 */
function refreshDefaults(gpu: Gpu, tuner: Autotuner<MatmulVariant>, tag: string): void {
  const adapter = gpu.adapter.name;
  const all = Object.entries(tuner.cache.entries(adapter, tuner.op))
    .filter(([k, r]) => !k.startsWith("default") && r.tag === tag);
  for (const role of ["general", "weightGrad"] as const) {
    // Shape class keys start with the transpose flags: "T…" is A transposed.
    const records = all.filter(([k]) => defaultRole({ transA: k[0] === "T" }) === role)
      .map(([, r]) => r);
    if (!records.length) continue;
    const ids = new Set(records.flatMap((r) => Object.keys(r.timings)));
    let best: string | null = null;
    let bestScore = Infinity;
    const scores: Record<string, number | null> = {};
    for (const id of ids) {
      if (!parseVariant(id)) continue;
      const logs = records.map((r) => Math.log((r.timings[id] ?? 10 * r.ms) / r.ms));
      const score = Math.exp(logs.reduce((x, y) => x + y, 0) / logs.length);
      scores[id] = score;
      if (score < bestScore) {
        best = id;
        bestScore = score;
      }
    }
    if (!best) continue;
    const key = defaultKey(role);
    const prev = tuner.cache.get(adapter, tuner.op, key);
    if (prev?.choice === best && prev.ms === bestScore && prev.tag === tag) continue;
    tuner.record(adapter, key, {
      choice: best,
      ms: bestScore,
      timings: scores,
      at: new Date().toISOString(),
      tag,
    });
  }
}
