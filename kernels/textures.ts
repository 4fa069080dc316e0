/**
 * 2-D textures as kernel operands: `GpuTexture` (a pooled texture and its view) and the pool
 * that reuses them by format and size.
 *
 * Why textures at all: on llvmpipe every storage-buffer load is a loop over the SIMD lanes with
 * a branch and a bounds check per component, while a `textureLoad` is a branch-free gather
 * (measured: a matmul reading both operands from rgba32float textures reaches ~0.6 of the FMA
 * peak against ~0.4 from storage buffers). A texel of rgba32float is 4 consecutive elements of
 * a matrix row, so a row-major matrix [rows, cols] is a (cols/4) × rows texture.
 *
 * Invariant: textures here are only ever written by GPU commands (buffer-to-texture copies and
 * kernels), which run in encoder order; so, unlike buffers, a released texture may be handed
 * out again at once, within the same submit.
 */
import { trimFree } from "./pool.ts";

/** The formats bloom binds: rgba32float (4 f32 per texel) and rgba32uint (8 packed halves). */
export type TextureFormat = "rgba32float" | "rgba32uint";

/** Bytes per texel of each format. */
export const TEXEL_BYTES: { readonly [F in TextureFormat]: number } = {
  rgba32float: 16,
  rgba32uint: 16,
};

const TEXTURE_USAGE = 0x04 /* TEXTURE_BINDING */ | 0x08 /* STORAGE_BINDING */ |
  0x02 /* COPY_DST */ | 0x01; /* COPY_SRC */

/** A texture and the view kernels bind. */
export class GpuTexture {
  readonly texture: GPUTexture;
  readonly view: GPUTextureView;
  readonly width: number;
  readonly height: number;
  readonly format: TextureFormat;
  readonly pooled: boolean;
  #released = false;

  constructor(texture: GPUTexture, format: TextureFormat, pooled = true) {
    this.texture = texture;
    this.view = texture.createView();
    this.width = texture.width;
    this.height = texture.height;
    this.format = format;
    this.pooled = pooled;
  }

  /** Bytes of texel data. */
  get bytes(): number {
    return this.width * this.height * TEXEL_BYTES[this.format];
  }

  get released(): boolean {
    return this.#released;
  }

  /** Called by the runtime when the texture goes back to the pool. */
  markReleased(): void {
    if (this.#released) {
      throw new Error(`texture ${this.width}×${this.height} ${this.format} released twice`);
    }
    this.#released = true;
  }
}

/** Textures reused by (format, width, height); see the invariant at the top of this file. */
export class TexturePool {
  readonly #device: GPUDevice;
  readonly #free = new Map<string, GPUTexture[]>();
  #freeBytes = 0;
  /** Free bytes kept; above this, free textures are destroyed (largest first). */
  maxFreeBytes: number;
  /** Textures created over the pool's life (tests). */
  created = 0;

  constructor(device: GPUDevice, maxFreeBytes = 2 ** 28) {
    this.#device = device;
    this.maxFreeBytes = maxFreeBytes;
  }

  /** A texture of exactly `width` × `height` texels. */
  acquire(width: number, height: number, format: TextureFormat, label = ""): GpuTexture {
    const key = `${format}:${width}x${height}`;
    let t = this.#free.get(key)?.pop();
    if (t) {
      this.#freeBytes -= width * height * TEXEL_BYTES[format];
    } else {
      t = this.#device.createTexture({
        size: [width, height],
        format,
        usage: TEXTURE_USAGE,
        label,
      });
      this.created++;
    }
    return new GpuTexture(t, format);
  }

  /** Returns a texture to the pool (trimming the free list past `maxFreeBytes`). */
  release(t: GpuTexture): void {
    const key = `${t.format}:${t.width}x${t.height}`;
    const list = this.#free.get(key);
    if (list) list.push(t.texture);
    else this.#free.set(key, [t.texture]);
    this.#freeBytes += t.bytes;
  }

  /** Takes a raw texture back (a recording's held textures). */
  releaseRaw(texture: GPUTexture, format: TextureFormat): void {
    this.release(new GpuTexture(texture, format));
  }

  /**
   * Destroys free textures beyond `keepBytes`. Call only after a submit: a texture released in
   * the open encoder may still be used by it.
   */
  trim(keepBytes = this.maxFreeBytes): void {
    this.#freeBytes = trimFree(this.#free, this.#freeBytes, keepBytes, texBytes);
  }

  /** Destroys every free texture. */
  destroy(): void {
    for (const list of this.#free.values()) for (const t of list) t.destroy();
    this.#free.clear();
    this.#freeBytes = 0;
  }
}

function texBytes(key: string): number {
  const m = /^(\w+):(\d+)x(\d+)$/.exec(key)!;
  return Number(m[2]) * Number(m[3]) * TEXEL_BYTES[m[1] as TextureFormat];
}
