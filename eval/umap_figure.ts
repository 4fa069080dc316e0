/**
 * The UMAP figure of embeddings, coloured by label, written as SVG and PNG
 * (eval/umap.ts computes the map and draws the SVG).
 */
import type { Label } from "./labels.ts";
import type { Matrix } from "./matrix.ts";
import { writeSvgAndPng } from "./plot_png.ts";
import { type ScatterOptions, scatterSvg, umapEmbedding, type UmapOptions } from "./umap.ts";

/** What `writeUmapFigure` produced. */
export interface UmapFigure {
  svg: string;
  png: string;
  /** [n, 2] UMAP coordinates. */
  embedding: Float64Array;
}

/**
 * UMAP of `x` coloured by `labels`, written to `<base>.svg` and `<base>.png`.
 */
export async function writeUmapFigure(
  base: string,
  x: Matrix,
  labels: readonly Label[],
  opts: UmapOptions & ScatterOptions,
): Promise<UmapFigure> {
  if (labels.length !== x.rows) {
    throw new RangeError(`writeUmapFigure: ${labels.length} labels for ${x.rows} embeddings`);
  }
  const embedding = umapEmbedding(x, opts);
  const svg = scatterSvg(embedding, labels, opts);
  const paths = await writeSvgAndPng(base, svg);
  return { ...paths, embedding };
}
