/**
 * bloom — DinoBloom, the foundation model for single blood-cell images, on
 * Deno and WebGPU.
 *
 * ```ts
 * import { getGpu } from "./mod.ts";
 * const gpu = await getGpu();
 * console.log(gpu.describe());
 * ```
 *
 * @module
 */

export {
  type AdapterDescription,
  getGpu,
  Gpu,
  type GpuFeatures,
  type GpuLimits,
  type GpuOptions,
  Recording,
  type SubmitStats,
  type Timing,
} from "./kernels/runtime.ts";
export {
  DeviceLostError,
  GpuError,
  GpuLimitError,
  NoAdapterError,
  ShaderCompileError,
} from "./kernels/errors.ts";
export { type BufferView, type DType, GpuTensor } from "./kernels/tensor.ts";
export { grid, type Kernel, kernel, Params, type StorageAccess } from "./kernels/kernel.ts";
export { BufferPool, type PoolStats } from "./kernels/pool.ts";
