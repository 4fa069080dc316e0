/**
 * 2-D UMAP of embeddings and its scatter plot as SVG, coloured by label (the
 * paper's Fig. 2 style). UMAP is umap-js, seeded through numpy's RandomState
 * stream so the same seed gives the same picture; its neighbour graph is
 * umap-js's own (NN-descent), not the exact kNN. Pure (no files, no sharp):
 * the command line writes the figure with umap_figure.ts, the browser page
 * shows the same SVG.
 */
import { UMAP } from "npm:umap-js@1.4.0";
import type { Label } from "./labels.ts";
import { uniqueSorted } from "./labels.ts";
import type { Matrix } from "./matrix.ts";
import { NumpyRandomState } from "./numpy_random.ts";
import { classColor, escapeXml, fmt, FONT } from "./plot.ts";

/** Options of `umapEmbedding`. */
export interface UmapOptions {
  /** Seed of every random choice umap-js makes. Default 42. */
  seed?: number;
  /** Neighbourhood size; clamped to n − 1 for tiny sets. Default 15 (umap-js's). */
  nNeighbors?: number;
  /** Minimum distance between embedded points. Default 0.1. */
  minDist?: number;
  /** Optimisation epochs. Default umap-js's (500 below 10k points, 200 above). */
  nEpochs?: number;
}

/** Embeds the rows of `x` in 2-D; returns [n, 2] row-major coordinates. */
export function umapEmbedding(x: Matrix, opts: UmapOptions = {}): Float64Array {
  if (x.rows < 3) throw new RangeError(`umapEmbedding: needs at least 3 points, got ${x.rows}`);
  const rng = new NumpyRandomState(opts.seed ?? 42);
  const umap = new UMAP({
    nComponents: 2,
    nNeighbors: Math.min(opts.nNeighbors ?? 15, x.rows - 1),
    minDist: opts.minDist ?? 0.1,
    nEpochs: opts.nEpochs,
    random: () => rng.random(),
  });
  const rows = Array.from(
    { length: x.rows },
    (_, i) => Array.from(x.data.subarray(i * x.cols, (i + 1) * x.cols)),
  );
  const emb = umap.fit(rows);
  const out = new Float64Array(x.rows * 2);
  emb.forEach((p, i) => {
    out[2 * i] = p[0];
    out[2 * i + 1] = p[1];
  });
  return out;
}

/** Options of `scatterSvg`. */
export interface ScatterOptions {
  title: string;
  /** Second line under the title (model, dataset, n). */
  subtitle?: string;
  /** Canvas size in px. Default 900 × 700. */
  width?: number;
  height?: number;
  /** Class order for colours and legend. Default: sorted labels. */
  classes?: readonly Label[];
  /** Point radius in px. Default 2.5 (1.5 above 5000 points). */
  radius?: number;
  /** Seed of the drawing order shuffle (so no class systematically covers another). */
  seed?: number;
  /** Give each point a `data-i` attribute (its row), for interactive views (hover). */
  pointIndex?: boolean;
}

/**
 * A scatter plot of [n, 2] points coloured by label: equal-aspect axes,
 * a legend with each class's name and count, and a title. Points are drawn
 * in a seeded random order, since inputs are often sorted by class and the
 * last class drawn would hide the others.
 */
export function scatterSvg(
  points: Float64Array,
  labels: readonly Label[],
  opts: ScatterOptions,
): string {
  const n = labels.length;
  if (points.length !== 2 * n) {
    throw new RangeError(`scatterSvg: ${points.length / 2} points for ${n} labels`);
  }
  const classes = opts.classes ? [...opts.classes] : uniqueSorted(labels, "scatterSvg: labels");
  const index = new Map(classes.map((c, i) => [c, i]));
  const counts = new Array<number>(classes.length).fill(0);
  labels.forEach((l, i) => {
    const k = index.get(l);
    if (k === undefined) {
      throw new RangeError(
        `scatterSvg: label ${JSON.stringify(l)} of point ${i} is not in classes`,
      );
    }
    counts[k]++;
  });
  const W = opts.width ?? 900, H = opts.height ?? 700;
  const radius = opts.radius ?? (n > 5000 ? 1.5 : 2.5);
  const legendText = classes.map((c, k) => `${c} (${counts[k]})`);
  const legendW = 44 + 7.2 * Math.max(...legendText.map((t) => t.length));
  const top = opts.subtitle ? 70 : 52;
  const box = { x0: 20, y0: top, x1: W - legendW - 20, y1: H - 36 };
  if (box.x1 - box.x0 < 50 || box.y1 - box.y0 < 50) {
    throw new RangeError(`scatterSvg: canvas ${W}×${H} is too small for the legend; enlarge it`);
  }

  let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
  for (let i = 0; i < n; i++) {
    const px = points[2 * i], py = points[2 * i + 1];
    if (!Number.isFinite(px) || !Number.isFinite(py)) {
      throw new RangeError(`scatterSvg: point ${i} is (${px}, ${py}); coordinates must be finite`);
    }
    xmin = Math.min(xmin, px), xmax = Math.max(xmax, px);
    ymin = Math.min(ymin, py), ymax = Math.max(ymax, py);
  }
  // Equal aspect: one data unit is the same length on both axes; centred in the box.
  const pad = 2 * radius + 4;
  const sx = (box.x1 - box.x0 - 2 * pad) / Math.max(xmax - xmin, 1e-12);
  const sy = (box.y1 - box.y0 - 2 * pad) / Math.max(ymax - ymin, 1e-12);
  const s = Math.min(sx, sy);
  const cx = (box.x0 + box.x1) / 2, cy = (box.y0 + box.y1) / 2;
  const mx = (xmin + xmax) / 2, my = (ymin + ymax) / 2;

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" ` +
      `viewBox="0 0 ${W} ${H}" font-family="${FONT}">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="30" font-size="20" font-weight="bold" text-anchor="middle">` +
      `${escapeXml(opts.title)}</text>`,
  );
  if (opts.subtitle) {
    out.push(
      `<text x="${W / 2}" y="52" font-size="13" fill="#444" text-anchor="middle">` +
        `${escapeXml(opts.subtitle)}</text>`,
    );
  }
  out.push(
    `<rect x="${box.x0}" y="${box.y0}" width="${box.x1 - box.x0}" height="${box.y1 - box.y0}" ` +
      `fill="none" stroke="#bbb"/>`,
    `<text x="${(box.x0 + box.x1) / 2}" y="${H - 12}" font-size="13" text-anchor="middle">` +
      `UMAP 1</text>`,
    `<text x="12" y="${(box.y0 + box.y1) / 2}" font-size="13" text-anchor="middle" ` +
      `transform="rotate(-90 12 ${(box.y0 + box.y1) / 2})">UMAP 2</text>`,
  );
  const order = new NumpyRandomState(opts.seed ?? 0).permutation(n);
  out.push(`<g fill-opacity="0.75" stroke="none">`);
  for (const i of order) {
    const px = cx + (points[2 * i] - mx) * s;
    const py = cy - (points[2 * i + 1] - my) * s; // SVG y grows downwards
    out.push(
      `<circle cx="${fmt(px)}" cy="${fmt(py)}" r="${radius}" ` +
        `fill="${classColor(index.get(labels[i])!)}"${opts.pointIndex ? ` data-i="${i}"` : ""}/>`,
    );
  }
  out.push(`</g>`);
  const lx = box.x1 + 20;
  classes.forEach((_, k) => {
    const ly = box.y0 + 14 + 22 * k;
    out.push(
      `<circle cx="${lx + 8}" cy="${ly - 4}" r="6" fill="${classColor(k)}"/>`,
      `<text x="${lx + 22}" y="${ly}" font-size="13">${escapeXml(legendText[k])}</text>`,
    );
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
