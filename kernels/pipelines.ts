/**
 * Pipeline cache keyed by kernel name and specialisation key.
 *
 * Creation is synchronous (so dispatching never awaits), but WGSL errors are
 * reported asynchronously by the device. Each new pipeline is therefore
 * created inside its own validation error scope; the scope's result is kept
 * and checked by `Gpu.sync()` (and at once by `compile()`), and a failure is
 * turned into a `ShaderCompileError` that quotes the offending source lines.
 */
import { formatCompilationMessages, ShaderCompileError } from "./errors.ts";
import type { BindingKind, Kernel } from "./kernel.ts";

/** The bind-group-layout part of one binding kind. */
function layoutOf(kind: BindingKind): Partial<GPUBindGroupLayoutEntry> {
  switch (kind) {
    case "read":
      return { buffer: { type: "read-only-storage" } };
    case "read_write":
      return { buffer: { type: "storage" } };
    case "texture_f32":
      return { texture: { sampleType: "unfilterable-float", viewDimension: "2d" } };
    case "texture_u32":
      return { texture: { sampleType: "uint", viewDimension: "2d" } };
    case "write_rgba32float":
      return { storageTexture: { access: "write-only", format: "rgba32float" } };
    case "write_rgba32uint":
      return { storageTexture: { access: "write-only", format: "rgba32uint" } };
  }
}

/** A cached pipeline and the layout its bind groups use. */
export interface CachedPipeline {
  readonly kernel: Kernel;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  /** Resolves to null when the pipeline compiled, else to the error. */
  readonly ready: Promise<ShaderCompileError | null>;
}

/** Compiles each distinct kernel once. */
export class PipelineCache {
  readonly #device: GPUDevice;
  readonly #cache = new Map<string, CachedPipeline>();
  readonly #unchecked: CachedPipeline[] = [];

  constructor(device: GPUDevice) {
    this.#device = device;
  }

  /** Number of distinct pipelines compiled. */
  get size(): number {
    return this.#cache.size;
  }

  /** The pipeline for `kernel`, compiling it on first use. */
  get(kernel: Kernel): CachedPipeline {
    const id = `${kernel.name}|${kernel.key}`;
    const hit = this.#cache.get(id);
    if (hit) return hit;
    const device = this.#device;
    const source = kernel.source();
    const entries: GPUBindGroupLayoutEntry[] = kernel.bindings.map((access, binding) => ({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      ...layoutOf(access),
    }));
    if (kernel.uniformBytes > 0) {
      entries.push({
        binding: kernel.bindings.length,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: "uniform" },
      });
    }
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ code: source, label: id });
    const layout = device.createBindGroupLayout({ entries, label: id });
    const pipeline = device.createComputePipeline({
      label: id,
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    const ready = device.popErrorScope().then(async (err) => {
      if (!err) return null;
      const info = await module.getCompilationInfo();
      const msg = info.messages.some((m) => m.type === "error")
        ? formatCompilationMessages(id, source, info.messages)
        : `pipeline for kernel '${id}' is invalid: ${err.message.trim()}`;
      return new ShaderCompileError(msg);
    });
    const entry: CachedPipeline = { kernel, pipeline, layout, ready };
    this.#cache.set(id, entry);
    this.#unchecked.push(entry);
    return entry;
  }

  /** Awaits every pipeline created since the last check; throws the first failure. */
  async check(): Promise<void> {
    const pending = this.#unchecked.splice(0);
    const errors = await Promise.all(pending.map((p) => p.ready));
    const first = errors.find((e) => e !== null);
    if (first) {
      // A broken entry stays out of the cache so a corrected kernel can be retried.
      for (const p of pending) {
        if (errors[pending.indexOf(p)]) this.#cache.delete(`${p.kernel.name}|${p.kernel.key}`);
      }
      throw first;
    }
  }
}
