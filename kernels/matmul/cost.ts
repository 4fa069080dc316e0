/**
 * The matmul cost model: predicts, before anything is measured, how long each candidate takes
 * on a shape on this adapter class (in FLOPs at the adapter's FMA peak), so tuning never
 * measures a candidate that cannot win, and can say how long it will take. Its numbers are the
 * class's (`../defaults.ts`); it only has to rank candidates, not time them.
 *
 * Model: 2·M'·N'·K / efficiency, where M', N' are M, N rounded up to the workgroup's output
 * block (edge blocks compute padding), efficiency is the family's fraction of the peak for the
 * invocation's register block, plus the `tex` kernel's copies of A and B into textures.
 */
import type { MatmulCostModel } from "../defaults.ts";
import { blockOf, type MatmulShape, type MatmulVariant } from "./variants.ts";

/** Fraction of the FMA peak a variant reaches on large shapes of this class. */
export function blockEfficiency(v: MatmulVariant, m: MatmulCostModel): number {
  if (v.kind === "tiled") return m.tiled;
  const f = v.kind === "tex" ? m.tex : m.reg;
  return Math.min(f.cap, (f.slope * v.tm * v.tn) / (v.tm + v.tn));
}

/**
 * Whether the `tex` kernel runs a contiguous multiply of this shape (the dispatch's
 * `texEligible` for densely packed operands); elsewhere a `tex` variant runs the `reg` kernel.
 */
export function texRunsShape(s: MatmulShape, maxTexture: number): boolean {
  const { N, K } = s;
  const rows = (ld: number) => (ld * 4) % 256 === 0;
  if ((s.batch ?? 1) !== 1 || s.transA || K % 4 !== 0 || K / 4 > maxTexture || !rows(K)) {
    return false;
  }
  return s.transB
    ? N <= maxTexture
    : N % 4 === 0 && rows(N) && N / 4 <= maxTexture && K <= maxTexture;
}

/** Predicted cost of one call, in FLOPs at the FMA peak (divide by the peak for time). */
export function predictFlops(
  v: MatmulVariant,
  s: MatmulShape,
  m: MatmulCostModel,
  maxTexture: number,
): number {
  const batch = s.batch ?? 1;
  const kind = v.kind === "tex" && !texRunsShape(s, maxTexture) ? "reg" : v.kind;
  const run: MatmulVariant = kind === v.kind ? v : {
    kind: "reg",
    tm: Math.min((v as { tm: number }).tm, 16),
    tn: Math.min((v as { tn: number }).tn, 16),
    wgm: 8,
    wgn: 2,
  };
  const b = blockOf(run);
  const padded = Math.ceil(s.M / b.rows) * b.rows * Math.ceil(s.N / b.cols) * b.cols;
  let flops = (2 * batch * padded * Math.max(s.K, 1)) / blockEfficiency(run, m);
  if (run.kind === "tex") flops += m.texCopyFlops * (s.M + s.N) * s.K;
  return flops;
}

/** Predicted pipeline compile time of a variant on this class (ms; cold shader cache). */
export function predictCompileMs(v: MatmulVariant, m: MatmulCostModel): number {
  return m.compileMsPerOutput * v.tm * v.tn;
}

/** The candidates worth measuring on a shape, and those the model rules out. */
export interface Pruned {
  kept: MatmulVariant[];
  pruned: MatmulVariant[];
  /** Predicted FLOPs of each kept candidate, in `kept` order. */
  predicted: number[];
}

/**
 * Keeps the candidates predicted within `slack` × the best prediction (the model is rough:
 * 1.3 leaves room for its errors while dropping families that are several times slower).
 * Candidates equivalent on this shape (a `tex` variant that would run the `reg` kernel, a
 * split-K variant on a short sum) are dropped as duplicates.
 */
export function pruneCandidates(
  candidates: readonly MatmulVariant[],
  s: MatmulShape,
  m: MatmulCostModel,
  maxTexture: number,
  slack = 1.3,
): Pruned {
  const usable = candidates.filter((v) => {
    if (v.kind === "tex" && !texRunsShape(s, maxTexture)) return false;
    if (v.kind === "reg" && v.kChunk && s.K <= v.kChunk) return false;
    return true;
  });
  const costs = usable.map((v) => predictFlops(v, s, m, maxTexture));
  const best = Math.min(...costs);
  const kept: MatmulVariant[] = [];
  const predicted: number[] = [];
  const pruned: MatmulVariant[] = candidates.filter((v) => !usable.includes(v));
  for (const [i, v] of usable.entries()) {
    if (costs[i] <= slack * best) {
      kept.push(v);
      predicted.push(costs[i]);
    } else pruned.push(v);
  }
  return { kept, pruned, predicted };
}
