/**
 * The UMAP of embeddings files' cells coloured by label, by predicted class
 * or by source (`--color-by` of `embed --figures` and `eval --figures`), as
 * SVG and PNG: the batch-effect view — cells that group by source rather
 * than by label show a scanner or site effect.
 */
import { join } from "node:path";
import type { EmbeddingsFile } from "../data/embeddings_file.ts";
import { InputError } from "../data/errors.ts";
import { type ColorBy, colorKeys, sourcesOf } from "./cell_groups.ts";
import type { Label } from "./labels.ts";
import { matrix } from "./matrix.ts";
import { type UmapFigure, writeUmapFigure } from "./umap_figure.ts";

/** Predictions of some rows of one file. */
export interface RowPredictions {
  file: string;
  rows: readonly number[];
  predicted: readonly Label[];
}

/**
 * Writes `DIR/umap_<by>.svg|png` (or `opts.name`). Label and source colour every cell of
 * `files`; predicted colours the cells `predictions` cover (a test split,
 * or every cell once over the folds).
 */
export async function writeEmbeddingFigure(
  dir: string,
  files: readonly EmbeddingsFile[],
  by: ColorBy,
  opts: {
    sourceBy?: string;
    predictions?: readonly RowPredictions[];
    subtitle?: string;
    /** File name without extension (default `umap_<by>`). */
    name?: string;
  } = {},
): Promise<UmapFigure> {
  await Deno.mkdir(dir, { recursive: true });
  const d = files[0].dim;
  let feats: Float32Array;
  let keys: Label[];
  if (by === "predicted") {
    const preds = opts.predictions ?? [];
    const n = preds.reduce((a, p) => a + p.rows.length, 0);
    if (n === 0) throw new InputError("--color-by predicted: no predictions were made");
    feats = new Float32Array(n * d);
    keys = [];
    let at = 0;
    for (const p of preds) {
      const f = files.find((x) => x.path === p.file);
      if (!f) throw new InputError(`--color-by predicted: ${p.file} is not among the inputs`);
      for (const r of p.rows) feats.set(f.features.subarray(r * d, (r + 1) * d), d * at++);
      keys.push(...p.predicted);
    }
  } else {
    const rows = files.reduce((a, f) => a + f.rows, 0);
    feats = new Float32Array(rows * d);
    let at = 0;
    for (const f of files) {
      feats.set(f.features, at);
      at += f.features.length;
    }
    const labels = files.every((f) => f.labels) ? files.flatMap((f) => f.labels!) : null;
    keys = colorKeys(by, files.map((f) => f.path).join(", "), {
      labels,
      sources: by === "source" ? sourcesOf(files, opts.sourceBy) : undefined,
    });
  }
  const title = `UMAP of cell embeddings, coloured by ${
    by === "label" ? "label" : by === "source" ? "source" : "predicted class"
  }`;
  return await writeUmapFigure(
    join(dir, opts.name ?? `umap_${by}`),
    matrix(feats, keys.length, d),
    keys,
    {
      title,
      subtitle: opts.subtitle ?? `${files[0].meta.weights ?? ""} · ${keys.length} cells`,
    },
  );
}
