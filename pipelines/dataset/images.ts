/**
 * Cell-image decoding and resizing, shared by the ingest (which encodes the
 * result into shards) and the loader (which hands raw RGB to the model).
 *
 * Every image takes the same road: decode (sharp/libvips; BMP through
 * `ingest/bmp.ts`), optional crop, alpha composited on white, any colour
 * space (grey, palette, CMYK, 16-bit) to 8-bit sRGB, then a square resize
 * to `size`×`size` that does not keep the aspect ratio, with one of two
 * filters (`CellOptions.resample`):
 * - "lanczos" (default; ingest and training): the reference's Pillow
 *   `resize((224, 224), LANCZOS)` (RECIPE.md §2): libvips for reductions
 *   (equal to Pillow's to rounding), Pillow's own algorithm for enlargements
 *   (`ingest/resample.ts`), bit-exact.
 * - "bilinear" (evaluation, RECIPE.md §3): torchvision's `Resize((S, S))` on
 *   a PIL image, i.e. Pillow's antialiased `resize((S, S), BILINEAR)`, always
 *   with Pillow's own algorithm (`ingest/resample.ts`): bit-exact. libvips'
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
 */
import sharp from "sharp";
import { BmpError, bmpSize, decodeBmp, isBmp } from "./bmp.ts";
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
  /** Crop this region first (voc boxes); clamped to the image. */
  crop?: Region;
  /** Refuse sources (or crops) whose shorter side is below this (default 1). */
  minSize?: number;
  /**
   * Resize filter, Pillow's definition (default "lanczos", what ingest and
   * training use; "bilinear" is the evaluation protocol's torchvision
   * `Resize`). A source already `size`×`size` is returned unfiltered by both.
   */
  resample?: ResampleFilter;
}

/** Output encoding of an ingested cell. */
export interface EncodeOptions extends CellOptions {
  format: "png" | "jpg";
  /** JPEG quality 1–100 (ignored for PNG). */
  quality?: number;
}

/** An encoded cell image plus what was learnt about its source. */
export interface EncodedCell {
  data: Uint8Array;
  info: ImageInfo;
  /** The region actually cropped (after clamping), if any. */
  crop?: Region;
}

/** Raw RGB pixels [size, size, 3] of a cell plus its source info. */
export interface RgbCell {
  pixels: Uint8Array;
  info: ImageInfo;
  crop?: Region;
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
  // libvips keeps one error buffer per process: with images decoding in
  // parallel the warning's own text can be lost, leaving only sharp's note.
  if (/failOn/.test(msg)) return "corrupt or truncated image (the decoder warned)";
  return `corrupt or truncated image: ${msg.replace(/\s+/g, " ").trim()}`;
}

/**
 * Opens an image: a sharp pipeline on its pixels plus header facts. BMP is
 * decoded here and handed to sharp as raw pixels.
 */
async function open(bytes: Uint8Array): Promise<{ img: sharp.Sharp; info: ImageInfo }> {
  if (bytes.length === 0) throw new ImageError("empty file (0 bytes)");
  if (isBmp(bytes)) {
    let bmp;
    try {
      bmpSize(bytes); // header errors first, with their own message
      bmp = decodeBmp(bytes);
    } catch (e) {
      if (e instanceof BmpError) throw new ImageError(`corrupt or unsupported BMP: ${e.message}`);
      throw e;
    }
    const img = sharp(bmp.data, {
      raw: { width: bmp.width, height: bmp.height, channels: bmp.channels },
    });
    return {
      img,
      info: {
        width: bmp.width,
        height: bmp.height,
        format: "bmp",
        space: "srgb",
        channels: bmp.channels,
        bits: 8,
        isPalette: false,
      },
    };
  }
  const img = sharp(bytes, { failOn: "warning", sequentialRead: true });
  let m: sharp.Metadata;
  try {
    m = await img.metadata();
  } catch (e) {
    throw new ImageError(describeSharpError(e));
  }
  if (!m.width || !m.height || !m.format) throw new ImageError("not an image (no dimensions)");
  return {
    img,
    info: {
      width: m.width,
      height: m.height,
      format: m.format,
      space: m.space ?? "unknown",
      channels: m.channels ?? 0,
      bits: BITS[m.depth ?? "uchar"] ?? 8,
      isPalette: Boolean(m.isPalette),
    },
  };
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
 * The final `size`×`size` RGB image of a cell: still a libvips pipeline
 * (`img`), or pixels already computed here (`pixels`).
 */
type Cell =
  & { info: ImageInfo; crop?: Region }
  & (
    | { img: sharp.Sharp; pixels?: undefined }
    | { img?: undefined; pixels: Uint8Array }
  );

/**
 * The shared part of both roads: crop, size check, flatten, sRGB, resize.
 * Lanczos reductions run in libvips (Lanczos-3, as Pillow's to rounding); a
 * Lanczos resize that enlarges either axis, and every bilinear resize,
 * decodes to RGB at the source size and resamples with `resizeRgb`, Pillow's
 * algorithm (libvips enlarges half a pixel off and rounds its linear kernel
 * differently; see `ingest/resample.ts`).
 */
async function cellPipeline(bytes: Uint8Array, opts: CellOptions): Promise<Cell> {
  if (!Number.isInteger(opts.size) || opts.size < 1) {
    throw new RangeError(`cell size must be a positive integer, got ${opts.size}`);
  }
  const resample = opts.resample ?? "lanczos";
  if (!RESAMPLE_FILTERS.includes(resample)) {
    throw new RangeError(
      `cell resample must be ${RESAMPLE_FILTERS.map((f) => `"${f}"`).join(" or ")}, ` +
        `got ${JSON.stringify(resample)}`,
    );
  }
  const { img, info } = await open(bytes);
  const crop = opts.crop ? clampRegion(opts.crop, info.width, info.height) : undefined;
  const w = crop?.width ?? info.width;
  const h = crop?.height ?? info.height;
  const minSize = opts.minSize ?? 1;
  if (Math.min(w, h) < minSize) {
    const what = crop ? "crop" : "image";
    throw new ImageError(`${what} is ${w}x${h} px, smaller than --min-size ${minSize}`);
  }
  if (crop) img.extract(crop);
  img.flatten({ background: { r: 255, g: 255, b: 255 } });
  if (resample === "lanczos" && opts.size <= w && opts.size <= h) {
    img
      .resize(opts.size, opts.size, { fit: "fill", kernel: "lanczos3", fastShrinkOnLoad: false })
      .toColourspace("srgb")
      .removeAlpha();
    return { img, info, crop };
  }
  const rgb = await rawRgb(img.toColourspace("srgb").removeAlpha(), w, h);
  if (w === opts.size && h === opts.size) return { pixels: rgb, info, crop }; // Pillow: a copy
  return { pixels: resizeRgb(rgb, w, h, opts.size, opts.size, resample), info, crop };
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
export async function encodeCell(bytes: Uint8Array, opts: EncodeOptions): Promise<EncodedCell> {
  const cell = await cellPipeline(bytes, opts);
  const { info, crop } = cell;
  const img = cell.img ??
    sharp(cell.pixels, { raw: { width: opts.size, height: opts.size, channels: 3 } });
  if (opts.format === "jpg") img.jpeg({ quality: opts.quality ?? 95, chromaSubsampling: "4:4:4" });
  // Adaptive row filters, as Pillow and libpng choose: half the size of
  // libvips' unfiltered default (45 vs 87 KiB per 224 px cell) for ~20% more time.
  else img.png({ adaptiveFiltering: true });
  try {
    const data = await img.toBuffer();
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), info, crop };
  } catch (e) {
    throw new ImageError(describeSharpError(e));
  }
}

/** Decodes, crops, converts and resizes an image to raw RGB [size, size, 3]. */
export async function decodeCell(bytes: Uint8Array, opts: CellOptions): Promise<RgbCell> {
  const cell = await cellPipeline(bytes, opts);
  const pixels = cell.pixels ?? (await rawRgb(cell.img, opts.size, opts.size));
  return { pixels, info: cell.info, crop: cell.crop };
}

/** Reads a file and describes read failures (missing, a directory, no permission) plainly. */
export async function readImageFile(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ImageError("unreadable: file not found");
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new ImageError("unreadable: permission denied");
    }
    if (e instanceof Deno.errors.IsADirectory) throw new ImageError("unreadable: is a directory");
    throw new ImageError(`unreadable: ${e instanceof Error ? e.message : String(e)}`);
  }
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
