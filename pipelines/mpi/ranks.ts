/**
 * What the training step needs from the other ranks, in the step's terms:
 * the Sinkhorn-Knopp and centring reductions (as the kernels' CrossReduce),
 * a count summed over ranks, the gradient reduction, and the per-rank losses
 * (summed for the metrics, kept per rank to say which rank went non-finite).
 */
import type { ParamArena } from "../../graph/arena.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import type { CrossReduce } from "../../kernels/sinkhorn.ts";
import type { GpuTensor } from "../../kernels/tensor.ts";
import type { Comm } from "./comm.ts";
import { type Bucket, DEFAULT_BUCKET_BYTES, GradientSync, planBuckets } from "./gradients.ts";
import { broadcastTensors } from "./tensors.ts";
import { crossReduce } from "./tensors.ts";

/** The ranks of a data-parallel training run, bound to one GPU and one model. */
export class TrainingRanks {
  readonly comm: Comm;
  readonly gpu: Gpu;
  readonly reduce: CrossReduce;
  readonly #buckets: readonly Bucket[];
  readonly #arena: ParamArena;

  constructor(gpu: Gpu, comm: Comm, grads: ParamArena, bucketBytes = DEFAULT_BUCKET_BYTES) {
    this.gpu = gpu;
    this.comm = comm;
    this.reduce = crossReduce(gpu, comm);
    this.#arena = grads;
    this.#buckets = planBuckets(grads, bucketBytes);
  }

  get size(): number {
    return this.comm.size;
  }

  /** `n` summed over ranks. */
  async sumCount(n: number): Promise<number> {
    return (await this.comm.allreduce(Int32Array.of(n), "sum"))[0];
  }

  /** A gradient reduction for this step (see GradientSync). */
  gradients(): GradientSync {
    return new GradientSync(this.gpu, this.comm, this.#arena, this.#buckets);
  }

  /** Rank 0's values of `tensors` on every rank. */
  broadcast(tensors: readonly GpuTensor[]): Promise<void> {
    return broadcastTensors(this.gpu, this.comm, tensors);
  }

  /**
   * Every rank's `values`: their sums (in rank order, so the same on every
   * rank), and which ranks had a non-finite value: those whose `local`-th
   * value (a term computed from the rank's own images only) is, if that is
   * not every rank, else every rank with any.
   */
  async sumLosses(
    values: number[],
    local: number,
  ): Promise<{ sums: number[]; nonFinite: number[] }> {
    const mine = new Uint8Array(Float64Array.from(values).buffer);
    const all = (await this.comm.allgather(mine)).map((b) =>
      new Float64Array(b.buffer, b.byteOffset, values.length)
    );
    const sums = values.map((_, i) => all.reduce((s, r) => s + r[i], 0));
    const own = all.flatMap((r, rank) => Number.isFinite(r[local]) ? [] : [rank]);
    const any = all.flatMap((r, rank) => r.every(Number.isFinite) ? [] : [rank]);
    return { sums, nonFinite: own.length && own.length < all.length ? own : any };
  }
}
