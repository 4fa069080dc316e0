/**
 * The parameter arena: every parameter of a model lives in a few large f32
 * buffers ("chunks"), back to back, with the gradient (and, for training, the
 * optimiser state) in buffers of the same layout. Whole-model kernels (AdamW,
 * EMA, gradient norms) then run one dispatch per chunk instead of one per
 * tensor, and a parameter is just a view.
 *
 * Invariants: a parameter never straddles two chunks; offsets are aligned so
 * a parameter view can be bound on its own (minStorageBufferOffsetAlignment);
 * a chunk fits one binding unless a single parameter is larger (then it gets
 * a chunk of its own and kernels that cannot split it say so).
 */
import type { Gpu } from "../kernels/runtime.ts";
import { GpuTensor, numel } from "../kernels/tensor.ts";

/** What a parameter is, before it has a place. */
export interface ParamSpec {
  /** State-dict key, e.g. "blocks.0.attn.qkv.weight". */
  name: string;
  shape: readonly number[];
  /** False for buffers that are loaded but never trained. */
  trainable?: boolean;
}

/** A parameter's place in the arena. */
export interface Param {
  readonly name: string;
  readonly shape: readonly number[];
  readonly numel: number;
  readonly chunk: number;
  /** Element offset in its chunk. */
  readonly offset: number;
  readonly trainable: boolean;
  /** View of the value. */
  readonly value: GpuTensor;
  /** View of the gradient (same place in the gradient chunk); a zero-size dummy when the arena has no gradients. */
  readonly grad: GpuTensor;
}

/** One chunk of the arena. */
export interface ArenaChunk {
  /** Elements used (including alignment padding). */
  readonly elements: number;
  readonly value: GpuTensor;
  readonly grad: GpuTensor | null;
}

/** Options of `ParamArena.create`. */
export interface ArenaOptions {
  /** Allocate gradient chunks of the same layout. */
  grads?: boolean;
  /** Upper bound of a chunk's bytes (default: the binding limit, at most 128 MiB). */
  maxChunkBytes?: number;
}

/** Parameters of one model in a few buffers. */
export class ParamArena {
  readonly gpu: Gpu;
  readonly chunks: ArenaChunk[];
  readonly params: ReadonlyMap<string, Param>;
  /** Parameters in layout order. */
  readonly order: readonly Param[];

  private constructor(gpu: Gpu, chunks: ArenaChunk[], params: Param[]) {
    this.gpu = gpu;
    this.chunks = chunks;
    this.order = params;
    this.params = new Map(params.map((p) => [p.name, p]));
  }

  /** Lays out `specs` and allocates (zeroed) value and, if asked, gradient chunks. */
  static create(gpu: Gpu, specs: readonly ParamSpec[], opts: ArenaOptions = {}): ParamArena {
    const align = Math.max(64, gpu.limits.minStorageBufferOffsetAlignment / 4);
    const maxBytes = opts.maxChunkBytes ??
      Math.min(gpu.limits.maxStorageBufferBindingSize, 128 * 2 ** 20);
    const maxElems = Math.floor(maxBytes / 4 / align) * align;
    const seen = new Set<string>();
    const layout: { spec: ParamSpec; chunk: number; offset: number; n: number }[] = [];
    const sizes: number[] = [];
    let chunk = -1;
    let used = maxElems + 1;
    for (const spec of specs) {
      if (seen.has(spec.name)) throw new Error(`parameter '${spec.name}' declared twice`);
      seen.add(spec.name);
      const n = numel(spec.shape);
      const padded = Math.ceil(Math.max(n, 1) / align) * align;
      if (used + padded > maxElems) {
        chunk++;
        used = 0;
        sizes.push(0);
      }
      layout.push({ spec, chunk, offset: used, n });
      used += padded;
      sizes[chunk] = used;
    }
    const chunks: ArenaChunk[] = sizes.map((elements, i) => ({
      elements,
      value: gpu.zeros([elements], "f32", `arena#${i}`),
      grad: opts.grads ? gpu.zeros([elements], "f32", `arena-grad#${i}`) : null,
    }));
    const params: Param[] = layout.map(({ spec, chunk, offset, n }) => {
      const c = chunks[chunk];
      return {
        name: spec.name,
        shape: [...spec.shape],
        numel: n,
        chunk,
        offset,
        trainable: spec.trainable ?? true,
        value: c.value.view(offset, spec.shape),
        grad: c.grad ? c.grad.view(offset, spec.shape) : c.value.view(0, [0]),
      };
    });
    return new ParamArena(gpu, chunks, params);
  }

  /** Total parameter elements (without padding). */
  get size(): number {
    let n = 0;
    for (const p of this.order) n += p.numel;
    return n;
  }

  /** Whether the arena has gradient buffers. */
  get hasGrads(): boolean {
    return this.chunks.length > 0 && this.chunks[0].grad !== null;
  }

  /** The named parameter, or an error listing near names. */
  get(name: string): Param {
    const p = this.params.get(name);
    if (!p) {
      const near = [...this.params.keys()].filter((k) =>
        k.split(".").pop() === name.split(".").pop()
      )
        .slice(0, 5);
      throw new Error(
        `no parameter '${name}' in this model` +
          (near.length ? ` (similar: ${near.join(", ")})` : ""),
      );
    }
    return p;
  }

  /** Uploads a parameter's values (flushes first if the open encoder reads them). */
  set(name: string, data: Float32Array): void {
    const p = this.get(name);
    if (data.length !== p.numel) {
      throw new RangeError(
        `parameter '${name}' has ${p.numel} elements [${p.shape}], got ${data.length}`,
      );
    }
    this.gpu.write(p.value, data);
  }

  /** Reads one parameter back. */
  async read(name: string): Promise<Float32Array> {
    return await this.gpu.readF32(this.get(name).value);
  }

  /** Reads one parameter's gradient back. */
  async readGrad(name: string): Promise<Float32Array> {
    if (!this.hasGrads) throw new Error("this arena has no gradients");
    return await this.gpu.readF32(this.get(name).grad);
  }

  /** Reads every parameter (in layout order), one chunk read at a time. */
  async readAll(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (let c = 0; c < this.chunks.length; c++) {
      const data = await this.gpu.readF32(this.chunks[c].value);
      for (const p of this.order) {
        if (p.chunk === c) out.set(p.name, data.slice(p.offset, p.offset + p.numel));
      }
    }
    return out;
  }

  /** Zeroes every gradient chunk (in encoder order). */
  zeroGrads(): void {
    for (const c of this.chunks) if (c.grad) this.gpu.clear(c.grad);
  }

  /** Frees the chunks. */
  destroy(): void {
    for (const c of this.chunks) this.gpu.release(c.value, c.grad);
  }
}
