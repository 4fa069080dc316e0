/**
 * The matmul reference on the host: float64 accumulation, numpy batch
 * broadcasting and the same epilogue, with GELU from `../gelu.ts`.
 */
import { geluRef } from "../gelu.ts";
import { broadcastShapes } from "../common/shape.ts";
import { numel } from "../tensor.ts";
import { batchStrides } from "./dispatch.ts";

/** Host-side options of `matmulRef` (the same epilogue on plain arrays). */
export interface MatmulRefOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  bias?: Float32Array;
  activation?: "none" | "gelu";
  scale?: Float32Array;
  residual?: Float32Array;
  accumulate?: Float32Array;
}

/**
 * The definition on the host: float64 accumulation, numpy batch broadcasting, the same
 * epilogue (bias, exact GELU, LayerScale, residual, accumulate). Returns the new output.
 */
export function matmulRef(
  a: Float32Array,
  aShape: number[],
  b: Float32Array,
  bShape: number[],
  opts: MatmulRefOptions = {},
): Float32Array {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const alpha = opts.alpha ?? 1;
  if (a.length !== numel(aShape) || b.length !== numel(bShape)) {
    throw new RangeError(`matmulRef: data lengths do not match shapes [${aShape}] / [${bShape}]`);
  }
  const [a0, a1] = aShape.slice(-2);
  const [b0, b1] = bShape.slice(-2);
  const M = transA ? a1 : a0;
  const K = transA ? a0 : a1;
  const N = transB ? b0 : b1;
  if ((transB ? b1 : b0) !== K) {
    throw new RangeError(`matmulRef: K mismatch between [${aShape}] and [${bShape}]`);
  }
  const outBatch = broadcastShapes(
    "matmulRef (batch dims)",
    aShape.slice(0, -2),
    bShape.slice(0, -2),
  );
  const sA = batchStrides(aShape.slice(0, -2), outBatch, M * K);
  const sB = batchStrides(bShape.slice(0, -2), outBatch, K * N);
  const nb = numel(outBatch);
  const out = new Float32Array(nb * M * N);
  for (let bi = 0; bi < nb; bi++) {
    let rem = bi;
    let offA = 0;
    let offB = 0;
    for (let d = outBatch.length - 1; d >= 0; d--) {
      const i = rem % outBatch[d];
      rem = Math.floor(rem / outBatch[d]);
      offA += i * sA[d];
      offB += i * sB[d];
    }
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[offA + (transA ? k * M + m : m * K + k)];
          const bv = b[offB + (transB ? n * K + k : k * N + n)];
          s += av * bv;
        }
        let v = alpha * s;
        if (opts.bias) v += opts.bias[n];
        if (opts.activation === "gelu") v = geluRef(v);
        if (opts.scale) v *= opts.scale[n];
        const o = bi * M * N + m * N + n;
        if (opts.residual) v += opts.residual[o];
        if (opts.accumulate) v += opts.accumulate[o];
        out[o] = v;
      }
    }
  }
  return out;
}
