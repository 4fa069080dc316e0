/**
 * The paper's Fig. 3: PCA of the patch tokens of a set of images, the first
 * three components shown as RGB next to the input cells.
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
 * sees them.
 */
import type { Buffer } from "node:buffer";
import sharp from "sharp";
import { matrix } from "./matrix.ts";
import { type Pca, pca, pcaTransform } from "./pca.ts";

/** Patch tokens of N images: [images, tokens, dim] row-major, tokens = grid². */
export interface PatchTokens {
  data: Float32Array | Float64Array;
  images: number;
  tokens: number;
  dim: number;
}

/** Options of `patchPcaColours`. */
export interface PatchPcaOptions {
  /** Foreground threshold in (0, 1) on the scaled first component; off by default. */
  foregroundThreshold?: number;
}

/** Per-patch colours and what produced them. */
export interface PatchColours {
  grid: number;
  /** [images, grid, grid, 3] RGB bytes. */
  rgb: Uint8Array;
  /** [images · tokens] 1 where the token was coloured (all 1 without a threshold). */
  foreground: Uint8Array;
  /** The three-component PCA behind the colours. */
  pca: Pca;
}

function gridOf(t: PatchTokens): number {
  const grid = Math.round(Math.sqrt(t.tokens));
  if (grid * grid !== t.tokens) {
    throw new RangeError(
      `patch PCA: ${t.tokens} tokens per image is not a square grid; pass patch tokens only ` +
        `(drop the CLS and register tokens)`,
    );
  }
  if (t.data.length !== t.images * t.tokens * t.dim) {
    throw new RangeError(
      `patch PCA: ${t.data.length} values do not fill [${t.images}, ${t.tokens}, ${t.dim}]`,
    );
  }
  if (t.dim < 3) throw new RangeError(`patch PCA: token dim ${t.dim} < 3 components`);
  return grid;
}

/** Rows of `data` ([rows, dim]) whose flag is set, as a new matrix. */
function selectRows(data: Float32Array | Float64Array, dim: number, keep: Uint8Array) {
  let n = 0;
  for (const k of keep) n += k;
  const out = new Float64Array(n * dim);
  let r = 0;
  keep.forEach((k, i) => {
    if (k) out.set(data.subarray(i * dim, (i + 1) * dim), dim * r++);
  });
  return matrix(out, n, dim, "patch tokens");
}

/** Min–max scales column j of [n, k] scores over flagged rows to [0, 1] (constant → 0.5). */
function minMax(
  scores: Float64Array,
  k: number,
  j: number,
  keep: Uint8Array,
): (v: number) => number {
  let lo = Infinity, hi = -Infinity;
  keep.forEach((f, i) => {
    if (f) lo = Math.min(lo, scores[i * k + j]), hi = Math.max(hi, scores[i * k + j]);
  });
  return hi > lo ? (v) => (v - lo) / (hi - lo) : () => 0.5;
}

/** Computes the per-patch RGB colours (see the module comment). */
export function patchPcaColours(t: PatchTokens, opts: PatchPcaOptions = {}): PatchColours {
  const grid = gridOf(t);
  const all = matrix(t.data, t.images * t.tokens, t.dim, "patch tokens");
  const n = all.rows;
  const foreground = new Uint8Array(n).fill(1);
  const thr = opts.foregroundThreshold;
  if (thr !== undefined) {
    if (!(thr > 0 && thr < 1)) {
      throw new RangeError(`patch PCA: foregroundThreshold ${thr} must be in (0, 1)`);
    }
    const first = pcaTransform(pca(all, 1), all);
    const scale = minMax(first, 1, 0, foreground);
    // Orientation: the centred cell should score high.
    const q = grid / 4;
    let cSum = 0, cN = 0, bSum = 0, bN = 0;
    for (let i = 0; i < n; i++) {
      const p = i % t.tokens, r = Math.floor(p / grid), c = p % grid;
      if (r >= q && r < grid - q && c >= q && c < grid - q) cSum += scale(first[i]), cN++;
      else bSum += scale(first[i]), bN++;
    }
    const flip = cN > 0 && bN > 0 && cSum / cN < bSum / bN;
    for (let i = 0; i < n; i++) {
      const s = scale(first[i]);
      foreground[i] = (flip ? 1 - s : s) > thr ? 1 : 0;
    }
  }
  let nFg = 0;
  for (const f of foreground) nFg += f;
  if (nFg < 4) {
    throw new RangeError(
      `patch PCA: only ${nFg} foreground tokens at threshold ${thr}; lower foregroundThreshold`,
    );
  }
  const fitted = pca(selectRows(t.data, t.dim, foreground), 3);
  const scores = pcaTransform(fitted, all);
  const scales = [0, 1, 2].map((j) => minMax(scores, 3, j, foreground));
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    if (!foreground[i]) continue; // background stays black
    for (let j = 0; j < 3; j++) {
      const v = scales[j](scores[i * 3 + j]);
      rgb[i * 3 + j] = Math.round(255 * Math.min(1, Math.max(0, v)));
    }
  }
  return { grid, rgb, foreground, pca: fitted };
}

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
}

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
  const bands = Math.ceil(tokens.images / cols);
  const width = cols * cell + (cols + 1) * gap;
  const height = bands * 2 * cell + (2 * bands + 1) * gap;
  const g = colours.grid;
  const layers: sharp.OverlayOptions[] = [];
  for (let i = 0; i < tokens.images; i++) {
    const left = gap + (i % cols) * (cell + gap);
    const top = gap + Math.floor(i / cols) * 2 * (cell + gap);
    const raw = { width: cell, height: cell, channels: 3 as const };
    layers.push({ input: await inputTile(images[i], cell, i), raw, left, top });
    const map = await sharp(colours.rgb.subarray(i * g * g * 3, (i + 1) * g * g * 3), {
      raw: { width: g, height: g, channels: 3 },
    }).resize(cell, cell, {
      kernel: (opts.upsample ?? "nearest") === "nearest" ? "nearest" : "linear",
    }).raw().toBuffer();
    layers.push({ input: map, raw, left, top: top + cell + gap });
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
