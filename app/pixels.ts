/**
 * Decoded pixels → the cell the model sees, the way the command line makes
 * it (pipelines/dataset/images.ts): alpha composited on white, then the
 * evaluation's square bilinear resize with Pillow's exact algorithm
 * (`resizeRgb`, shared), skipped when the image already has the size. Pure:
 * the browser decodes (app/decode.ts), this does the rest, and the tests run
 * it under Deno.
 */
import { resizeRgb } from "../pipelines/dataset/resample.ts";

/** RGBA (canvas ImageData, not premultiplied) → RGB on a white background. */
export function flattenRgba(
  rgba: Uint8Array | Uint8ClampedArray,
  w: number,
  h: number,
): Uint8Array {
  if (rgba.length !== w * h * 4) {
    throw new RangeError(`flattenRgba: ${rgba.length} bytes is not ${w}x${h}x4`);
  }
  const out = new Uint8Array(w * h * 3);
  for (let i = 0, o = 0; i < rgba.length; i += 4, o += 3) {
    const a = rgba[i + 3];
    if (a === 255) {
      out[o] = rgba[i];
      out[o + 1] = rgba[i + 1];
      out[o + 2] = rgba[i + 2];
    } else {
      // libvips' flatten: c·α + white·(1 − α), rounded.
      for (let c = 0; c < 3; c++) {
        out[o + c] = Math.round((rgba[i + c] * a + 255 * (255 - a)) / 255);
      }
    }
  }
  return out;
}

/** The cell at `size`×`size` from decoded RGBA: flattened, then resized (bilinear) unless square at `size`. */
export function cellPixels(
  rgba: Uint8Array | Uint8ClampedArray,
  w: number,
  h: number,
  size: number,
): Uint8Array {
  const rgb = flattenRgba(rgba, w, h);
  if (w === size && h === size) return rgb;
  return resizeRgb(rgb, w, h, size, size, "bilinear");
}
