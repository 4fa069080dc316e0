/**
 * The GPU runtime: one WebGPU device, its buffer pool, its pipeline cache and
 * one open command encoder that batches every dispatch of a step into a single
 * submit.
 *
 * Invariants (each one bites if broken):
 * - Flush before read-back: a read copies into a staging buffer inside the
 *   open encoder, then submits; `read` does both. Map only what was
 *   submitted, and late: on llvmpipe a map (and a second submit) blocks until
 *   the running submit ends, so overlapping callers queue the next batch
 *   first (`queueReads`).
 * - Flush before host write into a buffer the open encoder uses: `write` does
 *   it; raw `queue.writeBuffer` would run before pending dispatches.
 * - A released buffer is free for host uploads only after the submit that used
 *   it (see `pool.ts`).
 * - Every dispatch has its own uniform slot (see `uniforms.ts`).
 * - Errors are collected through error scopes opened per submit and pipeline;
 *   `sync()` (and every read) throws the first one with the kernels involved.
 */
import {
  DeviceLostError,
  GpuError,
  GpuLimitError,
  NoAdapterError,
  ShaderCompileError,
} from "./errors.ts";
import { isTextureBinding, type Kernel, type Workgroups } from "./kernel.ts";
import { type CachedPipeline, PipelineCache } from "./pipelines.ts";
import { BufferPool, fmtBytes } from "./pool.ts";
import { type BufferView, type DType, DTYPE_BYTES, GpuTensor, numel } from "./tensor.ts";
import { GpuTexture, type TextureFormat, TexturePool } from "./textures.ts";
import { UniformArena } from "./uniforms.ts";

/** The limits bloom asks for and relies on. */
export interface GpuLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxStorageBuffersPerShaderStage: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupSizeX: number;
  maxComputeWorkgroupSizeY: number;
  maxComputeWorkgroupSizeZ: number;
  maxComputeWorkgroupsPerDimension: number;
  minStorageBufferOffsetAlignment: number;
  minUniformBufferOffsetAlignment: number;
  /** Widest and tallest 2-D texture (texture operands of the matmul: `textures.ts`). */
  maxTextureDimension2D: number;
}

const REQUESTED_LIMITS: readonly (keyof GpuLimits)[] = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxTextureDimension2D",
];

/** What the adapter says about itself. */
export interface AdapterDescription {
  /** Human-readable name: "llvmpipe (LLVM 15.0.6, 256 bits)", "NVIDIA H200", … */
  name: string;
  vendor: string;
  architecture: string;
  /** True for software adapters (llvmpipe, SwiftShader, WARP). */
  isFallback: boolean;
}

/** Optional features bloom can use when the adapter has them. */
export interface GpuFeatures {
  timestamp: boolean;
  f16: boolean;
  subgroups: boolean;
}

/** Options of `Gpu.create`. */
export interface GpuOptions {
  powerPreference?: GPUPowerPreference;
  /** Ask for the software adapter even where a GPU exists. */
  forceFallbackAdapter?: boolean;
  /** Free pool bytes kept between submits (default 1 GiB). */
  maxFreePoolBytes?: number;
}

/** Counters of encoder use, for tests and the step report. */
export interface SubmitStats {
  submits: number;
  dispatches: number;
  /** Dispatches in the open (not yet submitted) encoder. */
  openDispatches: number;
}

/** One command kept by a capture, to be replayed without re-encoding state. */
type RecordedCommand =
  | {
    kind: "dispatch";
    pipeline: GPUComputePipeline;
    bindGroup: GPUBindGroup;
    workgroups: [number, number, number];
    name: string;
  }
  | {
    kind: "copy";
    src: GPUBuffer;
    srcOffset: number;
    dst: GPUBuffer;
    dstOffset: number;
    bytes: number;
  }
  | { kind: "clear"; buffer: GPUBuffer; offset: number; bytes: number }
  | {
    kind: "copyTex";
    src: GPUBuffer;
    srcOffset: number;
    bytesPerRow: number;
    dst: GPUTexture;
    width: number;
    height: number;
  };

/**
 * A fixed sequence of commands (dispatches, copies, clears) recorded once
 * (`Gpu.capture`) and replayed with one submit (`Gpu.replay`). It owns the
 * uniform slots of its dispatches and every buffer released while it was
 * being recorded (a replay writes them again, so nobody else may hold them);
 * `Gpu.disposeRecording` hands those back to the pool.
 */
export class Recording {
  readonly commands: RecordedCommand[] = [];
  readonly uniforms: UniformArena;
  /** Buffers released during the capture, kept out of the pool while the recording lives. */
  readonly held: GPUBuffer[] = [];
  /**
   * Textures released during the capture, likewise; unlike buffers they are reused within the
   * capture (textures are only written by commands, which replay in order).
   */
  readonly heldTextures = new Map<GPUTexture, TextureFormat>();
  /** Held textures free for the capture's next acquisitions, by format and size. */
  readonly freeTextures = new Map<string, GPUTexture[]>();
  constructor(device: GPUDevice) {
    this.uniforms = new UniformArena(device);
  }
  /** Recorded dispatches (the commands that run kernels). */
  get dispatches(): RecordedCommand[] {
    return this.commands.filter((c) => c.kind === "dispatch");
  }
}

/** Read-backs queued with their work (`Gpu.queueReads`), collected later. */
export interface QueuedReads {
  /** The tensors' values, once their submit has run (throws pending GPU errors). */
  collect(): Promise<(Float32Array | Uint32Array | Int32Array)[]>;
  /** Gives the staging buffers back without reading them. */
  discard(): void;
}

/** Timing of a block of GPU work. */
export interface Timing {
  /** GPU time from timestamp queries, or null where the adapter has none. */
  gpuMs: number | null;
  /** Wall time from the first dispatch to the end of the work. */
  wallMs: number;
}

const MAX_TIMED_PASSES = 512;

/** One WebGPU device and everything bloom does with it. */
export class Gpu {
  readonly device: GPUDevice;
  readonly adapter: AdapterDescription;
  readonly limits: GpuLimits;
  readonly features: GpuFeatures;
  readonly pool: BufferPool;
  readonly textures: TexturePool;
  readonly pipelines: PipelineCache;

  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #kernelsInEncoder: string[] = [];
  #uniforms: UniformArena;
  #transientUniforms: UniformArena;
  #capture: Recording | null = null;
  #scopeChecks: Promise<GpuError | null>[] = [];
  #uncaptured: GpuError[] = [];
  #lost: GPUDeviceLostInfo | null = null;
  #destroyed = false;
  #stats: SubmitStats = { submits: 0, dispatches: 0, openDispatches: 0 };
  #staging = new Map<number, GPUBuffer[]>();
  #timing: { set: GPUQuerySet; passes: number } | null = null;

  private constructor(
    device: GPUDevice,
    adapter: AdapterDescription,
    limits: GpuLimits,
    features: GpuFeatures,
    opts: GpuOptions,
  ) {
    this.device = device;
    this.adapter = adapter;
    this.limits = limits;
    this.features = features;
    this.pool = new BufferPool(device, limits.maxBufferSize, opts.maxFreePoolBytes ?? 2 ** 30);
    this.textures = new TexturePool(device);
    this.pipelines = new PipelineCache(device);
    this.#transientUniforms = new UniformArena(device, limits.minUniformBufferOffsetAlignment);
    this.#uniforms = this.#transientUniforms;
    device.addEventListener("uncapturederror", (ev) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      // Say which kind: a buffer created outside an error scope reports out of memory here.
      const oom = e.constructor?.name === "GPUOutOfMemoryError" ? " (out of memory)" : "";
      this.#uncaptured.push(new GpuError(`uncaptured GPU error${oom}: ${e.message.trim()}`));
    });
    device.lost.then((info) => {
      this.#lost = info;
    });
  }

  /**
   * Opens the best adapter with its real limits, stepping the large ones down
   * if the device refuses them. Throws `NoAdapterError` with install advice
   * where WebGPU finds no adapter.
   */
  static async create(opts: GpuOptions = {}): Promise<Gpu> {
    if (typeof navigator === "undefined" || !("gpu" in navigator)) {
      throw new NoAdapterError("this runtime has no navigator.gpu; use Deno 2 or later");
    }
    // Mesa's EGL probe complains without it; harmless to provide (Deno only: no env in a page).
    // One directory per user, reused: a fresh temp dir per run would pile up in /tmp.
    if (typeof Deno !== "undefined" && !Deno.env.get("XDG_RUNTIME_DIR")) {
      try {
        const dir = `${Deno.env.get("TMPDIR") || "/tmp"}/bloom-xdg-${Deno.uid() ?? "user"}`;
        Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
        Deno.env.set("XDG_RUNTIME_DIR", dir);
      } catch { /* no permission: only a warning is lost */ }
    }
    const adapter = await navigator.gpu.requestAdapter({
      powerPreference: opts.powerPreference ?? "high-performance",
      forceFallbackAdapter: opts.forceFallbackAdapter ?? false,
    });
    if (!adapter) throw new NoAdapterError();
    const info = adapter.info;
    const description: AdapterDescription = {
      name: info.description || info.device || info.vendor || "unknown adapter",
      vendor: info.vendor,
      architecture: info.architecture,
      isFallback: Boolean(
        (info as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
          (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter,
      ),
    };
    const features: GpuFeatures = {
      timestamp: adapter.features.has("timestamp-query"),
      f16: adapter.features.has("shader-f16"),
      subgroups: adapter.features.has("subgroups"),
    };
    const requiredFeatures: GPUFeatureName[] = [];
    if (features.timestamp) requiredFeatures.push("timestamp-query");
    if (features.f16) requiredFeatures.push("shader-f16");

    const wanted: Record<string, number> = {};
    for (const k of REQUESTED_LIMITS) wanted[k] = adapter.limits[k];
    let device: GPUDevice | null = null;
    let lastError: unknown = null;
    // Step large limits down by halves; some drivers advertise more than they grant.
    for (let attempt = 0; attempt < 6 && !device; attempt++) {
      try {
        device = await adapter.requestDevice({ requiredLimits: wanted, requiredFeatures });
      } catch (e) {
        lastError = e;
        for (const k of ["maxStorageBufferBindingSize", "maxBufferSize"]) {
          wanted[k] = Math.max(128 * 2 ** 20, Math.floor(wanted[k] / 2 / 4) * 4);
        }
      }
    }
    if (!device) {
      try {
        device = await adapter.requestDevice({ requiredFeatures });
      } catch (e) {
        throw new GpuError(
          `the adapter '${description.name}' refused to open a device: ${e}; ` +
            `(last limit request failed with: ${lastError})`,
        );
      }
    }
    const l = device.limits;
    const limits: GpuLimits = {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupSizeZ: l.maxComputeWorkgroupSizeZ,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxTextureDimension2D: l.maxTextureDimension2D,
      minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
      minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
    };
    return new Gpu(device, description, limits, features, opts);
  }

  /** One line for logs and benchmark headers. */
  describe(): string {
    return `${this.adapter.name}${this.adapter.isFallback ? " (software fallback)" : ""}, ` +
      `binding ≤ ${fmtBytes(this.limits.maxStorageBufferBindingSize)}, ` +
      `buffer ≤ ${fmtBytes(this.limits.maxBufferSize)}, ` +
      `workgroup storage ${fmtBytes(this.limits.maxComputeWorkgroupStorageSize)}, ` +
      `timestamps ${this.features.timestamp ? "yes" : "no"}`;
  }

  // ---------------------------------------------------------------- tensors

  /** A new tensor whose first write is a kernel's (may reuse a buffer freed in this submit). */
  empty(shape: readonly number[], dtype: DType = "f32", label = ""): GpuTensor {
    this.#alive();
    const bytes = numel(shape) * DTYPE_BYTES[dtype];
    const buf = this.pool.acquire(bytes, "gpu-write", label);
    return new GpuTensor(buf, shape, dtype, 0, true);
  }

  /** A new tensor filled with zeros (cleared in the open encoder, so in order). */
  zeros(shape: readonly number[], dtype: DType = "f32", label = ""): GpuTensor {
    const t = this.empty(shape, dtype, label);
    this.clear(t);
    return t;
  }

  /** Zeroes a tensor or buffer range in encoder order. */
  clear(t: BufferView): void {
    this.#alive();
    if (t.size === 0) return;
    this.#endPass();
    const bytes = Math.ceil(t.size / 4) * 4;
    this.#enc().clearBuffer(t.buffer, t.offset, bytes);
    this.#capture?.commands.push({ kind: "clear", buffer: t.buffer, offset: t.offset, bytes });
  }

  /** Uploads typed data as a new tensor of `shape` (defaults to 1-D). */
  tensor(
    data: Float32Array | Uint32Array | Int32Array,
    shape: readonly number[] = [data.length],
    label = "",
  ): GpuTensor {
    this.#alive();
    const dtype: DType = data instanceof Float32Array
      ? "f32"
      : data instanceof Uint32Array
      ? "u32"
      : "i32";
    if (numel(shape) !== data.length) {
      throw new RangeError(`data of length ${data.length} does not fit shape [${shape}]`);
    }
    const buf = this.pool.acquire(data.byteLength, "host", label);
    if (data.byteLength > 0) {
      this.device.queue.writeBuffer(
        buf,
        0,
        data.buffer as ArrayBuffer,
        data.byteOffset,
        data.byteLength,
      );
    }
    return new GpuTensor(buf, shape, dtype, 0, true);
  }

  /**
   * Uploads bytes (images, masks) as a u32 tensor of ceil(n/4) words, little
   * endian: byte i is `(w[i >> 2] >> (8 * (i & 3))) & 255` in WGSL.
   */
  uploadBytes(data: Uint8Array, label = ""): GpuTensor {
    const words = Math.ceil(data.byteLength / 4);
    const padded = new Uint32Array(words);
    new Uint8Array(padded.buffer).set(data);
    return this.tensor(padded, [words], label);
  }

  /**
   * Writes host data into an existing tensor. Flushes first when the open
   * encoder has work, because the write would otherwise overtake it.
   */
  write(t: BufferView, data: ArrayBufferView, byteOffset = 0): void {
    this.#alive();
    if (byteOffset + data.byteLength > t.size) {
      throw new RangeError(
        `write of ${data.byteLength} B at ${byteOffset} overflows a ${t.size} B tensor`,
      );
    }
    if (data.byteLength % 4 !== 0) throw new RangeError("writes must be a multiple of 4 bytes");
    if (this.#stats.openDispatches > 0 || this.#encoder) this.flush();
    this.device.queue.writeBuffer(
      t.buffer,
      t.offset + byteOffset,
      data.buffer as ArrayBuffer,
      data.byteOffset,
      data.byteLength,
    );
  }

  /** Returns a pooled tensor's buffer to the pool (no-op for views). */
  release(...ts: (GpuTensor | null | undefined)[]): void {
    for (const t of ts) {
      if (!t || !t.pooled) continue;
      t.markReleased();
      // During a capture the buffer stays the recording's: a replay writes it again.
      if (this.#capture) this.#capture.held.push(t.buffer);
      else this.pool.release(t.buffer);
    }
  }

  /** Copies `bytes` from one buffer range to another, in encoder order. */
  copy(src: BufferView, dst: BufferView, bytes: number = Math.min(src.size, dst.size)): void {
    this.#alive();
    if (bytes > src.size || bytes > dst.size) {
      throw new RangeError(`copy of ${bytes} B exceeds a ${src.size} B / ${dst.size} B range`);
    }
    if (bytes === 0) return;
    this.#endPass();
    this.#enc().copyBufferToBuffer(src.buffer, src.offset, dst.buffer, dst.offset, bytes);
    this.#capture?.commands.push({
      kind: "copy",
      src: src.buffer,
      srcOffset: src.offset,
      dst: dst.buffer,
      dstOffset: dst.offset,
      bytes,
    });
  }

  // ---------------------------------------------------------------- textures

  /** A 2-D texture whose first write is a GPU command (pooled; see `textures.ts`). */
  texture(width: number, height: number, format: TextureFormat, label = ""): GpuTexture {
    this.#alive();
    const max = this.limits.maxTextureDimension2D;
    if (!(width >= 1 && height >= 1 && width <= max && height <= max)) {
      throw new GpuLimitError(
        `a ${width}×${height} texture${label ? ` for '${label}'` : ""} is outside this ` +
          `adapter's 1..${max} (maxTextureDimension2D)`,
      );
    }
    const cap = this.#capture;
    const reuse = cap?.freeTextures.get(`${format}:${width}x${height}`)?.pop();
    if (reuse) {
      cap!.heldTextures.delete(reuse);
      return new GpuTexture(reuse, format);
    }
    return this.textures.acquire(width, height, format, label);
  }

  /** Returns a texture to the pool (no-op for textures the pool does not own). */
  releaseTexture(...ts: (GpuTexture | null | undefined)[]): void {
    for (const t of ts) {
      if (!t || !t.pooled) continue;
      t.markReleased();
      const cap = this.#capture;
      if (cap) {
        cap.heldTextures.set(t.texture, t.format);
        const key = `${t.format}:${t.width}x${t.height}`;
        const list = cap.freeTextures.get(key);
        if (list) list.push(t.texture);
        else cap.freeTextures.set(key, [t.texture]);
      } else this.textures.release(t);
    }
  }

  /**
   * Copies `height` rows of `width` texels from a buffer (row r at `src.offset + r ·
   * bytesPerRow`) into texels (0..width, 0..height) of `dst`, in encoder order. WebGPU
   * requires `bytesPerRow` to be a multiple of 256 and the offset a multiple of the texel size.
   */
  copyToTexture(
    src: BufferView,
    bytesPerRow: number,
    dst: GpuTexture,
    width: number,
    height: number,
  ): void {
    this.#alive();
    if (bytesPerRow % 256 !== 0 || src.offset % 16 !== 0) {
      throw new GpuError(
        `copyToTexture: bytesPerRow ${bytesPerRow} must be a multiple of 256 and the offset ` +
          `${src.offset} a multiple of 16`,
      );
    }
    if (width > dst.width || height > dst.height) {
      throw new RangeError(
        `copyToTexture: ${width}×${height} texels do not fit a ${dst.width}×${dst.height} texture`,
      );
    }
    if (width === 0 || height === 0) return;
    const last = src.offset + (height - 1) * bytesPerRow + width * 16;
    if (last > src.buffer.size) {
      throw new RangeError(
        `copyToTexture: rows up to byte ${last} run past buffer '${src.buffer.label}' ` +
          `(${src.buffer.size} B)`,
      );
    }
    this.#endPass();
    this.#enc().copyBufferToTexture(
      { buffer: src.buffer, offset: src.offset, bytesPerRow, rowsPerImage: height },
      { texture: dst.texture },
      [width, height],
    );
    this.#capture?.commands.push({
      kind: "copyTex",
      src: src.buffer,
      srcOffset: src.offset,
      bytesPerRow,
      dst: dst.texture,
      width,
      height,
    });
  }

  // --------------------------------------------------------------- dispatch

  /**
   * Records one dispatch of `k` into the open encoder. `buffers` bind to
   * `@binding(0..)`, `params` (if the kernel has a uniform block) to the next
   * binding. Nothing runs until `flush` (or a read).
   */
  dispatch(
    k: Kernel,
    buffers: readonly (BufferView | GpuTexture)[],
    workgroups: Workgroups,
    params?: Uint8Array,
  ): void {
    this.#alive();
    const wg: [number, number, number] = [workgroups[0], workgroups[1] ?? 1, workgroups[2] ?? 1];
    this.#validate(k, buffers, wg, params);
    if (wg[0] * wg[1] * wg[2] === 0) return;
    const p: CachedPipeline = this.pipelines.get(k);
    const entries: GPUBindGroupEntry[] = buffers.map((b, binding) => ({
      binding,
      resource: b instanceof GpuTexture
        ? b.view
        : { buffer: b.buffer, offset: b.offset, size: Math.ceil(b.size / 4) * 4 },
    }));
    if (k.uniformBytes > 0) {
      const slot = this.#uniforms.slot(params!);
      entries.push({ binding: buffers.length, resource: slot });
    }
    const bindGroup = this.device.createBindGroup({ layout: p.layout, entries, label: k.name });
    const pass = this.#passEncoder();
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(wg[0], wg[1], wg[2]);
    this.#kernelsInEncoder.push(k.name);
    this.#stats.dispatches++;
    this.#stats.openDispatches++;
    this.#capture?.commands.push({
      kind: "dispatch",
      pipeline: p.pipeline,
      bindGroup,
      workgroups: wg,
      name: k.name,
    });
  }

  #validate(
    k: Kernel,
    bindings: readonly (BufferView | GpuTexture)[],
    wg: [number, number, number],
    params?: Uint8Array,
  ): void {
    const where = `kernel '${k.name}'`;
    if (bindings.length !== k.bindings.length) {
      throw new GpuError(`${where} takes ${k.bindings.length} buffers, got ${bindings.length}`);
    }
    // Textures are checked here; the checks below see only the buffer bindings.
    const buffers: BufferView[] = [];
    const kinds: string[] = [];
    for (const [i, b] of bindings.entries()) {
      const kind = k.bindings[i];
      if (isTextureBinding(kind) !== b instanceof GpuTexture) {
        throw new GpuError(
          `${where} binding ${i} is a ${kind} binding; got a ${
            b instanceof GpuTexture ? "texture" : "buffer"
          }`,
        );
      }
      if (b instanceof GpuTexture) {
        if (b.released) throw new GpuError(`${where} binding ${i}: the texture was released`);
        const want = kind === "texture_u32" || kind === "write_rgba32uint"
          ? "rgba32uint"
          : "rgba32float";
        if (b.format !== want) {
          throw new GpuError(`${where} binding ${i} needs a ${want} texture, got ${b.format}`);
        }
      } else {
        buffers.push(b);
        kinds.push(kind);
      }
    }
    if (k.uniformBytes > 0 && (!params || params.byteLength < k.uniformBytes)) {
      throw new GpuError(
        `${where} needs a ${k.uniformBytes} B uniform block, got ${params?.byteLength ?? "none"}`,
      );
    }
    if (buffers.length > this.limits.maxStorageBuffersPerShaderStage) {
      throw new GpuLimitError(
        `${where} binds ${buffers.length} storage buffers; this adapter allows ` +
          `${this.limits.maxStorageBuffersPerShaderStage} (maxStorageBuffersPerShaderStage)`,
      );
    }
    for (const [axis, n] of wg.entries()) {
      if (!Number.isInteger(n) || n < 0 || n > this.limits.maxComputeWorkgroupsPerDimension) {
        throw new GpuLimitError(
          `${where}: ${n} workgroups along ${
            "xyz"[axis]
          } exceeds maxComputeWorkgroupsPerDimension ` +
            `(${this.limits.maxComputeWorkgroupsPerDimension}); spread them with grid()`,
        );
      }
    }
    const max = this.limits.maxStorageBufferBindingSize;
    const align = this.limits.minStorageBufferOffsetAlignment;
    for (let i = 0; i < buffers.length; i++) {
      const b = buffers[i];
      const bound = Math.ceil(b.size / 4) * 4;
      if (bound <= 0) {
        throw new GpuError(`${where} binding ${i} is empty; skip the dispatch for empty tensors`);
      }
      if (bound > max) {
        throw new GpuLimitError(
          `${where} binding ${i} is ${fmtBytes(bound)}, over this adapter's ` +
            `maxStorageBufferBindingSize of ${fmtBytes(max)}; split the tensor ` +
            `(fewer rows per dispatch) or use a smaller batch`,
        );
      }
      if (b.offset % align !== 0) {
        throw new GpuLimitError(
          `${where} binding ${i} starts at byte ${b.offset}, not a multiple of ` +
            `minStorageBufferOffsetAlignment (${align})`,
        );
      }
      if (b.offset + bound > b.buffer.size) {
        throw new GpuLimitError(
          `${where} binding ${i} (bytes ${b.offset}..${b.offset + bound}) runs past the end of ` +
            `buffer '${b.buffer.label}' (${b.buffer.size} B)`,
        );
      }
      for (let j = 0; j < i; j++) {
        const o = buffers[j];
        if (o.buffer !== b.buffer) continue;
        const overlap = b.offset < o.offset + o.size && o.offset < b.offset + b.size;
        if (overlap && (kinds[i] === "read_write" || kinds[j] === "read_write")) {
          throw new GpuError(
            `${where} binds overlapping ranges of one buffer at bindings ${j} and ${i} with a ` +
              `write; bind it once as read_write instead`,
          );
        }
      }
    }
  }

  #enc(): GPUCommandEncoder {
    if (!this.#encoder) {
      // Scopes opened per encoder catch what its commands and the submit raise.
      this.device.pushErrorScope("out-of-memory");
      this.device.pushErrorScope("validation");
      this.#encoder = this.device.createCommandEncoder();
    }
    return this.#encoder;
  }

  #passEncoder(): GPUComputePassEncoder {
    if (!this.#pass) {
      const desc: GPUComputePassDescriptor = {};
      const t = this.#timing;
      if (t && t.passes < MAX_TIMED_PASSES) {
        desc.timestampWrites = {
          querySet: t.set,
          beginningOfPassWriteIndex: 2 * t.passes,
          endOfPassWriteIndex: 2 * t.passes + 1,
        };
        t.passes++;
      }
      this.#pass = this.#enc().beginComputePass(desc);
    }
    return this.#pass;
  }

  #endPass(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }

  /** Submits the open encoder (no-op when nothing is recorded). */
  flush(): void {
    this.#alive();
    if (!this.#encoder) return;
    this.#endPass();
    this.#uniforms.upload(this.device.queue);
    this.device.queue.submit([this.#encoder.finish()]);
    this.#encoder = null;
    const kernels = this.#kernelsInEncoder;
    this.#kernelsInEncoder = [];
    const submit = ++this.#stats.submits;
    this.#stats.openDispatches = 0;
    const validation = this.device.popErrorScope();
    const oom = this.device.popErrorScope();
    this.#scopeChecks.push(
      Promise.all([validation, oom]).then(([v, o]) => {
        const e = v ?? o;
        if (!e) return null;
        const kind = v ? "validation" : "out-of-memory";
        return new GpuError(
          `GPU ${kind} error in submit #${submit} (${summarise(kernels)}): ${e.message.trim()}`,
        );
      }),
    );
    if (this.#uniforms === this.#transientUniforms) this.#uniforms.reset();
    this.pool.onSubmit();
    this.textures.trim();
  }

  /**
   * Submits pending work, waits for the GPU, and throws the first error any
   * submit, pipeline or uncaptured event reported since the last sync.
   */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.#throwPending();
  }

  async #throwPending(): Promise<void> {
    try {
      await this.pipelines.check();
    } catch (e) {
      this.#scopeChecks = [];
      throw e;
    }
    const checks = this.#scopeChecks.splice(0);
    const errs = (await Promise.all(checks)).filter((e): e is GpuError => e !== null);
    if (errs.length) throw errs[0];
    if (this.#uncaptured.length) throw this.#uncaptured.splice(0)[0];
    this.#alive();
  }

  /** Compiles `k` now and throws a `ShaderCompileError` with source lines on failure. */
  async compile(k: Kernel): Promise<void> {
    this.#alive();
    const p = this.pipelines.get(k);
    const err = await p.ready;
    if (err) {
      await this.pipelines.check().catch(() => {});
      throw err;
    }
  }

  // ---------------------------------------------------------------- readback

  /** Reads a tensor back to the host (flushes; throws pending GPU errors). */
  async read(t: GpuTensor): Promise<Float32Array | Uint32Array | Int32Array> {
    return typed(t, await this.readBytes(t));
  }

  /** Reads an f32 tensor back to the host. */
  async readF32(t: GpuTensor): Promise<Float32Array> {
    if (t.dtype !== "f32") throw new TypeError(`readF32 on a ${t.dtype} tensor`);
    return await this.read(t) as Float32Array;
  }

  /** Reads several tensors with one submit (the open encoder's work and the copies). */
  readMany(ts: readonly GpuTensor[]): Promise<(Float32Array | Uint32Array | Int32Array)[]> {
    return this.queueReads(ts).collect();
  }

  /**
   * Queues the read-back of `ts`: their copies join the open encoder's work,
   * which is submitted now, or with `submit: false` at the next `flush`
   * (`collect` flushes if none came). `collect` maps them later. Mapping
   * waits for the work to finish, and on some drivers (llvmpipe under Deno)
   * the map call, and any second submit, block the thread until the queue is
   * idle: so a caller that overlaps batches records batch k+1 (unsubmitted),
   * collects batch k, then flushes. `discard` gives the staging buffers back
   * uncollected.
   */
  queueReads(ts: readonly GpuTensor[], opts: { submit?: boolean } = {}): QueuedReads {
    const staged = ts.map((t) => this.#stage(t));
    const submit = this.#stats.submits + 1; // the submit that will carry the copies
    if (opts.submit ?? true) this.flush();
    let done = false;
    const settle = () => {
      if (done) throw new GpuError("queued reads were already collected or discarded");
      done = true;
    };
    return {
      collect: () => {
        settle();
        if (this.#stats.submits < submit) this.flush(); // flush before read-back
        return Promise.all(ts.map(async (t, i) => typed(t, await this.#collect(t, staged[i]))));
      },
      discard: () => {
        settle();
        // Safe to reuse at once: a later copy into them runs after these in queue order.
        for (const s of staged) if (s) this.#keepStaging(s.staging, s.stagingSize);
      },
    };
  }

  /** Reads a raw buffer range back to the host. */
  async readBytes(v: BufferView): Promise<Uint8Array> {
    const staged = this.#stage(v);
    this.flush();
    return await this.#collect(v, staged);
  }

  /** Records the copy of `v` into a staging buffer in the open encoder; the caller flushes. */
  #stage(v: BufferView): { staging: GPUBuffer; size: number; stagingSize: number } | null {
    this.#alive();
    const size = Math.ceil(v.size / 4) * 4;
    if (size === 0) return null;
    const stagingSize = Math.max(256, 2 ** Math.ceil(Math.log2(size)));
    const staging = this.#staging.get(stagingSize)?.pop() ??
      this.device.createBuffer({
        size: stagingSize,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        label: "staging",
      });
    this.#endPass();
    this.#enc().copyBufferToBuffer(v.buffer, v.offset, staging, 0, size);
    return { staging, size, stagingSize };
  }

  #keepStaging(staging: GPUBuffer, stagingSize: number): void {
    const list = this.#staging.get(stagingSize);
    if (list) list.push(staging);
    else this.#staging.set(stagingSize, [staging]);
  }

  /** The bytes of a staged copy, once its submit has run (throws pending GPU errors). */
  async #collect(
    v: BufferView,
    staged: { staging: GPUBuffer; size: number; stagingSize: number } | null,
  ): Promise<Uint8Array> {
    if (!staged) return new Uint8Array(0);
    const { staging, size, stagingSize } = staged;
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, size);
    } catch (e) {
      await this.#throwPending();
      throw new GpuError(`read-back of ${size} B failed: ${e}`);
    }
    const out = new Uint8Array(size);
    out.set(new Uint8Array(staging.getMappedRange(0, size)));
    staging.unmap();
    this.#keepStaging(staging, stagingSize);
    await this.#throwPending();
    return v.size === size ? out : out.subarray(0, v.size);
  }

  // ------------------------------------------------------------------ timing

  /**
   * Times the GPU work `fn` records: GPU time from timestamp queries where the
   * adapter has them (summed over compute passes), and wall time always.
   */
  async time(fn: () => void | Promise<void>): Promise<Timing> {
    await this.sync();
    let set: GPUQuerySet | null = null;
    if (this.features.timestamp) {
      set = this.device.createQuerySet({ type: "timestamp", count: 2 * MAX_TIMED_PASSES });
      this.#timing = { set, passes: 0 };
    }
    const t0 = performance.now();
    try {
      await fn();
      this.flush();
      await this.device.queue.onSubmittedWorkDone();
    } finally {
      this.#endPass();
    }
    const wallMs = performance.now() - t0;
    const timing = this.#timing;
    this.#timing = null;
    await this.#throwPending();
    if (!set || !timing || timing.passes === 0) {
      set?.destroy();
      return { gpuMs: set ? 0 : null, wallMs };
    }
    const n = timing.passes * 2;
    const resolve = this.device.createBuffer({
      size: n * 8,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const enc = this.device.createCommandEncoder();
    enc.resolveQuerySet(set, 0, n, resolve, 0);
    const staging = this.device.createBuffer({
      size: n * 8,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    enc.copyBufferToBuffer(resolve, 0, staging, 0, n * 8);
    this.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const ticks = new BigUint64Array(staging.getMappedRange().slice(0));
    staging.unmap();
    staging.destroy();
    resolve.destroy();
    set.destroy();
    let ns = 0;
    for (let i = 0; i < timing.passes; i++) {
      const d = Number(ticks[2 * i + 1] - ticks[2 * i]);
      if (d > 0) ns += d;
    }
    // A truncated timing (too many passes) under-reports: fall back to wall time then.
    const gpuMs = timing.passes >= MAX_TIMED_PASSES ? null : ns / 1e6;
    return { gpuMs, wallMs };
  }

  // --------------------------------------------------------- capture/replay

  /**
   * Runs `fn` (which dispatches as usual) and records its dispatches, so that
   * `replay` can re-run them with one submit and no bind-group or uniform
   * work. Inputs that change between replays must be written with `write`
   * into tensors the recording binds; their shapes must not change.
   */
  async capture<T>(fn: () => T | Promise<T>): Promise<{ recording: Recording; result: T }> {
    this.flush();
    const rec = new Recording(this.device);
    this.#capture = rec;
    this.#uniforms = rec.uniforms;
    try {
      const result = await fn();
      this.flush();
      return { recording: rec, result };
    } finally {
      this.#capture = null;
      this.#uniforms = this.#transientUniforms;
    }
  }

  /**
   * Re-runs a recording's commands in one submit (dispatches share compute
   * passes; copies and clears sit between them in their recorded order).
   */
  replay(rec: Recording): void {
    this.#alive();
    let n = 0;
    for (const c of rec.commands) {
      if (c.kind === "dispatch") {
        const pass = this.#passEncoder();
        pass.setPipeline(c.pipeline);
        pass.setBindGroup(0, c.bindGroup);
        pass.dispatchWorkgroups(c.workgroups[0], c.workgroups[1], c.workgroups[2]);
        this.#kernelsInEncoder.push(c.name);
        n++;
      } else {
        this.#endPass();
        if (c.kind === "copy") {
          this.#enc().copyBufferToBuffer(c.src, c.srcOffset, c.dst, c.dstOffset, c.bytes);
        } else if (c.kind === "copyTex") {
          this.#enc().copyBufferToTexture(
            {
              buffer: c.src,
              offset: c.srcOffset,
              bytesPerRow: c.bytesPerRow,
              rowsPerImage: c.height,
            },
            { texture: c.dst },
            [c.width, c.height],
          );
        } else this.#enc().clearBuffer(c.buffer, c.offset, c.bytes);
      }
    }
    this.#stats.dispatches += n;
    this.#stats.openDispatches += n;
    this.flush();
  }

  /** Frees a recording: its uniforms, and its held buffers back to the pool. */
  disposeRecording(rec: Recording): void {
    for (const b of rec.held.splice(0)) this.pool.release(b);
    for (const [t, format] of rec.heldTextures) this.textures.releaseRaw(t, format);
    rec.heldTextures.clear();
    rec.freeTextures.clear();
    rec.uniforms.destroy();
  }

  // ------------------------------------------------------------------- state

  /** Counters of submits and dispatches. */
  stats(): SubmitStats {
    return { ...this.#stats };
  }

  #alive(): void {
    if (this.#destroyed) throw new GpuError("this Gpu was destroyed");
    if (this.#lost) {
      throw new DeviceLostError(
        `the GPU device was lost (${this.#lost.reason}): ${this.#lost.message || "no detail"}; ` +
          "create a new Gpu to continue",
      );
    }
  }

  /** Frees every buffer and the device. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.pool.destroy();
    this.textures.destroy();
    this.#transientUniforms.destroy();
    for (const l of this.#staging.values()) for (const b of l) b.destroy();
    this.device.destroy();
  }
}

/** Read-back bytes as the tensor's element type. */
function typed(t: GpuTensor, bytes: Uint8Array): Float32Array | Uint32Array | Int32Array {
  const n = t.numel;
  if (t.dtype === "u32") return new Uint32Array(bytes.buffer, 0, n);
  if (t.dtype === "i32") return new Int32Array(bytes.buffer, 0, n);
  return new Float32Array(bytes.buffer, 0, n);
}

function summarise(kernels: string[]): string {
  const counts = new Map<string, number>();
  for (const k of kernels) counts.set(k, (counts.get(k) ?? 0) + 1);
  const parts = [...counts].map(([k, n]) => (n > 1 ? `${k}×${n}` : k));
  return parts.length ? `kernels: ${parts.slice(0, 12).join(", ")}` : "no kernels";
}

let shared: Promise<Gpu> | null = null;

/** A process-wide Gpu, created on first use (tests, CLI and benchmarks share it). */
export function getGpu(opts?: GpuOptions): Promise<Gpu> {
  shared ??= Gpu.create(opts).catch((e) => {
    shared = null;
    throw e;
  });
  return shared;
}

export { ShaderCompileError };
