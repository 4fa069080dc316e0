/**
 * The paper's Fig. 3 as a PNG: PCA of the patch tokens of a set of images,
 * the first three components shown as RGB next to the input cells (the
 * colours come from eval/patch_pca.ts).
 *
 * One PCA is fitted over the patch tokens of all images together ([N·T, D],
 * T = grid², 256 at 224 px), so a colour means the same thing in every
 * image. Each component's scores are min–max scaled to [0, 255] over the
 * tokens shown: component 1 → red, 2 → green, 3 → blue.
 *
 * Optional foreground threshold (DINOv2's recipe): a first one-component PCA
 * over all tokens, its scores min–max scaled to [0, 1]; tokens above the
 * threshold are foreground. PCA's sign is arbitrary, so the sign is fixed
 * for single-cell crops: the cell is centred, so the side whose mean over
 * the central half of the grid is higher is foreground. The three colour
 * components are then fitted on foreground tokens only, background is black.
 *
 * The 16×16 colour grid is upsampled to the cell size (nearest neighbour by
 * default, showing the patch grid as it is) and drawn under its input cell;
 * inputs are resized to the cell size without keeping aspect, as the model
 * sees them. A title (what the figure shows and from which weights) sits
 * above, and each input cell's label (its class) above its tile, when given;
 * the text is drawn from an SVG overlay with the fonts fontconfig finds
 * (eval/plot_png.ts).
 */
import { Buffer } from "node:buffer";
import sharp from "npm:sharp@0.34.5";
import { escapeXml, FONT } from "./plot.ts";
import {
  type PatchColours,
  patchPcaColours,
  type PatchPcaOptions,
  type PatchTokens,
} from "./patch_pca.ts";

/** An input image: a file path, encoded bytes (JPEG, PNG, TIFF…), or raw pixels. */
export type ImageInput =
  | string
  | Uint8Array
  | { data: Uint8Array; width: number; height: number; channels: 1 | 2 | 3 | 4 };

/** Options of `patchPcaFigure`. */
export interface PatchFigureOptions extends PatchPcaOptions {
  /** Side of each tile in px. Default 224. */
  cellSize?: number;
  /** Images per row. Default min(N, 8). */
  columns?: number;
  /** Gap between tiles in px. Default 4. */
  gap?: number;
  /** Upsampling of the patch grid: "nearest" (default) or "bilinear". */
  upsample?: "nearest" | "bilinear";
  /** A title line above the tiles, e.g. what is shown and the weights' name. */
  title?: string;
  /** One label per image (its class; null or "" for none), above its input tile. */
  labels?: readonly (string | null | undefined)[];
}

/** Heights of the title band and of each input row's label band, px. */
const TITLE_BAND = 26;
const LABEL_BAND = 16;

async function inputTile(img: ImageInput, size: number, i: number): Promise<Buffer> {
  const src = typeof img === "string" || img instanceof Uint8Array
    ? sharp(img)
    : sharp(img.data, { raw: { width: img.width, height: img.height, channels: img.channels } });
  try {
    return await src.resize(size, size, { fit: "fill" }).removeAlpha().toColourspace("srgb")
      .raw().toBuffer();
  } catch (e) {
    const what = typeof img === "string" ? img : `image ${i}`;
    throw new Error(`patchPcaFigure: cannot decode ${what}: ${(e as Error).message}`);
  }
}

/**
 * The figure as PNG bytes: for every `columns` images, a row of input cells
 * and under it the row of their PCA colour maps, on white.
 */
export async function patchPcaFigure(
  images: readonly ImageInput[],
  tokens: PatchTokens,
  opts: PatchFigureOptions = {},
): Promise<{ png: Uint8Array; width: number; height: number; colours: PatchColours }> {
  if (images.length !== tokens.images) {
    throw new RangeError(
      `patchPcaFigure: ${images.length} images but tokens for ${tokens.images}`,
    );
  }
  const colours = patchPcaColours(tokens, opts);
  const cell = opts.cellSize ?? 224;
  const gap = opts.gap ?? 4;
  const cols = Math.min(opts.columns ?? 8, tokens.images);
  if (!Number.isInteger(cell) || cell < 1 || !Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`patchPcaFigure: cellSize ${cell} and columns ${cols} must be ≥ 1`);
  }
  if (opts.labels && opts.labels.length !== tokens.images) {
    throw new RangeError(
      `patchPcaFigure: ${opts.labels.length} labels for ${tokens.images} images`,
    );
  }
  const titleH = opts.title ? TITLE_BAND : 0;
  const labelH = opts.labels?.some((l) => l) ? LABEL_BAND : 0;
  const bands = Math.ceil(tokens.images / cols);
  const width = cols * cell + (cols + 1) * gap;
  const height = titleH + bands * (2 * cell + labelH) + (2 * bands + 1) * gap;
  const g = colours.grid;
  const layers: sharp.OverlayOptions[] = [];
  const text: string[] = [];
  if (opts.title) {
    text.push(
      `<text x="${gap}" y="${titleH - 8}" font-size="14" font-weight="bold">${
        escapeXml(opts.title)
      }</text>`,
    );
  }
  for (let i = 0; i < tokens.images; i++) {
    const left = gap + (i % cols) * (cell + gap);
    const bandTop = titleH + gap + Math.floor(i / cols) * (2 * (cell + gap) + labelH);
    const top = bandTop + labelH;
    const label = opts.labels?.[i];
    if (label) {
      text.push(
        `<text x="${left + cell / 2}" y="${bandTop + labelH - 4}" font-size="11" ` +
          `text-anchor="middle">${escapeXml(label)}</text>`,
      );
    }
    const raw = { width: cell, height: cell, channels: 3 as const };
    layers.push({ input: await inputTile(images[i], cell, i), raw, left, top });
    const map = await sharp(colours.rgb.subarray(i * g * g * 3, (i + 1) * g * g * 3), {
      raw: { width: g, height: g, channels: 3 },
    }).resize(cell, cell, {
      kernel: (opts.upsample ?? "nearest") === "nearest" ? "nearest" : "linear",
    }).raw().toBuffer();
    layers.push({ input: map, raw, left, top: top + cell + gap });
  }
  if (text.length) {
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `font-family="${FONT}" fill="#222">${text.join("")}</svg>`;
    layers.unshift({ input: Buffer.from(svg), left: 0, top: 0 });
  }
  const png = await sharp({
    create: { width, height, channels: 3, background: { r: 255, g: 255, b: 255 } },
  }).composite(layers).png().toBuffer();
  return {
    png: new Uint8Array(png.buffer, png.byteOffset, png.byteLength),
    width,
    height,
    colours,
  };
}

/** Writes the figure to `path` (PNG). */
export async function writePatchPcaFigure(
  path: string,
  images: readonly ImageInput[],
  tokens: PatchTokens,
  opts: PatchFigureOptions = {},
): Promise<{ path: string; width: number; height: number; colours: PatchColours }> {
  const fig = await patchPcaFigure(images, tokens, opts);
  await Deno.writeFile(path, fig.png);
  return { path, width: fig.width, height: fig.height, colours: fig.colours };
}
