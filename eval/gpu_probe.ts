/**
 * The linear probe with its objective on the GPU: the same model, objective
 * and solver as `LogisticRegression` (eval/logreg.ts: multinomial, L2 penalty
 * ‖W‖²/(2C) with unpenalised intercepts, C = M·c/100, scikit-learn's L-BFGS
 * stopping rules via `lbfgsAsync`), with the data term evaluated by kernels.
 *
 * X ([N, M], f32) and the one-hot targets stay on the GPU for the whole fit,
 * in row blocks that each fit one binding. Per evaluation: W and b go up
 * (c·(M+1) floats), then per block Z = X Wᵀ + b (matmul with the bias in its
 * epilogue), per-row cross-entropy and log-probabilities, P = exp(log P),
 * R = P − Y, ∇W += Rᵀ X (matmul, transA, accumulating across blocks) and
 * ∇b += Σ_rows R; back come ∇W, ∇b and the N per-row losses, which the host
 * sums in float64 and to which it adds the penalty and its gradient.
 *
 * Precision: the data term is f32 (float64 on the CPU). Gradients carry
 * ~1e-5 absolute error (sums of N f32 terms), below the solver's tolerance
 * 1e-4 on max |g|. The loss is worse for the solver: its f32 rounding
 * (~1e-7 relative, ~1e-6 absolute on the fixtures) is far above the
 * decreases near the optimum (~1e-8), where a plain line search then fails.
 * So the solver is given objective values consistent with the gradients
 * (`GradientConsistentObjective`): a change of f is measured directly when
 * it stands well above the f32 noise, and otherwise estimated by the
 * trapezoid rule along the step, ½(g₀ + g₁)·(x₁ − x₀), exact for quadratics,
 * which turns the Armijo test into Hager and Zhang's gradient-only
 * "approximate Wolfe" condition. The reported loss is that path estimate.
 */
import { spans } from "../kernels/common/split.ts";
import { addInPlace, binary, unary } from "../kernels/elementwise.ts";
import { matmul } from "../kernels/matmul/mod.ts";
import { sum } from "../kernels/reduce.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { crossEntropySoft } from "../kernels/softmax.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import type { Label } from "./labels.ts";
import { lbfgsAsync, type LbfgsOptions } from "./lbfgs.ts";
import {
  addPenalty,
  fitSetup,
  fittedState,
  LogisticRegression,
  type LogRegOptions,
  solverOptions,
} from "./logreg.ts";
import type { Matrix } from "./matrix.ts";

/** Options of `GpuLinearProbe.fit`: the CPU probe's, plus the row block size. */
export interface GpuProbeOptions extends LogRegOptions {
  /** Rows per block (default: as many as fit one binding). */
  rowBlock?: number;
}

/**
 * The probe's data term on the GPU: Σ_i log-loss_i and its gradient for
 * parameters [W (c×M row-major), b (c)]. Holds X and Y on the GPU until
 * `destroy`.
 */
export class GpuProbeObjective {
  readonly gpu: Gpu;
  readonly rows: number;
  readonly cols: number;
  readonly classes: number;
  readonly #blocks: { r0: number; x: GpuTensor; y: GpuTensor }[];
  readonly #w: GpuTensor;
  readonly #b: GpuTensor;
  readonly #gw: GpuTensor;
  readonly #gb: GpuTensor;
  readonly #losses: GpuTensor;

  private constructor(
    gpu: Gpu,
    rows: number,
    cols: number,
    classes: number,
    blocks: { r0: number; x: GpuTensor; y: GpuTensor }[],
  ) {
    this.gpu = gpu;
    this.rows = rows;
    this.cols = cols;
    this.classes = classes;
    this.#blocks = blocks;
    this.#w = gpu.zeros([classes, cols], "f32", "probe-w");
    this.#b = gpu.zeros([classes], "f32", "probe-b");
    this.#gw = gpu.zeros([classes, cols], "f32", "probe-gw");
    this.#gb = gpu.zeros([classes], "f32", "probe-gb");
    this.#losses = gpu.zeros([rows], "f32", "probe-losses");
  }

  /** Uploads X ([N, M]) and one-hot targets of the class `codes` (< c). */
  static create(
    gpu: Gpu,
    x: Matrix,
    codes: Int32Array,
    classes: number,
    rowBlock?: number,
  ): GpuProbeObjective {
    const { rows, cols } = x;
    if (codes.length !== rows) {
      throw new RangeError(`GpuProbeObjective: ${codes.length} labels for ${rows} rows`);
    }
    const limit = Math.floor(gpu.limits.maxStorageBufferBindingSize / 4);
    if (cols > limit) throw new RangeError(`GpuProbeObjective: ${cols} features exceed a binding`);
    const block = Math.max(1, Math.min(rowBlock ?? Infinity, Math.floor(limit / cols), rows));
    const xf = x.data instanceof Float32Array ? x.data : Float32Array.from(x.data);
    const blocks: { r0: number; x: GpuTensor; y: GpuTensor }[] = [];
    try {
      for (const { start: r0, count: n } of spans(rows, block)) {
        const y = new Float32Array(n * classes);
        for (let i = 0; i < n; i++) y[i * classes + codes[r0 + i]] = 1;
        blocks.push({
          r0,
          x: gpu.tensor(xf.subarray(r0 * cols, (r0 + n) * cols), [n, cols], "probe-x"),
          y: gpu.tensor(y, [n, classes], "probe-y"),
        });
      }
    } catch (e) {
      gpu.release(...blocks.flatMap((b) => [b.x, b.y]));
      throw e;
    }
    return new GpuProbeObjective(gpu, rows, cols, classes, blocks);
  }

  /** Σ log-loss at `params`, writing its gradient (data term only) into `grad`. */
  async evaluate(params: Float64Array, grad: Float64Array): Promise<number> {
    const gpu = this.gpu;
    const c = this.classes;
    const nW = c * this.cols;
    gpu.write(this.#w, Float32Array.from(params.subarray(0, nW)));
    gpu.write(this.#b, Float32Array.from(params.subarray(nW, nW + c)));
    gpu.clear(this.#gw);
    gpu.clear(this.#gb);
    for (const blk of this.#blocks) {
      const z = matmul(gpu, blk.x, this.#w, { transB: true, bias: this.#b });
      const { loss, logp } = crossEntropySoft(gpu, z, blk.y);
      const p = unary(gpu, "exp", logp);
      const r = binary(gpu, "sub", p, blk.y);
      matmul(gpu, r, blk.x, { transA: true, accumulate: this.#gw });
      const rb = sum(gpu, r, { axis: 0 });
      addInPlace(gpu, this.#gb, rb);
      gpu.copy(loss, { buffer: this.#losses.buffer, offset: blk.r0 * 4, size: loss.size });
      gpu.release(z, loss, logp, p, r, rb);
    }
    const [gw, gb, losses] = await gpu.readMany([this.#gw, this.#gb, this.#losses]);
    grad.set(gw as Float32Array, 0);
    grad.set(gb as Float32Array, nW);
    let f = 0;
    for (let i = 0; i < losses.length; i++) f += losses[i];
    return f;
  }

  /** Frees every GPU buffer. */
  destroy(): void {
    this.gpu.release(
      ...this.#blocks.flatMap((b) => [b.x, b.y]),
      this.#w,
      this.#b,
      this.#gw,
      this.#gb,
      this.#losses,
    );
  }
}

/** What a gradient-consistent objective keeps of an evaluated point. */
interface Point {
  x: Float64Array;
  g: Float64Array;
  /** The objective as measured (f32 noise included). */
  measured: number;
  /** The value handed to the solver. */
  value: number;
}

/**
 * Wraps a noisy objective (f with absolute noise far above its changes near
 * the optimum, accurate gradient) so that the values the solver sees change
 * consistently with the gradients. Values are taken relative to a base
 * point, the solver's current iterate: `accept()` (called from the solver's
 * `onIteration`, when the last evaluated point has become the iterate)
 * moves the base there. Changes larger than `noise` are measured; smaller
 * ones come from the trapezoid rule along the segment from the base.
 */
export class GradientConsistentObjective {
  readonly #fg: (x: Float64Array, g: Float64Array) => Promise<number>;
  readonly #noise: (f: number) => number;
  #base: Point | null = null;
  #last: Point | null = null;

  /** `noise(f)` bounds the measurement error of f near the value f. */
  constructor(
    fg: (x: Float64Array, g: Float64Array) => Promise<number>,
    noise: (f: number) => number,
  ) {
    this.#fg = fg;
    this.#noise = noise;
  }

  /** The value for the solver at `x` (gradient into `g`). */
  async evaluate(x: Float64Array, g: Float64Array): Promise<number> {
    const measured = await this.#fg(x, g);
    const base = this.#base;
    let value = measured;
    if (base) {
      const direct = measured - base.measured;
      if (Math.abs(direct) <= this.#noise(base.measured)) {
        let trap = 0;
        for (let i = 0; i < x.length; i++) trap += (base.g[i] + g[i]) * (x[i] - base.x[i]);
        value = base.value + 0.5 * trap;
      } else value = base.value + direct;
    }
    this.#last = { x: x.slice(), g: g.slice(), measured, value };
    if (!base) this.#base = this.#last;
    return value;
  }

  /** Makes the last evaluated point the base (the solver accepted it). */
  accept(): void {
    if (this.#last) this.#base = this.#last;
  }
}

/**
 * The linear probe with its objective on the GPU: the same objective and
 * solver as `LogisticRegression.fit`, and the same fitted model.
 */
export class GpuLinearProbe {
  /** Fits the probe on `train` ([N, M]) with one label per row; X stays on `gpu` meanwhile. */
  static async fit(
    gpu: Gpu,
    train: Matrix,
    labels: readonly Label[],
    opts: GpuProbeOptions = {},
  ): Promise<LogisticRegression> {
    const p = fitSetup(train, labels, opts, "GpuLinearProbe");
    const { codes, c, m, C } = p;
    const obj = GpuProbeObjective.create(gpu, train, codes, c, opts.rowBlock);
    // f32 rounding of Σ log-loss: ~1e-7 relative per term, 1e-5 relative is a safe bound.
    const consistent = new GradientConsistentObjective(async (w, g) => {
      const f = await obj.evaluate(w, g);
      return f + addPenalty(w, g, c * m, C);
    }, (f) => 1e-5 * Math.max(1, Math.abs(f)));
    const solver: LbfgsOptions = {
      ...solverOptions(opts),
      onIteration: (info) => {
        consistent.accept();
        opts.onIteration?.(info);
      },
    };
    try {
      const res = await lbfgsAsync(
        (w, g) => consistent.evaluate(w, g),
        new Float64Array(c * m + c),
        solver,
      );
      return LogisticRegression.fromState(fittedState(p, res));
    } finally {
      obj.destroy();
    }
  }
}
