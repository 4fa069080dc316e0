/**
 * The linear probe: multinomial logistic regression with an L2 penalty, as
 * scikit-learn 1.2 fits it with `LogisticRegression(multi_class=
 * "multinomial", solver="lbfgs", max_iter=1000, C=…)`.
 *
 * Objective (scikit-learn's scaling, so its `tol` means the same here):
 *   f(W, b) = Σ_i [logsumexp(z_i) − z_{i,y_i}] + ‖W‖² / (2C),  z_i = W x_i + b,
 * i.e. C·Σ log-loss + ½‖W‖² divided by C. The intercepts b are not
 * penalised. Gradient: ∇_W = (P − Y)ᵀ X + W / C, ∇_b = Σ_i (p_i − y_i).
 * All c classes get a row of W (no reference class). Because every
 * gradient's intercept block sums to zero over classes and the start is 0,
 * Σ_k b_k stays 0, which fixes the intercepts' free constant the same way
 * scikit-learn's run does; at the optimum Σ_k W_k = 0 too.
 *
 * Two classes: the same multinomial model (scikit-learn keeps only row 1 of
 * W, which at the optimum is minus row 0; its probabilities are the same).
 *
 * Cost: one objective + gradient evaluation streams X once, in blocks of
 * rows (logits by 4×4-tiled dot products, softmax, then the block's share
 * of (P − Y)ᵀ X while it is in cache): 2·N·M·c multiply-adds.
 */
import { addRtX, dotBlock } from "./blas.ts";
import { encodeLabels, type Label } from "./labels.ts";
import {
  lbfgs,
  lbfgsAsync,
  type LbfgsOptions,
  type LbfgsResult,
  type StopReason,
} from "./lbfgs.ts";
import { type EvalThreads, splitRange } from "./threads.ts";
import { type Matrix, sameCols, toFloat64 } from "./matrix.ts";

/**
 * The probe's inverse regularisation strength, `C = M·c / 100` (M feature
 * dimension, c classes), as in the reference evaluation code (docs/evaluation.md).
 * The paper's text says n (training samples) instead of M; the code is what
 * produced the tables.
 */
export function probeC(featureDim: number, nClasses: number): number {
  return (featureDim * nClasses) / 100;
}

/** Options of `LogisticRegression.fit`. */
export interface LogRegOptions {
  /** Inverse L2 strength. Default `probeC(M, c)`. */
  C?: number;
  /** scikit-learn's `max_iter`. Default 1000. */
  maxIter?: number;
  /** scikit-learn's `tol`: max |gradient| at which to stop. Default 1e-4. */
  tol?: number;
  /** scipy's relative-decrease stop; default 2.2e-9 as in scipy, 0 to disable. */
  ftol?: number;
  /** L-BFGS memory. Default 10. */
  memory?: number;
  /** Progress callback, after each iteration. */
  onIteration?: LbfgsOptions["onIteration"];
}

/** Rows per block of the fused objective pass (the block of X stays in cache). */
const ROW_BLOCK = 64;

/**
 * The scikit-learn objective and its gradient at `params` = [W (c×M row-major), b (c)],
 * writing the gradient into `grad`. `x` is [n, m] row-major, `codes` the class of each row.
 */
export function multinomialLossGrad(
  x: Float64Array,
  n: number,
  m: number,
  codes: Int32Array,
  c: number,
  C: number,
  params: Float64Array,
  grad: Float64Array,
): number {
  grad.fill(0);
  const loss = dataLossGrad(x, 0, n, m, codes, c, params, grad);
  return loss + addPenalty(params, grad, c * m, C);
}

/**
 * The data term over rows [r0, r1): returns Σ log-loss and *adds* its
 * gradient into `grad` (same layout as `params`). The penalty is separate
 * (`addPenalty`) so row ranges can be summed across threads.
 */
export function dataLossGrad(
  x: Float64Array,
  r0: number,
  r1: number,
  m: number,
  codes: Int32Array,
  c: number,
  params: Float64Array,
  grad: Float64Array,
): number {
  const W = params.subarray(0, c * m);
  const b = params.subarray(c * m, c * m + c);
  const gW = grad.subarray(0, c * m);
  const gb = grad.subarray(c * m, c * m + c);
  const z = new Float64Array(ROW_BLOCK * c);
  let loss = 0;
  for (let s0 = r0; s0 < r1; s0 += ROW_BLOCK) {
    const s1 = Math.min(s0 + ROW_BLOCK, r1);
    dotBlock(x, s0, s1, W, 0, c, m, z, c);
    for (let i = s0; i < s1; i++) {
      const o = (i - s0) * c;
      let zmax = -Infinity;
      for (let k = 0; k < c; k++) {
        const v = z[o + k] + b[k];
        z[o + k] = v;
        if (v > zmax) zmax = v;
      }
      const y = codes[i];
      const zy = z[o + y] - zmax;
      let sum = 0;
      for (let k = 0; k < c; k++) {
        const e = Math.exp(z[o + k] - zmax);
        z[o + k] = e;
        sum += e;
      }
      // log-loss = logsumexp(z) − z_y, with the max shifted out (no overflow, no log 0).
      loss += Math.log(sum) - zy;
      for (let k = 0; k < c; k++) {
        const r = z[o + k] / sum - (k === y ? 1 : 0); // residual p − y
        z[o + k] = r;
        gb[k] += r;
      }
    }
    addRtX(z, c, x, s0, s1, m, gW);
  }
  return loss;
}

/** Adds ‖W‖²/(2C)'s gradient W/C into `grad` and returns the penalty (W = the first `nW` params). */
export function addPenalty(
  params: Float64Array,
  grad: Float64Array,
  nW: number,
  C: number,
): number {
  let wsq = 0;
  for (let i = 0; i < nW; i++) {
    wsq += params[i] * params[i];
    grad[i] += params[i] / C;
  }
  return wsq / (2 * C);
}

/** The checked labels, classes and C of a fit. */
export interface FitSetup {
  n: number;
  m: number;
  classes: Label[];
  codes: Int32Array;
  c: number;
  C: number;
}

/**
 * Checks a fit's inputs (a label per row, at least 2 classes, a positive
 * finite C) and encodes the labels; `who` names the fitter in errors (the
 * GPU probe checks the same way).
 */
export function fitSetup(
  train: Matrix,
  labels: readonly Label[],
  opts: LogRegOptions,
  who = "LogisticRegression",
): FitSetup {
  if (labels.length !== train.rows) {
    throw new RangeError(`${who}: ${labels.length} labels for ${train.rows} training rows`);
  }
  const { classes, codes } = encodeLabels(labels, undefined, `${who}: labels`);
  const c = classes.length;
  if (c < 2) {
    throw new RangeError(
      `${who}: needs at least 2 classes, the labels hold only ${JSON.stringify(classes)}`,
    );
  }
  const m = train.cols;
  const C = opts.C ?? probeC(m, c);
  if (!(C > 0) || !Number.isFinite(C)) {
    throw new RangeError(`${who}: C=${C} must be a positive finite number`);
  }
  return { n: train.rows, m, classes, codes, c, C };
}

/** A fit's inputs, checked, with X in float64. */
function prepare(
  train: Matrix,
  labels: readonly Label[],
  opts: LogRegOptions,
): FitSetup & { x: Float64Array } {
  return { ...fitSetup(train, labels, opts), x: toFloat64(train) };
}

/** The L-BFGS settings of a fit (scikit-learn's defaults). */
export function solverOptions(opts: LogRegOptions): LbfgsOptions {
  return {
    maxIter: opts.maxIter ?? 1000,
    gtol: opts.tol ?? 1e-4,
    ftol: opts.ftol,
    memory: opts.memory,
    onIteration: opts.onIteration,
  };
}

/** The fitted state from the solver's result. */
export function fittedState(p: FitSetup, res: LbfgsResult): LogRegState {
  let gradMax = 0;
  for (const v of res.grad) gradMax = Math.max(gradMax, Math.abs(v));
  return {
    classes: p.classes,
    nFeatures: p.m,
    coef: res.x.slice(0, p.c * p.m),
    intercept: res.x.slice(p.c * p.m),
    C: p.C,
    iterations: res.iterations,
    evaluations: res.evaluations,
    converged: res.converged,
    reason: res.reason,
    loss: res.f,
    gradMax,
  };
}

/** The fitted state (what `LogisticRegression` exposes, without methods). */
export type LogRegState = Omit<LogisticRegression, "decisionFunction" | "predictProba" | "predict">;

/** A fitted multinomial logistic regression. */
export class LogisticRegression {
  /** Class labels, sorted (`classes_`). */
  readonly classes: Label[];
  /** Feature dimension M. */
  readonly nFeatures: number;
  /** [c, M] row-major weights (`coef_`, all c rows). */
  readonly coef: Float64Array;
  /** [c] intercepts (`intercept_`). */
  readonly intercept: Float64Array;
  /** The C used. */
  readonly C: number;
  /** L-BFGS iterations (`n_iter_`). */
  readonly iterations: number;
  /** Objective evaluations. */
  readonly evaluations: number;
  /** Whether a tolerance (not maxIter) stopped the solver. */
  readonly converged: boolean;
  /** Which test stopped it. */
  readonly reason: StopReason;
  /** Objective value at the solution. */
  readonly loss: number;
  /** max |gradient| at the solution. */
  readonly gradMax: number;

  private constructor(init: LogRegState) {
    this.classes = init.classes;
    this.nFeatures = init.nFeatures;
    this.coef = init.coef;
    this.intercept = init.intercept;
    this.C = init.C;
    this.iterations = init.iterations;
    this.evaluations = init.evaluations;
    this.converged = init.converged;
    this.reason = init.reason;
    this.loss = init.loss;
    this.gradMax = init.gradMax;
  }

  /** A model from a solver's result (the GPU probe solves the same objective elsewhere). */
  static fromState(state: LogRegState): LogisticRegression {
    return new LogisticRegression(state);
  }

  /** Fits the probe on `train` ([n, M]) with one label per row, on this thread. */
  static fit(
    train: Matrix,
    labels: readonly Label[],
    opts: LogRegOptions = {},
  ): LogisticRegression {
    const p = prepare(train, labels, opts);
    const { x, n, m, codes, c, C } = p;
    const res = lbfgs(
      (w, g) => multinomialLossGrad(x, n, m, codes, c, C, w, g),
      new Float64Array(c * m + c),
      solverOptions(opts),
    );
    return new LogisticRegression(fittedState(p, res));
  }

  /**
   * `fit` with the objective's rows spread over worker threads (the same
   * solution up to rounding: partial sums are added in thread order).
   */
  static async fitThreaded(
    train: Matrix,
    labels: readonly Label[],
    threads: EvalThreads,
    opts: LogRegOptions = {},
  ): Promise<LogisticRegression> {
    const p = prepare(train, labels, opts);
    const { n, m, c, C } = p;
    const size = c * m + c;
    const ranges = splitRange(n, threads.size);
    const x = await threads.share(p.x);
    const codes = await threads.share(p.codes);
    const params = await threads.share(new Float64Array(size));
    const grads = await threads.share(new Float64Array(size * ranges.length));
    try {
      const res = await lbfgsAsync(
        async (w, g) => {
          params.array.set(w);
          const losses = await Promise.all(ranges.map(([r0, r1], slot) =>
            threads.call(slot, {
              op: "lossgrad",
              x: x.id,
              codes: codes.id,
              params: params.id,
              grad: grads.id,
              slot,
              r0,
              r1,
              m,
              c,
            })
          ));
          g.fill(0);
          let loss = 0;
          for (let slot = 0; slot < ranges.length; slot++) {
            loss += losses[slot];
            const part = grads.array.subarray(slot * size, (slot + 1) * size);
            for (let i = 0; i < size; i++) g[i] += part[i];
          }
          return loss + addPenalty(w, g, c * m, C);
        },
        new Float64Array(size),
        solverOptions(opts),
      );
      return new LogisticRegression(fittedState(p, res));
    } finally {
      await threads.free(x, codes, params, grads);
    }
  }

  /** Logits [n, c] = X Wᵀ + b. */
  decisionFunction(x: Matrix): Float64Array {
    sameCols({ data: x.data, rows: 0, cols: this.nFeatures }, x, "LogisticRegression");
    const c = this.classes.length;
    const out = new Float64Array(x.rows * c);
    dotBlock(toFloat64(x), 0, x.rows, this.coef, 0, c, this.nFeatures, out, c);
    for (let i = 0; i < x.rows; i++) {
      for (let k = 0; k < c; k++) out[i * c + k] += this.intercept[k];
    }
    return out;
  }

  /** Class probabilities [n, c] (softmax of the logits), `predict_proba`. */
  predictProba(x: Matrix): Float64Array {
    const c = this.classes.length;
    const z = this.decisionFunction(x);
    for (let i = 0; i < x.rows; i++) {
      const o = i * c;
      let zmax = -Infinity;
      for (let k = 0; k < c; k++) zmax = Math.max(zmax, z[o + k]);
      let sum = 0;
      for (let k = 0; k < c; k++) sum += z[o + k] = Math.exp(z[o + k] - zmax);
      for (let k = 0; k < c; k++) z[o + k] /= sum;
    }
    return z;
  }

  /** Most probable class per row; ties go to the smallest class index (`np.argmax`). */
  predict(x: Matrix): Label[] {
    const c = this.classes.length;
    const z = this.decisionFunction(x);
    const out: Label[] = [];
    for (let i = 0; i < x.rows; i++) {
      let best = 0;
      for (let k = 1; k < c; k++) if (z[i * c + k] > z[i * c + best]) best = k;
      out.push(this.classes[best]);
    }
    return out;
  }
}
