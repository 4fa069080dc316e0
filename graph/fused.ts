/**
 * Fused inference paths. When the graph is not recording (inference, the teacher), a linear
 * layer's epilogue — bias, GELU, LayerScale and the residual add — runs inside the matmul's
 * write-out instead of as separate kernels, and its weights may be read as f16 halves
 * (`precision`); when recording, the same maths runs as separate differentiable ops, in f32.
 */
import { matmul } from "../kernels/matmul/mod.ts";
import type { Graph } from "./graph.ts";
import { add, gelu, linear, mul } from "./ops.ts";
import type { Tensor } from "./tensor.ts";

/** Options of `fusedLinear`. */
export interface FusedLinearOptions {
  activation?: "none" | "gelu";
  scale?: Tensor;
  residual?: Tensor;
  /**
   * "f16": inference reads the weights as f16 halves (f32 sums) where the adapter offers
   * `shader-f16` and the matmul's texture kernel runs (kernels/matmul); ignored when recording.
   */
  precision?: "f32" | "f16";
}

/** residual + scale ⊙ act(x wᵀ + b), fused when the graph is not recording. */
export function fusedLinear(
  g: Graph,
  x: Tensor,
  w: Tensor,
  b: Tensor | null,
  opts: FusedLinearOptions = {},
): Tensor {
  const needsGrad = g.recording &&
    [x, w, b, opts.scale, opts.residual].some((t) => t?.requiresGrad);
  if (!needsGrad) {
    return g.adopt(matmul(g.gpu, x.value, w.value, {
      transB: true,
      bias: b?.value,
      activation: opts.activation ?? "none",
      scale: opts.scale?.value,
      residual: opts.residual?.value,
      precision: opts.precision,
    }));
  }
  let y = linear(g, x, w, b);
  if (opts.activation === "gelu") y = gelu(g, y);
  if (opts.scale) y = mul(g, y, opts.scale);
  if (opts.residual) y = add(g, opts.residual, y);
  return y;
}
