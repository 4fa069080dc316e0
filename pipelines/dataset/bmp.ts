/**
 * Windows BMP decoding. libvips as shipped in sharp's prebuilt binaries has
 * no BMP loader (it would come through ImageMagick), so BMP is the one codec
 * bloom decodes itself; the pixels then go through sharp like any other image.
 *
 * Covers what microscopes and old tools write: core (OS/2 v1), INFO and
 * V2–V5 headers; 1/2/4/8-bit palettes, 16/24/32-bit direct colour; BI_RGB,
 * BI_RLE8, BI_RLE4, BI_BITFIELDS and BI_ALPHABITFIELDS; bottom-up and top-down
 * rows. Embedded JPEG/PNG (compression 4/5) is refused by name.
 *
 * Bounded by the file (a decompression bomb is refused before any pixel
 * buffer exists): at most `MAX_IMAGE_PIXELS`; uncompressed rows must all be
 * present; an RLE stream must be able to encode the image, at most
 * `RLE_MAX_PIXELS_PER_BYTE` pixels per byte of stream (a run of 255 pixels
 * in 2 bytes: what encoders write), so a small RLE file cannot claim a huge
 * image through delta or end-of-bitmap escapes.
 */
import { MAX_IMAGE_PIXELS } from "./decode_budget.ts";

/** A BMP that cannot be decoded; the message says why. */
export class BmpError extends Error {
  override name = "BmpError";
}

/** Decoded pixels, top row first, interleaved RGB or RGBA, 8 bits. */
export interface BmpImage {
  width: number;
  height: number;
  channels: 3 | 4;
  data: Uint8Array;
}

/** Most pixels an RLE stream may decode to per byte of it (255-pixel runs of 2 bytes: 127.5). */
export const RLE_MAX_PIXELS_PER_BYTE = 128;

/** Whether `bytes` starts like a BMP file. */
export function isBmp(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x42 && bytes[1] === 0x4d;
}

/**
 * Width, height, bit depth and whether it has an alpha mask, from the header
 * (every size check done), without decoding pixels.
 */
export function bmpSize(
  bytes: Uint8Array,
): { width: number; height: number; bpp: number; alpha: boolean } {
  const h = parseHeader(bytes);
  return { width: h.width, height: h.height, bpp: h.bpp, alpha: hasAlphaMask(h) };
}

function hasAlphaMask(h: Header): boolean {
  return h.masks[3] !== 0 && (h.compression === 3 || h.compression === 6);
}

interface Header {
  width: number;
  height: number;
  topDown: boolean;
  bpp: number;
  compression: number;
  pixelOffset: number;
  palette: Uint8Array | null; // RGB triples
  masks: [number, number, number, number]; // R, G, B, A
}

function parseHeader(b: Uint8Array): Header {
  if (!isBmp(b)) throw new BmpError("not a BMP file (no 'BM' signature)");
  if (b.length < 26) throw new BmpError(`truncated BMP header (${b.length} B)`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const pixelOffset = v.getUint32(10, true);
  const hs = v.getUint32(14, true);
  if (hs !== 12 && hs !== 16 && hs < 40) throw new BmpError(`unsupported BMP header size ${hs}`);
  if (b.length < 14 + Math.min(hs, 40)) throw new BmpError("truncated BMP header");
  let width: number, rawHeight: number, bpp: number, compression = 0, colorsUsed = 0;
  if (hs === 12) {
    width = v.getUint16(18, true);
    rawHeight = v.getInt16(20, true);
    bpp = v.getUint16(24, true);
  } else {
    width = v.getInt32(18, true);
    rawHeight = v.getInt32(22, true);
    bpp = v.getUint16(28, true);
    if (hs >= 40) {
      compression = v.getUint32(30, true);
      colorsUsed = v.getUint32(46, true);
    }
  }
  const topDown = rawHeight < 0;
  const height = Math.abs(rawHeight);
  if (width <= 0 || height <= 0) throw new BmpError(`BMP has a bad size ${width}x${rawHeight}`);
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new BmpError(
      `BMP of ${width}x${height} has ${width * height} pixels, over the limit of ` +
        `${MAX_IMAGE_PIXELS} (2^${Math.log2(MAX_IMAGE_PIXELS)})`,
    );
  }
  if (compression === 4 || compression === 5) {
    throw new BmpError(`BMP with embedded ${compression === 4 ? "JPEG" : "PNG"} is not supported`);
  }
  if (![0, 1, 2, 3, 6].includes(compression)) {
    throw new BmpError(`unknown BMP compression ${compression}`);
  }
  if (![1, 2, 4, 8, 16, 24, 32].includes(bpp)) throw new BmpError(`unsupported BMP depth ${bpp}`);
  if ((compression === 1 && bpp !== 8) || (compression === 2 && bpp !== 4)) {
    throw new BmpError(`BMP RLE compression ${compression} with ${bpp} bits per pixel`);
  }

  // Default masks: 5-5-5 for 16 bit, 8-8-8 (no alpha: the 4th byte is padding) for 32.
  let masks: [number, number, number, number] = bpp === 16
    ? [0x7c00, 0x03e0, 0x001f, 0]
    : [0xff0000, 0xff00, 0xff, 0];
  const bitfields = compression === 3 || compression === 6;
  let paletteStart = 14 + hs;
  if (bitfields) {
    // INFO headers carry the masks right after the header; V2+ headers inside it.
    const at = 14 + 40;
    const need = compression === 6 || hs >= 56 ? 16 : 12;
    if (b.length < at + need) throw new BmpError("truncated BMP colour masks");
    masks = [
      v.getUint32(at, true),
      v.getUint32(at + 4, true),
      v.getUint32(at + 8, true),
      need === 16 ? v.getUint32(at + 12, true) : 0,
    ];
    if (hs === 40) paletteStart += need;
  }

  let palette: Uint8Array | null = null;
  if (bpp <= 8) {
    const n = colorsUsed > 0 ? Math.min(colorsUsed, 1 << bpp) : 1 << bpp;
    const entry = hs === 12 ? 3 : 4;
    palette = new Uint8Array(3 * (1 << bpp)); // missing entries read as black
    for (let i = 0; i < n; i++) {
      const at = paletteStart + i * entry;
      if (at + 3 > b.length) throw new BmpError("truncated BMP palette");
      palette[3 * i] = b[at + 2];
      palette[3 * i + 1] = b[at + 1];
      palette[3 * i + 2] = b[at];
    }
  }
  if (pixelOffset >= b.length) throw new BmpError("truncated BMP: no pixel data");
  const h = { width, height, topDown, bpp, compression, pixelOffset, palette, masks };
  checkCoverage(b, h);
  return h;
}

/**
 * Refuses, from the header alone, pixel data the file cannot hold: missing
 * rows (uncompressed), or an RLE stream too short to encode the image.
 */
function checkCoverage(b: Uint8Array, h: Header): void {
  const { width: w, height: ht } = h;
  if (h.compression === 1 || h.compression === 2) {
    const stream = b.length - h.pixelOffset;
    if (w * ht > RLE_MAX_PIXELS_PER_BYTE * stream) {
      throw new BmpError(
        `RLE BMP of ${w}x${ht} from ${stream} B of pixel data: more than ` +
          `${RLE_MAX_PIXELS_PER_BYTE} pixels per byte, which no encoder writes ` +
          `(a decompression bomb or a corrupt header)`,
      );
    }
    return;
  }
  const stride = Math.floor((h.bpp * w + 31) / 32) * 4;
  if (h.pixelOffset + stride * (ht - 1) + Math.ceil((h.bpp * w) / 8) > b.length) {
    throw new BmpError(
      `truncated BMP: ${b.length} B, pixel rows need ${h.pixelOffset + stride * ht} B`,
    );
  }
}

/** Shift and scale for one channel mask: value = round(((px & mask) >>> shift) * 255 / max). */
function channel(mask: number): { shift: number; max: number } {
  if (mask === 0) return { shift: 0, max: 0 };
  let shift = 0;
  while (((mask >>> shift) & 1) === 0) shift++;
  return { shift, max: mask >>> shift };
}

/**
 * Decodes a BMP file into 8-bit RGB (or RGBA when it has an alpha mask with
 * any non-zero alpha: many writers fill the alpha byte with zeros, and an
 * all-transparent cell image is never what was meant).
 */
export function decodeBmp(bytes: Uint8Array): BmpImage {
  const h = parseHeader(bytes); // every size check happens here, before any allocation
  const { width: w, height: ht } = h;
  const hasAlpha = hasAlphaMask(h);
  const ch = hasAlpha ? 4 : 3;
  const px = new Uint8Array(w * ht * ch);
  const rowOf = (y: number) => (h.topDown ? y : ht - 1 - y); // file row y -> image row
  if (h.compression === 1 || h.compression === 2) {
    decodeRle(bytes, h, px, rowOf);
  } else {
    const stride = Math.floor((h.bpp * w + 31) / 32) * 4;
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const [cr, cg, cb, ca] = h.masks.map(channel);
    for (let fy = 0; fy < ht; fy++) {
      const src = h.pixelOffset + fy * stride;
      let dst = rowOf(fy) * w * ch;
      for (let x = 0; x < w; x++, dst += ch) {
        if (h.bpp <= 8) {
          const bitPos = x * h.bpp;
          const byte = bytes[src + (bitPos >> 3)];
          const idx = (byte >> (8 - h.bpp - (bitPos & 7))) & ((1 << h.bpp) - 1);
          px[dst] = h.palette![3 * idx];
          px[dst + 1] = h.palette![3 * idx + 1];
          px[dst + 2] = h.palette![3 * idx + 2];
        } else if (h.bpp === 24) {
          const p = src + 3 * x;
          px[dst] = bytes[p + 2];
          px[dst + 1] = bytes[p + 1];
          px[dst + 2] = bytes[p];
        } else {
          const word = h.bpp === 16
            ? v.getUint16(src + 2 * x, true)
            : v.getUint32(src + 4 * x, true);
          px[dst] = scale(word, cr);
          px[dst + 1] = scale(word, cg);
          px[dst + 2] = scale(word, cb);
          if (hasAlpha) px[dst + 3] = scale(word, ca);
        }
      }
    }
  }
  if (!hasAlpha) return { width: w, height: ht, channels: 3, data: px };
  for (let i = 3; i < px.length; i += 4) {
    if (px[i] !== 0) return { width: w, height: ht, channels: 4, data: px };
  }
  const rgb = new Uint8Array(w * ht * 3);
  for (let i = 0, j = 0; i < px.length; i += 4, j += 3) {
    rgb[j] = px[i];
    rgb[j + 1] = px[i + 1];
    rgb[j + 2] = px[i + 2];
  }
  return { width: w, height: ht, channels: 3, data: rgb };
}

function scale(px: number, c: { shift: number; max: number }): number {
  if (c.max === 0) return 0;
  const v = (px >>> c.shift) & c.max;
  return c.max === 255 ? v : Math.round((v * 255) / c.max);
}

/** RLE8 / RLE4: runs and absolute blocks; pixels never written stay palette index 0. */
function decodeRle(b: Uint8Array, h: Header, rgb: Uint8Array, rowOf: (y: number) => number) {
  const { width: w, height: ht, palette } = h;
  const pal = palette!;
  const four = h.compression === 2;
  for (let y = 0; y < ht; y++) {
    for (let x = 0; x < w; x++) put(x, y, 0);
  }
  function put(x: number, y: number, idx: number) {
    if (x >= w || y >= ht) return; // runs past the edge are clipped, as other decoders do
    const d = (rowOf(y) * w + x) * 3;
    rgb[d] = pal[3 * idx];
    rgb[d + 1] = pal[3 * idx + 1];
    rgb[d + 2] = pal[3 * idx + 2];
  }
  let p = h.pixelOffset;
  let x = 0;
  let y = 0;
  const need = (n: number) => {
    if (p + n > b.length) throw new BmpError("truncated BMP: RLE data ends early");
  };
  while (y < ht) {
    need(2);
    const count = b[p++];
    const val = b[p++];
    if (count > 0) {
      for (let i = 0; i < count; i++) {
        put(x++, y, four ? (i & 1 ? val & 15 : val >> 4) : val);
      }
    } else if (val === 0) {
      x = 0;
      y++;
    } else if (val === 1) {
      return;
    } else if (val === 2) {
      need(2);
      x += b[p++];
      y += b[p++];
    } else {
      const n = val;
      const bytes = four ? Math.ceil(n / 2) : n;
      need(bytes);
      for (let i = 0; i < n; i++) {
        const byte = b[p + (four ? i >> 1 : i)];
        put(x++, y, four ? (i & 1 ? byte & 15 : byte >> 4) : byte);
      }
      p += bytes + (bytes & 1); // absolute blocks are padded to 16 bits
    }
  }
}
