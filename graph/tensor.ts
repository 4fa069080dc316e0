/**
 * Tensor: a value on the GPU that the autodiff graph tracks. Leaves are
 * inputs (no gradient) or parameters (views into the arena, gradient
 * accumulated into the arena's gradient buffer); every other tensor was made
 * by an op recorded on the tape.
 */
import type { GpuTensor } from "../kernels/tensor.ts";
import type { Param } from "./arena.ts";

let nextId = 1;

/** What made a tensor: the tape node of the op (see graph.ts). */
export interface Producer {
  readonly index: number;
}

/** A GPU value plus what the graph needs to differentiate through it. */
export class Tensor {
  readonly id: number = nextId++;
  readonly value: GpuTensor;
  /** Whether gradients flow to this tensor. */
  readonly requiresGrad: boolean;
  /** The op that made it, or null for leaves. */
  readonly producer: Producer | null;
  /** The arena parameter this leaf views, or null. */
  readonly param: Param | null;
  /**
   * Holders of `value`: the scope that created it plus each tape node that
   * saved it. At zero the buffer goes back to the pool. Leaves the graph does
   * not own (parameters, external inputs) are never released by it.
   */
  refs = 1;
  /** Whether the graph frees `value` at zero holds (false once `Graph.keep` hands it out). */
  owned: boolean;

  constructor(
    value: GpuTensor,
    opts: {
      requiresGrad?: boolean;
      producer?: Producer | null;
      param?: Param | null;
      owned?: boolean;
    } = {},
  ) {
    this.value = value;
    this.requiresGrad = opts.requiresGrad ?? false;
    this.producer = opts.producer ?? null;
    this.param = opts.param ?? null;
    this.owned = opts.owned ?? true;
  }

  /** Shape of the value. */
  get shape(): readonly number[] {
    return this.value.shape;
  }

  /** Element count. */
  get numel(): number {
    return this.value.numel;
  }

  /** Size of dimension `i` (negative counts from the end). */
  dim(i: number): number {
    const s = this.value.shape;
    return s[i < 0 ? s.length + i : i];
  }
}
