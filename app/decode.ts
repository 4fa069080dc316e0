/**
 * The browser's side of image decoding: a dropped file → RGBA with the
 * browser's own decoders (`createImageBitmap`, no colour conversion, no
 * premultiplication) → the cell the model sees (app/pixels.ts, the command
 * line's rules). What the command line does with sharp, the page does here;
 * both end in the same resize and the same GPU transform. Runs in the engine
 * worker (OffscreenCanvas).
 */
import { cellPixels } from "./pixels.ts";

/** Sources above this many pixels are refused: a cell image is small, a slide is not. */
export const MAX_PIXELS = 50_000_000;

/** Why an image was refused, in the words the page shows next to its name. */
export class CellImageError extends Error {
  override name = "CellImageError";
}

/** Decodes `blob` and returns the cell as [size, size, 3] RGB. */
export async function decodeCell(blob: Blob, size: number): Promise<Uint8Array> {
  if (blob.size === 0) throw new CellImageError("empty file (0 bytes)");
  let bmp: ImageBitmap;
  try {
    bmp = await createImageBitmap(blob, {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch (e) {
    const name = e instanceof Error ? e.name : "";
    if (name === "NotReadableError" || name === "NotFoundError") {
      throw new CellImageError(`unreadable: ${(e as Error).message}`);
    }
    throw new CellImageError("not an image, or a corrupt one: the browser could not decode it");
  }
  try {
    const { width: w, height: h } = bmp;
    if (w < 1 || h < 1) throw new CellImageError("not an image (no pixels)");
    if (w * h > MAX_PIXELS) {
      throw new CellImageError(
        `${w}×${h} px is not a cell image (over ${MAX_PIXELS / 1e6} MP); crop the cells first`,
      );
    }
    const canvas = new OffscreenCanvas(w, h);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    if (!ctx) throw new CellImageError("the browser gave no 2-D canvas to decode into");
    ctx.drawImage(bmp, 0, 0);
    const data = ctx.getImageData(0, 0, w, h, { colorSpace: "srgb" }).data;
    return cellPixels(data, w, h, size);
  } finally {
    bmp.close();
  }
}
