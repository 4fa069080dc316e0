/**
 * Fused inference paths. When the graph is not recording (inference, the
 * teacher), a linear layer's epilogue — GELU, LayerScale and the residual add
 * — runs inside the matmul's write-out instead of as separate kernels. When
 * recording, the same maths runs as separate differentiable ops.
 */
import { matmul } from "../kernels/matmul.ts";
import type { Graph } from "./graph.ts";
import { add, gelu, linear, mul } from "./ops.ts";
import type { Tensor } from "./tensor.ts";

/** residual + scale ⊙ act(x wᵀ + b), fused when the graph is not recording. */
export function fusedLinear(
  g: Graph,
  x: Tensor,
  w: Tensor,
  b: Tensor | null,
  opts: { activation?: "none" | "gelu"; scale?: Tensor; residual?: Tensor } = {},
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
    }));
  }
  let y = linear(g, x, w, b);
  if (opts.activation === "gelu") y = gelu(g, y);
  if (opts.scale) y = mul(g, y, opts.scale);
  if (opts.residual) y = add(g, opts.residual, y);
  return y;
}
