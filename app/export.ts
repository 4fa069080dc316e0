/**
 * The page's downloads as bytes and text: embeddings in the files `bloom
 * embed` writes (data/embeddings_file.ts: safetensors with `features` and the
 * paths, labels and model in `__metadata__`, or csv `path,label,patient,f0…`),
 * so `bloom eval` reads what the page exports; and the predictions as csv.
 * Pure: the page wraps the results in Blobs, the tests read them back with
 * `readEmbeddings`.
 */
import { BLOOM_VERSION, csvField } from "../data/embeddings_file.ts";
import { encodeSafetensors } from "../data/safetensors.ts";

/** Embedded cells to export, in row order. */
export interface ExportRows {
  /** [rows, dim] row-major. */
  features: Float32Array;
  dim: number;
  /** Relative paths as dropped. */
  paths: string[];
  /** Folder labels, one per row, or null when not every cell has one (the file's rule). */
  labels: string[] | null;
  /** The model: architecture, weights file name, and the side the cells were resized to. */
  arch: string;
  weights: string;
  inputSize: number;
}

function checkRows(r: ExportRows): number {
  const n = r.paths.length;
  if (r.features.length !== n * r.dim) {
    throw new RangeError(`export: ${r.features.length} values for ${n} rows × ${r.dim}`);
  }
  if (r.labels && r.labels.length !== n) {
    throw new RangeError(`export: ${r.labels.length} labels for ${n} rows`);
  }
  return n;
}

/** The embeddings as a safetensors file `bloom eval` reads (what `bloom embed` writes). */
export function embeddingsSafetensors(r: ExportRows, name = "embeddings.safetensors"): Uint8Array {
  const n = checkRows(r);
  const meta: Record<string, string> = {
    "bloom.size": String(r.inputSize),
    "bloom.source": "app",
    paths: JSON.stringify(r.paths),
    arch: r.arch,
    weights: r.weights,
    pool: "cls",
    "bloom.version": BLOOM_VERSION,
  };
  if (r.labels) meta.labels = JSON.stringify(r.labels);
  return encodeSafetensors(name, {
    features: { dtype: "f32", shape: [n, r.dim], data: r.features },
  }, meta);
}

/** The embeddings as csv: `path,label,patient,f0,f1,…`, 9 significant digits (exact for float32). */
export function embeddingsCsv(r: ExportRows): string {
  const n = checkRows(r);
  const lines = [
    ["path", "label", "patient", ...Array.from({ length: r.dim }, (_, j) => `f${j}`)].join(","),
  ];
  for (let i = 0; i < n; i++) {
    const cells = [csvField(r.paths[i]), csvField(r.labels?.[i] ?? ""), ""];
    for (let j = 0; j < r.dim; j++) {
      cells.push(String(Number(r.features[i * r.dim + j].toPrecision(9))));
    }
    lines.push(cells.join(","));
  }
  return lines.join("\n") + "\n";
}

/** One classified cell for the predictions file. */
export interface PredictionRow {
  path: string;
  sample: string;
  /** The folder label, or null. */
  label: string | null;
  /** Null for cells that could not be classified (not embedded, no reference). */
  predicted: string | null;
  confidence: number | null;
  /** Set for a cell that failed (not an image, corrupt …): why. */
  error?: string;
}

/** The predictions as csv: `path,sample,label,predicted,confidence,method,error`. */
export function predictionsCsv(rows: readonly PredictionRow[], method: string): string {
  const lines = ["path,sample,label,predicted,confidence,method,error"];
  for (const r of rows) {
    lines.push([
      csvField(r.path),
      csvField(r.sample),
      csvField(r.label ?? ""),
      csvField(r.predicted ?? ""),
      r.confidence === null ? "" : String(Number(r.confidence.toFixed(6))),
      csvField(r.predicted === null ? "" : method),
      csvField(r.error ?? ""),
    ].join(","));
  }
  return lines.join("\n") + "\n";
}
