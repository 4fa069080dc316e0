/**
 * Cell-image decoding and resizing, shared by the ingest (which encodes the
 * result into shards) and the loader (which hands raw RGB to the model).
 *
 * Every image takes the same road: decode (sharp/libvips; BMP through
 * `bmp.ts`), optional crop, alpha composited on white, any colour
 * space (grey, palette, CMYK, 16-bit) to 8-bit sRGB, then a square resize
 * to `size`×`size` that does not keep the aspect ratio, with one of two
 * filters (`CellOptions.resample`):
 * - "lanczos" (default; ingest and training): the reference's Pillow
 *   `resize((224, 224), LANCZOS)` (docs/recipe.md): libvips for reductions
 *   (equal to Pillow's to rounding), Pillow's own algorithm for enlargements
 *   (`resample.ts`), bit-exact.
 * - "bilinear" (evaluation, docs/evaluation.md): torchvision's `Resize((S, S))` on
 *   a PIL image, i.e. Pillow's antialiased `resize((S, S), BILINEAR)`, always
 *   with Pillow's own algorithm (`resample.ts`): bit-exact. libvips'
 *   linear kernel is off by up to 14 levels when reducing and ~90 when
 *   enlarging, so it only decodes, crops and converts on this road.
 *
 * Invariants:
 * - No EXIF auto-rotation: PIL does not apply it either, and cells have no
 *   up.
 * - Shrink-on-load is off, so a large JPEG gets the same Lanczos filter as a
 *   small one (libjpeg's DCT downscaling would be a different filter).
 * - A decoder warning (a truncated JPEG, a bad PNG chunk) is an error: a half-
 *   grey cell is worse than a missing one.
 * - Memory is bounded before it is spent (`decode_budget.ts`): a source over
 *   `MAX_IMAGE_PIXELS` is refused from its header (sharp's `limitInputPixels`
 *   too), every decode leases its pixel memory from a budget shared by all
 *   images in flight, and a file read leases its bytes. Only JPEG, PNG, TIFF
 *   and BMP are decoded; anything else libvips could open (SVG, GIF, …) is
 *   refused.
 */
import sharp from "npm:sharp@0.34.5";
import { BmpError, bmpSize, decodeBmp, isBmp } from "./bmp.ts";
import {
  BYTES_PER_PIXEL,
  FILE_BUDGET,
  MAX_IMAGE_FILE_BYTES,
  MAX_IMAGE_PIXELS,
  PIXEL_BUDGET,
} from "./decode_budget.ts";
import { RESAMPLE_FILTERS, type ResampleFilter, resizeRgb } from "./resample.ts";

/** Why an image was refused; `reason` is what errors.jsonl records. */
export class ImageError extends Error {
  override name = "ImageError";
}

/** What the decoder learnt about the source. */
export interface ImageInfo {
  /** Original width and height, before any crop or resize. */
  width: number;
  height: number;
  /** "jpeg", "png", "tiff", "bmp", … */
  format: string;
  /** Source colour space: "srgb", "b-w", "cmyk", "rgb16", "grey16", … */
  space: string;
  channels: number;
  /** Bits per sample of the source (8 or 16 for the common cases). */
  bits: number;
  isPalette: boolean;
}

/** A pixel rectangle in source coordinates. */
export interface Region {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** How to turn a source image into a cell image. */
export interface CellOptions {
  /** Output side in pixels (square). */
  size: number;
  /**
   * Crop this region first (voc boxes): clamped to the image, or with `pad`
   * kept whole, its part outside the image filled.
   */
  crop?: Region;
  /**
   * How a crop that leaves the image is filled: "edge" repeats the image's
   * outermost pixels (the smear's background goes on; no coloured frame a
   * model could learn). Without it the crop is clamped to the image.
   */
  pad?: "edge";
  /** Refuse sources (or crops) whose shorter side is below this (default 1). */
  minSize?: number;
  /**
   * Resize filter, Pillow's definition (default "lanczos", what ingest and
   * training use; "bilinear" is the evaluation protocol's torchvision
   * `Resize`). A source already `size`×`size` is returned unfiltered by both.
   */
  resample?: ResampleFilter;
  /**
   * Runs the resizes done in JavaScript (`resizeRgb`'s signature; default:
   * `resizeRgb` on this thread). The loader passes a `ResizePool`'s, so they
   * run on worker threads; the bytes are the same.
   */
  resize?: Resizer;
}

/** `resizeRgb`, possibly elsewhere (a worker). */
export type Resizer = (...args: Parameters<typeof resizeRgb>) => Uint8Array | Promise<Uint8Array>;

/** Output encoding of an ingested cell. */
export interface EncodeOptions extends CellOptions {
  format: "png" | "jpg";
  /** JPEG quality 1–100 (ignored for PNG). */
  quality?: number;
}

/** Pixels added on each side of a crop that left the image (`CellOptions.pad`). */
export interface Padding {
  left: number;
  top: number;
  right: number;
  bottom: number;
}

/** An encoded cell image plus what was learnt about its source. */
export interface EncodedCell {
  data: Uint8Array;
  info: ImageInfo;
  /** The region actually cropped (after clamping; with `pad`, whole, in integer pixels), if any. */
  crop?: Region;
  /** With `pad`: the part of `crop` outside the image, filled. */
  padding?: Padding;
}

/** Raw RGB pixels [size, size, 3] of a cell plus its source info. */
export interface RgbCell {
  pixels: Uint8Array;
  info: ImageInfo;
  crop?: Region;
  padding?: Padding;
}

const BITS: Record<string, number> = {
  uchar: 8,
  char: 8,
  ushort: 16,
  short: 16,
  uint: 32,
  int: 32,
  float: 32,
  double: 64,
};

/** Describes an error thrown by sharp/libvips in the words errors.jsonl uses. */
function describeSharpError(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  if (/unsupported image format/i.test(msg)) return "not an image (unrecognised format)";
  if (/empty/i.test(msg)) return "empty file (0 bytes)";
  if (/exceeds pixel limit/i.test(msg)) {
    return `image over the limit of ${MAX_IMAGE_PIXELS} pixels (2^${Math.log2(MAX_IMAGE_PIXELS)})`;
  }
  // libvips keeps one error buffer per process: with images decoding in
  // parallel the warning's own text can be lost, leaving only sharp's note.
  if (/failOn/.test(msg)) return "corrupt or truncated image (the decoder warned)";
  return `corrupt or truncated image: ${msg.replace(/\s+/g, " ").trim()}`;
}

/** Formats decoded (sharp's names); bmp is decoded here. */
const FORMATS = new Set(["jpeg", "png", "tiff"]);

/** An image whose header has been read; `load` starts decoding (BMP: decodes here). */
interface Opened {
  info: ImageInfo;
  load(): sharp.Sharp;
}

/**
 * Opens an image: header facts, checked against the pixel cap, and a way to
 * get a sharp pipeline on its pixels. BMP is decoded here (on `load`) and
 * handed to sharp as raw pixels.
 */
async function open(bytes: Uint8Array): Promise<Opened> {
  if (bytes.length === 0) throw new ImageError("empty file (0 bytes)");
  if (isBmp(bytes)) {
    let size;
    try {
      size = bmpSize(bytes); // every header and size check, before any pixel buffer
    } catch (e) {
      if (e instanceof BmpError) throw new ImageError(`corrupt or unsupported BMP: ${e.message}`);
      throw e;
    }
    return {
      info: {
        width: size.width,
        height: size.height,
        format: "bmp",
        space: "srgb",
        channels: size.alpha ? 4 : 3,
        bits: 8,
        isPalette: size.bpp <= 8,
      },
      load: () => {
        let bmp;
        try {
          bmp = decodeBmp(bytes);
        } catch (e) {
          if (e instanceof BmpError) {
            throw new ImageError(`corrupt or unsupported BMP: ${e.message}`);
          }
          throw e;
        }
        return sharp(bmp.data, {
          raw: { width: bmp.width, height: bmp.height, channels: bmp.channels },
        });
      },
    };
  }
  const img = sharp(bytes, {
    failOn: "warning",
    sequentialRead: true,
    limitInputPixels: MAX_IMAGE_PIXELS,
  });
  let m: sharp.Metadata;
  try {
    m = await img.metadata();
  } catch (e) {
    throw new ImageError(describeSharpError(e));
  }
  if (!m.width || !m.height || !m.format) throw new ImageError("not an image (no dimensions)");
  if (!FORMATS.has(m.format)) {
    throw new ImageError(`unsupported image format '${m.format}' (JPEG, PNG, TIFF or BMP)`);
  }
  checkPixels(m.width, m.height);
  return {
    info: {
      width: m.width,
      height: m.height,
      format: m.format,
      space: m.space ?? "unknown",
      channels: m.channels ?? 0,
      bits: BITS[m.depth ?? "uchar"] ?? 8,
      isPalette: Boolean(m.isPalette),
    },
    load: () => img,
  };
}

/** Refuses an image (or padded crop) of more than `MAX_IMAGE_PIXELS`. */
function checkPixels(width: number, height: number, what = "image"): void {
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new ImageError(
      `${what} of ${width}x${height} has ${width * height} pixels, over the limit of ` +
        `${MAX_IMAGE_PIXELS} (2^${Math.log2(MAX_IMAGE_PIXELS)})`,
    );
  }
}

/** Header facts of an image without decoding its pixels (BMP: header only too). */
export async function probeImage(bytes: Uint8Array): Promise<ImageInfo> {
  return (await open(bytes)).info;
}

/** Clamps `r` to the image; throws when nothing of it is inside. */
export function clampRegion(r: Region, width: number, height: number): Region {
  const left = Math.max(0, Math.floor(r.left));
  const top = Math.max(0, Math.floor(r.top));
  const right = Math.min(width, Math.ceil(r.left + r.width));
  const bottom = Math.min(height, Math.ceil(r.top + r.height));
  if (right <= left || bottom <= top) {
    throw new ImageError(
      `crop ${r.width}x${r.height}+${r.left}+${r.top} lies outside the ${width}x${height} image`,
    );
  }
  return { left, top, width: right - left, height: bottom - top };
}

/**
 * `r` rounded out to whole pixels and kept whole, with how much of it lies
 * outside the image on each side; throws when nothing of it is inside.
 */
export function padRegion(
  r: Region,
  width: number,
  height: number,
): { crop: Region; inner: Region; padding: Padding } {
  const inner = clampRegion(r, width, height);
  const left = Math.floor(r.left);
  const top = Math.floor(r.top);
  const right = Math.ceil(r.left + r.width);
  const bottom = Math.ceil(r.top + r.height);
  return {
    crop: { left, top, width: right - left, height: bottom - top },
    inner,
    padding: {
      left: inner.left - left,
      top: inner.top - top,
      right: right - (inner.left + inner.width),
      bottom: bottom - (inner.top + inner.height),
    },
  };
}

/**
 * Extends RGB pixels `w`×`h` by `p` on each side, repeating the outermost
 * row or column (the corners repeat the corner pixel).
 */
export function padEdges(rgb: Uint8Array, w: number, h: number, p: Padding): Uint8Array {
  const W = w + p.left + p.right;
  const H = h + p.top + p.bottom;
  const out = new Uint8Array(W * H * 3);
  for (let y = 0; y < H; y++) {
    const sy = Math.min(h - 1, Math.max(0, y - p.top));
    const src = sy * w * 3;
    const dst = y * W * 3;
    const first = rgb.subarray(src, src + 3);
    const last = rgb.subarray(src + (w - 1) * 3, src + w * 3);
    for (let x = 0; x < p.left; x++) out.set(first, dst + x * 3);
    out.set(rgb.subarray(src, src + w * 3), dst + p.left * 3);
    for (let x = p.left + w; x < W; x++) out.set(last, dst + x * 3);
  }
  return out;
}

/**
 * The final `size`×`size` RGB image of a cell: still a libvips pipeline
 * (`img`), or pixels already computed here (`pixels`).
 */
type Cell =
  & { info: ImageInfo; crop?: Region; padding?: Padding }
  & (
    | { img: sharp.Sharp; pixels?: undefined }
    | { img?: undefined; pixels: Uint8Array }
  );

/**
 * The shared part of both roads: crop (and pad), size check, flatten, sRGB,
 * resize, then `use` on the result; the decode's memory is leased from
 * `PIXEL_BUDGET` (after the header checks, before any pixels) until `use`
 * is done. Lanczos reductions run in libvips (Lanczos-3, as Pillow's to
 * rounding); a Lanczos resize that enlarges either axis, and every bilinear
 * resize, decodes to RGB at the source size and resamples with `resizeRgb`,
 * Pillow's algorithm (libvips enlarges half a pixel off and rounds its linear
 * kernel differently; see `resample.ts`). A padded crop is decoded to
 * RGB, padded, and resized from there the same way.
 */
async function withCell<T>(
  bytes: Uint8Array,
  opts: CellOptions,
  use: (cell: Cell) => Promise<T>,
): Promise<T> {
  if (!Number.isInteger(opts.size) || opts.size < 1) {
    throw new RangeError(`cell size must be a positive integer, got ${opts.size}`);
  }
  const resample = opts.resample ?? "lanczos";
  const resize = opts.resize ?? resizeRgb;
  if (!RESAMPLE_FILTERS.includes(resample)) {
    throw new RangeError(
      `cell resample must be ${RESAMPLE_FILTERS.map((f) => `"${f}"`).join(" or ")}, ` +
        `got ${JSON.stringify(resample)}`,
    );
  }
  const opened = await open(bytes);
  const { info } = opened;
  let crop: Region | undefined;
  let inner: Region | undefined;
  let padding: Padding | undefined;
  if (opts.crop && opts.pad === "edge") {
    ({ crop, inner, padding } = padRegion(opts.crop, info.width, info.height));
    checkPixels(crop.width, crop.height, "padded crop");
    if (padding.left + padding.top + padding.right + padding.bottom === 0) padding = undefined;
  } else if (opts.crop) crop = inner = clampRegion(opts.crop, info.width, info.height);
  const w = inner?.width ?? info.width;
  const h = inner?.height ?? info.height;
  const minSize = opts.minSize ?? 1;
  if (Math.min(w, h) < minSize) {
    const what = crop ? "crop" : "image";
    throw new ImageError(`${what} is ${w}x${h} px, smaller than --min-size ${minSize}`);
  }
  const S = opts.size;
  const padded = padding ? crop!.width * crop!.height * 3 * 2 : 0;
  const release = await PIXEL_BUDGET.lease(
    info.width * info.height * BYTES_PER_PIXEL + padded + S * S * 3 * 2,
  );
  try {
    const img = opened.load();
    if (inner) img.extract(inner);
    img.flatten({ background: { r: 255, g: 255, b: 255 } });
    if (padding) {
      const rgb = padEdges(
        await rawRgb(img.toColourspace("srgb").removeAlpha(), w, h),
        w,
        h,
        padding,
      );
      const { width: cw, height: ch } = crop!;
      if (resample === "lanczos" && S <= cw && S <= ch) {
        const sized = sharp(rgb, { raw: { width: cw, height: ch, channels: 3 } })
          .resize(S, S, { fit: "fill", kernel: "lanczos3", fastShrinkOnLoad: false });
        return await use({ img: sized, info, crop, padding });
      }
      const pixels = cw === S && ch === S ? rgb : await resize(rgb, cw, ch, S, S, resample);
      return await use({ pixels, info, crop, padding });
    }
    if (resample === "lanczos" && S <= w && S <= h) {
      img
        .resize(S, S, { fit: "fill", kernel: "lanczos3", fastShrinkOnLoad: false })
        .toColourspace("srgb")
        .removeAlpha();
      return await use({ img, info, crop });
    }
    const rgb = await rawRgb(img.toColourspace("srgb").removeAlpha(), w, h);
    if (w === S && h === S) return await use({ pixels: rgb, info, crop }); // Pillow: a copy
    return await use({ pixels: await resize(rgb, w, h, S, S, resample), info, crop });
  } finally {
    release();
  }
}

/** Runs a pipeline to raw RGB bytes, checking the shape it promised. */
async function rawRgb(img: sharp.Sharp, w: number, h: number): Promise<Uint8Array> {
  let res;
  try {
    res = await img.raw().toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw new ImageError(describeSharpError(e));
  }
  const { data, info: out } = res;
  if (out.channels !== 3 || out.width !== w || out.height !== h) {
    throw new ImageError(
      `decoder returned ${out.width}x${out.height}x${out.channels}, expected ${w}x${h}x3`,
    );
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Decodes, crops, converts and resizes an image, then encodes it as PNG or JPEG. */
export function encodeCell(bytes: Uint8Array, opts: EncodeOptions): Promise<EncodedCell> {
  return withCell(bytes, opts, async (cell) => {
    const { info, crop, padding } = cell;
    const img = cell.img ??
      sharp(cell.pixels, { raw: { width: opts.size, height: opts.size, channels: 3 } });
    if (opts.format === "jpg") {
      img.jpeg({ quality: opts.quality ?? 95, chromaSubsampling: "4:4:4" });
    } // Adaptive row filters, as Pillow and libpng choose: half the size of
    // libvips' unfiltered default (45 vs 87 KiB per 224 px cell) for ~20% more time.
    // zlib-ng level 4 with them is as small as Pillow's level 6 (45.4 vs 45.1 KiB per
    // 360×363 cell) and ~30 % faster than level 6 (9.6 → 7.2 ms per cell, one thread).
    else img.png({ adaptiveFiltering: true, compressionLevel: 4 });
    try {
      const data = await img.toBuffer();
      return {
        data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
        info,
        crop,
        ...(padding ? { padding } : {}),
      };
    } catch (e) {
      throw new ImageError(describeSharpError(e));
    }
  });
}

/** Decodes, crops, converts and resizes an image to raw RGB [size, size, 3]. */
export function decodeCell(bytes: Uint8Array, opts: CellOptions): Promise<RgbCell> {
  return withCell(bytes, opts, async (cell) => {
    const pixels = cell.pixels ?? (await rawRgb(cell.img, opts.size, opts.size));
    return {
      pixels,
      info: cell.info,
      crop: cell.crop,
      ...(cell.padding ? { padding: cell.padding } : {}),
    };
  });
}

/**
 * Reads a file and describes read failures (missing, a directory, no
 * permission, over `MAX_IMAGE_FILE_BYTES`) plainly.
 */
export async function readImageFile(path: string): Promise<Uint8Array> {
  return await withImageFile(path, (bytes) => Promise.resolve(bytes));
}

/**
 * Reads an image file and runs `use` on its bytes while they are leased from
 * `FILE_BUDGET` (the size is checked and leased before the read), so files
 * in flight stay within the budget; read failures as `readImageFile`.
 */
export async function withImageFile<T>(
  path: string,
  use: (bytes: Uint8Array) => Promise<T>,
): Promise<T> {
  let size: number;
  try {
    const st = await Deno.stat(path);
    if (st.isDirectory) throw new Deno.errors.IsADirectory(path);
    size = st.size;
  } catch (e) {
    throw readError(e);
  }
  if (size > MAX_IMAGE_FILE_BYTES) {
    throw new ImageError(
      `file of ${size} B is over the ${MAX_IMAGE_FILE_BYTES >> 20} MiB limit for one image`,
    );
  }
  const release = await FILE_BUDGET.lease(size);
  try {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      throw readError(e);
    }
    if (bytes.length > MAX_IMAGE_FILE_BYTES) {
      throw new ImageError(`file grew to ${bytes.length} B while read; over the limit`);
    }
    return await use(bytes);
  } finally {
    release();
  }
}

function readError(e: unknown): ImageError {
  if (e instanceof Deno.errors.NotFound) return new ImageError("unreadable: file not found");
  if (e instanceof Deno.errors.PermissionDenied) {
    return new ImageError("unreadable: permission denied");
  }
  if (e instanceof Deno.errors.IsADirectory) return new ImageError("unreadable: is a directory");
  return new ImageError(`unreadable: ${e instanceof Error ? e.message : String(e)}`);
}

/** Revision of the cell-making rules (see `imageCodecVersion`). */
const CELL_REVISION = 2;

/**
 * What produces the pixels and the encoded bytes: this module's revision and
 * the libvips version. Part of every shard's plan hash, so a resumed run never
 * mixes shards made by different code. Bump `CELL_REVISION` whenever the same
 * input would give different bytes (resize rule, codec settings).
 */
export function imageCodecVersion(): string {
  return `cells r${CELL_REVISION}, libvips ${sharp.versions.vips}`;
}

/**
 * Sets how many libvips threads one image may use. Ingest and loader run many
 * images at once (one per worker), so one thread per image avoids
 * oversubscribing the cores; returns the previous value.
 */
export function setImageThreads(n: number): number {
  const prev = sharp.concurrency();
  sharp.concurrency(n);
  return prev;
}
