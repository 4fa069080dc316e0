/**
 * Uniform blocks: how a dispatch's scalars are packed (`Uniforms`) and where
 * each dispatch's block lives on the GPU (`UniformArena`).
 *
 * Invariant: `queue.writeBuffer` happens at once, while passes run at submit.
 * If dispatches shared one uniform buffer, a later write would overwrite the
 * parameters of an earlier dispatch before it ran. So every dispatch gets its
 * own 256-byte-aligned slot, staged on the CPU and uploaded just before the
 * submit; slots are reused only after that submit (queue order keeps the next
 * upload behind it).
 */
import { roundUp } from "./kernel.ts";

/**
 * Uniform block writer: packs u32/i32/f32 fields in declaration order with
 * 4-byte alignment (declare WGSL uniform structs with scalar fields only, in
 * the same order, so layouts agree): `new Uniforms(16).u32(n).f32(eps).bytes`.
 */
export class Uniforms {
  readonly #view: DataView;
  readonly bytes: Uint8Array;
  #at = 0;
  constructor(byteLength: number) {
    this.bytes = new Uint8Array(roundUp(Math.max(byteLength, 16), 16));
    this.#view = new DataView(this.bytes.buffer);
  }
  u32(v: number): this {
    this.#view.setUint32(this.#at, v >>> 0, true);
    this.#at += 4;
    return this;
  }
  i32(v: number): this {
    this.#view.setInt32(this.#at, v | 0, true);
    this.#at += 4;
    return this;
  }
  f32(v: number): this {
    this.#view.setFloat32(this.#at, v, true);
    this.#at += 4;
    return this;
  }
}

/** A uniform block of u32 values, in order. */
export function u32Uniforms(...values: number[]): Uint8Array {
  const p = new Uniforms(values.length * 4);
  for (const v of values) p.u32(v);
  return p.bytes;
}

/** Alignment of uniform slots: 256 is what most GPUs require (WebGPU's default limit). */
export const UNIFORM_SLOT_ALIGN = 256;
const CHUNK_BYTES = 64 * 1024;

/** A growable list of uniform chunks, with one slot per dispatch. */
export class UniformArena {
  readonly #device: GPUDevice;
  readonly #align: number;
  readonly #chunks: {
    gpu: GPUBuffer;
    cpu: Uint8Array<ArrayBuffer>;
    used: number;
    dirty: boolean;
  }[] = [];
  #current = 0;

  constructor(device: GPUDevice, align = UNIFORM_SLOT_ALIGN) {
    this.#device = device;
    this.#align = Math.max(align, 16);
  }

  /** Reserves a slot for `data` and returns where it will live on the GPU. */
  slot(data: Uint8Array): { buffer: GPUBuffer; offset: number; size: number } {
    const size = roundUp(data.byteLength, 16);
    if (size > CHUNK_BYTES) throw new RangeError(`uniform block of ${size} B is too large`);
    let c = this.#chunks[this.#current];
    let offset = c ? roundUp(c.used, this.#align) : 0;
    if (!c || offset + size > CHUNK_BYTES) {
      if (c) this.#current++;
      c = this.#chunks[this.#current];
      if (!c) {
        c = {
          gpu: this.#device.createBuffer({
            size: CHUNK_BYTES,
            usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
            label: `uniforms#${this.#chunks.length}`,
          }),
          cpu: new Uint8Array(CHUNK_BYTES),
          used: 0,
          dirty: false,
        };
        this.#chunks.push(c);
      }
      offset = 0;
    }
    c.cpu.set(data, offset);
    c.used = offset + size;
    c.dirty = true;
    return { buffer: c.gpu, offset, size };
  }

  /** Uploads every slot written since the last upload; call right before submit. */
  upload(queue: GPUQueue): void {
    for (const c of this.#chunks) {
      if (!c.dirty) continue;
      queue.writeBuffer(c.gpu, 0, c.cpu, 0, Math.ceil(c.used / 4) * 4);
      c.dirty = false;
    }
  }

  /** Makes every slot reusable; call right after the submit that used them. */
  reset(): void {
    for (const c of this.#chunks) c.used = 0;
    this.#current = 0;
  }

  /** Frees the GPU chunks. */
  destroy(): void {
    for (const c of this.#chunks) c.gpu.destroy();
    this.#chunks.length = 0;
  }
}
