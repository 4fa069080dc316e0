/**
 * Messages between the page and its engine worker (app/worker.ts), which
 * owns the GPU device, the model and the image decoding. The page keeps
 * every result it receives, so a worker that dies (a lost device) loses only
 * the batch in flight: the page starts a new one and carries on.
 */

/** The adapter the engine runs on, and the limits it got. */
export interface AdapterInfo {
  /** Gpu.describe(): name, fallback, binding and buffer limits, workgroup storage. */
  describe: string;
  name: string;
  isFallback: boolean;
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupStorageSize: number;
}

/** The model found in the weights. */
export interface ModelInfo {
  /** File name. */
  file: string;
  /** vit_small, vit_base, …, or custom. */
  arch: string;
  /** dinov2-hub, dinobloom, timm or bloom. */
  layout: string;
  /** Backbone parameters. */
  params: number;
  dim: number;
  depth: number;
  heads: number;
  patch: number;
  registers: number;
  /** Side of the stored position grid, in patches. */
  posGrid: number;
  ffn: string;
  /** Seconds to read the weights and run the check pass. */
  seconds: number;
}

/** One cell to embed. */
export interface CellJob {
  id: number;
  file: Blob;
  /** Named in messages. */
  path: string;
}

/** Page → engine. */
export type ToEngine =
  | { type: "init" }
  | { type: "load"; file: Blob; name: string; heads?: number; inputSize: number }
  | { type: "embed"; job: number; cells: CellJob[]; batch: number; inputSize: number }
  | { type: "cancel"; job: number }
  | { type: "patch"; id: number; file: Blob; path: string; inputSize: number }
  /** Test hook: destroy the device, as a driver reset would. */
  | { type: "lose-device" }
  /**
   * Test hook: from now on, work on more than `cells` cells at once (0: any,
   * the load's check pass too) fails as out of memory, as on an adapter too
   * small for the model; null ends it. SwiftShader has the host's memory, so
   * a real shortage cannot be made cheaply.
   */
  | { type: "simulate-memory"; cells: number | null };

/** Why a batch failed, for the page's recovery: halve the batch, restart the engine, or stop. */
export type FailureKind = "oom" | "lost" | "limit" | "other";

/** Engine → page. */
export type FromEngine =
  | { type: "ready"; adapter: AdapterInfo }
  | { type: "no-gpu"; reason: string }
  | { type: "loaded"; model: ModelInfo }
  | { type: "load-failed"; file: string; reason: string; kind: FailureKind }
  | {
    type: "rows";
    job: number;
    ids: number[];
    /** [ids.length, dim] row-major. */
    features: Float32Array;
    dim: number;
    /** This batch's seconds on the GPU side (upload to read-back). */
    gpuSeconds: number;
  }
  | { type: "bad"; job: number; id: number; path: string; reason: string }
  | { type: "batch-failed"; job: number; ids: number[]; reason: string; kind: FailureKind }
  | { type: "done"; job: number; cancelled: boolean }
  | {
    type: "patch";
    id: number;
    /** [patches, dim]. */
    tokens: Float32Array;
    patches: number;
    dim: number;
    /** The cell as the model saw it: [size, size, 3] RGB. */
    pixels: Uint8Array;
    size: number;
  }
  | { type: "patch-failed"; id: number; path: string; reason: string };

/** Sorts a GPU failure by its message (the runtime's error classes do not cross the worker). */
export function failureKind(e: unknown): FailureKind {
  const name = e instanceof Error ? e.name : "";
  const msg = e instanceof Error ? e.message : String(e);
  if (name === "DeviceLostError" || /device (is |was )?lost|lost device|destroyed/i.test(msg)) {
    return "lost";
  }
  if (/out[- ]of[- ]memory/i.test(msg)) return "oom";
  // GpuLimitError, and the buffer pool's RangeError for a buffer over maxBufferSize.
  if (name === "GpuLimitError" || /exceeds the adapter's|over this adapter's/.test(msg)) {
    return "limit";
  }
  return "other";
}
