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
 * Pure maths (no files, no sharp): patch_pca_figure.ts draws the figure for
 * the command line; the browser page paints the same colours on a canvas.
 */
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
