/**
 * The shape of a differentiation rule: a forward that runs kernels and says
 * what to keep, and a backward that turns the output gradient into input
 * gradients. The table of rules is `rules.ts`.
 */
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";

/** Returned by a backward rule for an input whose gradient it already added into the target. */
export const ACCUMULATED: unique symbol = Symbol("accumulated");

/** What a forward returns. */
export interface ForwardResult {
  y: GpuTensor;
  /** Input positions the backward needs. */
  saveInputs?: number[];
  /** Whether the backward needs the output. */
  saveOutput?: boolean;
  /** Extra tensors made for the backward; freed after it (or at once when not recording). */
  aux?: GpuTensor[];
  /** `y` is a view of input 0's buffer (reshape): the input stays alive as long as `y`. */
  view?: boolean;
}

/** What a backward rule sees. */
export interface BackwardContext<A> {
  gpu: Gpu;
  attrs: A;
  /** Input values; only the positions the forward saved are defined. */
  xs: (GpuTensor | undefined)[];
  /** Output value, if the forward saved it. */
  y: GpuTensor | undefined;
  aux: GpuTensor[];
  inShapes: readonly (readonly number[])[];
  /** Which inputs need a gradient. */
  needs: readonly boolean[];
  /**
   * Where an input's gradient may be added directly (a parameter's gradient
   * in the arena); a rule that does so returns ACCUMULATED for it.
   */
  targets: readonly (GpuTensor | null)[];
}

/** Input gradients, by position: a fresh tensor, null (none), or ACCUMULATED. */
export type Grads = (GpuTensor | null | typeof ACCUMULATED)[];

/** A differentiable primitive. */
export interface Rule<A> {
  forward(gpu: Gpu, xs: GpuTensor[], attrs: A, training: boolean): ForwardResult;
  backward(ctx: BackwardContext<A>, dy: GpuTensor): Grads;
}

/** Input `i`'s saved value, or a clear error when the rule forgot to save it. */
export function saved<A>(ctx: BackwardContext<A>, i: number): GpuTensor {
  const x = ctx.xs[i];
  if (!x) throw new Error(`backward needs input ${i}, which its forward did not save`);
  return x;
}
