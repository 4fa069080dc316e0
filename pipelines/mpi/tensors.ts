/**
 * GPU tensors across ranks: a reduction in place (read back, allreduce on the
 * host, written back) and a broadcast from rank 0 (what makes every rank start
 * from rank 0's weights and optimiser state). MPI moves host memory here; a
 * GPU-aware MPI could skip the copies, but WebGPU buffers are not CUDA memory.
 */
import type { CrossReduce } from "../../kernels/sinkhorn.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import type { GpuTensor } from "../../kernels/tensor.ts";
import type { Comm } from "./comm.ts";

/** Replaces the f32 tensor `t` by its elementwise sum (or max) over every rank. */
export async function reduceTensor(
  gpu: Gpu,
  comm: Comm,
  t: GpuTensor,
  op: "sum" | "max",
): Promise<void> {
  const host = await gpu.readF32(t);
  await comm.allreduce(host, op);
  gpu.write(t, host);
}

/** `reduceTensor` as the kernels' cross-process hook (Sinkhorn-Knopp, centring). */
export function crossReduce(gpu: Gpu, comm: Comm): CrossReduce {
  return (t, op) => reduceTensor(gpu, comm, t, op);
}

/**
 * Overwrites `tensors` on every rank with rank 0's, in order, one at a time
 * (host memory holds one tensor at once). Every rank passes tensors of the
 * same shapes (of 4-byte elements, as every bloom tensor).
 */
export async function broadcastTensors(
  gpu: Gpu,
  comm: Comm,
  tensors: readonly GpuTensor[],
): Promise<void> {
  if (comm.size === 1) return;
  for (const t of tensors) {
    const bytes = comm.rank === 0 ? await gpu.readBytes(t) : new Uint8Array(t.size);
    await comm.bcast(bytes, 0);
    if (comm.rank !== 0) gpu.write(t, bytes);
  }
}
