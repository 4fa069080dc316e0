/**
 * Embeddings files: the contract between `embed` (which writes them) and
 * `eval` (which reads them). Three formats:
 *
 * - **safetensors** (default): tensor `features` F32 [N, D], optional
 *   `patch_tokens` F32 [N, Np, D]; `__metadata__` strings `paths` (JSON list),
 *   `labels` (JSON list of class names; absent for unlabelled inputs),
 *   `patients` (JSON list; patient-level data only), `splits` and `keys`
 *   (JSON lists: each row's ingest split and sample key, when the input was
 *   ingested shards; `bloom.split` names where the split came from), `arch`, `weights`,
 *   `pool` (cls|mean|cls+mean) and `bloom.version`.
 * - **npy**: the features array only (for numpy users), plus an optional
 *   sidecar `FILE.json` (e.g. `emb.npy.json`) holding the same metadata as
 *   plain JSON, so eval still finds the labels. `emb.json` is read too.
 * - **csv**: header `path,label,patient,f0,f1,…`; empty label/patient cells
 *   mean "none" (all rows or none of them).
 *
 * Writers stream row blocks (`createEmbeddingsWriter`), so `embed` never
 * holds a whole data set: npy rows go straight to the file (header patched
 * at the end), safetensors rows go to raw side files that are assembled
 * behind a header written once N is known, csv rows are appended as text.
 * Every final file appears atomically (written as `PATH.tmp`, renamed); the
 * side files are removed on finish and on abort.
 *
 * Invariant: `paths`, `labels`, `patients`, `splits` and `keys`, where present, have exactly
 * one entry per feature row; readers check it and name the file and field.
 */
import { extname } from "./paths.ts"; // not node:path: the browser page reads these files too
import { FileFieldError } from "./errors.ts";
import { AtomicFile, type ByteSource, type FileSource, writeAtomically } from "./file.ts";
import { createNpyWriter, type NpyRowWriter, openNpy } from "./npy.ts";
import { encodeSafetensorsHeader, openSafetensors } from "./safetensors.ts";

/** File formats of embeddings. */
export type EmbeddingsFormat = "safetensors" | "npy" | "csv";

/** All formats, for flags and messages. */
export const EMBEDDINGS_FORMATS: readonly EmbeddingsFormat[] = ["safetensors", "npy", "csv"];

/** How `embed` pooled the tokens into one vector per cell. */
export type Pooling = "cls" | "mean" | "cls+mean";

/** The pooling modes. */
export const POOLINGS: readonly Pooling[] = ["cls", "mean", "cls+mean"];

/**
 * Version written as `bloom.version` when the caller gives none. (mod.ts has
 * no version constant yet; this stands in for it.)
 */
export const BLOOM_VERSION = "0.1.0";

/** Scalar metadata of an embeddings file (every value a string, as safetensors stores them). */
export interface EmbeddingsMeta {
  /** Backbone architecture, e.g. "vit_small". */
  arch?: string;
  /** Checkpoint the features came from. */
  weights?: string;
  pool?: Pooling;
  /** `bloom.version`; defaults to BLOOM_VERSION on write. */
  version?: string;
  /** Further string keys, kept as they are. */
  extra?: Record<string, string>;
}

/** An embeddings file read into memory (what `readEmbeddings` returns). */
export interface EmbeddingsFile {
  /** The file it was read from. */
  path: string;
  format: EmbeddingsFormat;
  /** Row-major [rows, dim]. */
  features: Float32Array;
  rows: number;
  dim: number;
  /** One source path per row; `"#<row>"` placeholders where the file has none. */
  paths: string[];
  /** One class name per row, or null when the file carries no labels. */
  labels: string[] | null;
  /** One patient id per row, or null when the data is not patient-level. */
  patients: string[] | null;
  /** Each row's split ("train", "test", …) as ingest assigned it, or null. */
  splits: string[] | null;
  /** Each row's sample key (ingest's), or null; with `splits` (eval/split_record.ts). */
  keys: string[] | null;
  /** Every scalar metadata string (`arch`, `weights`, `pool`, `bloom.version`, others). */
  meta: Record<string, string>;
  /** `patch_tokens` [rows, tokens, dim], only when asked for and present. */
  patchTokens: { data: Float32Array; tokens: number } | null;
}

/** What `writeEmbeddings` takes: every row as one block, with its width and metadata. */
export interface EmbeddingsData extends Omit<EmbeddingsBlock, "patchTokens"> {
  dim: number;
  /** [rows, tokens, dim] (safetensors only). */
  patchTokens?: { data: Float32Array; tokens: number } | null;
  meta?: EmbeddingsMeta;
}

/** A bad or unreadable embeddings file: names the file and the field, and the fix. */
export class EmbeddingsFileError extends FileFieldError {
  override name = "EmbeddingsFileError";
}

const META_KEYS = {
  paths: "paths",
  labels: "labels",
  patients: "patients",
  splits: "splits",
  keys: "keys",
} as const;
const VERSION_KEY = "bloom.version";

/**
 * The format a path's extension names (.safetensors/.st, .npy, .csv), or
 * null for another extension.
 */
export function formatFromPath(path: string): EmbeddingsFormat | null {
  const ext = extname(path).toLowerCase();
  if (ext === ".safetensors" || ext === ".st") return "safetensors";
  if (ext === ".npy") return "npy";
  if (ext === ".csv") return "csv";
  return null;
}

// ------------------------------------------------------------------ reading

/**
 * Reads an embeddings file (format from its content for binary files, from
 * the extension for csv). `patchTokens: true` also loads `patch_tokens`
 * (safetensors only; it can be large). A ByteSource (a file dropped on the
 * browser page) is read the same way, except npy: its labels live in a
 * sidecar file, which a single dropped file does not bring.
 */
export async function readEmbeddings(
  path: FileSource,
  opts: { patchTokens?: boolean } = {},
): Promise<EmbeddingsFile> {
  const format = await detectFormat(path);
  if (format === "safetensors") return await readSafetensorsEmbeddings(path, opts.patchTokens);
  if (format === "npy") {
    if (typeof path !== "string") {
      throw new EmbeddingsFileError(
        path.name,
        "file",
        "an npy file keeps its labels in a sidecar .json, which cannot come along here",
        "use the .safetensors or .csv format (`deno task embed --format safetensors`)",
      );
    }
    return await readNpyEmbeddings(path);
  }
  return await readCsvEmbeddings(path);
}

async function detectFormat(source: FileSource): Promise<EmbeddingsFormat> {
  if (typeof source !== "string") {
    const head = new Uint8Array(Math.min(16, source.size));
    return formatOf(source.name, head.subarray(0, await source.read(0, head)));
  }
  const path = source;
  let head: Uint8Array;
  try {
    using f = await Deno.open(path, { read: true });
    const st = await f.stat();
    if (!st.isFile) {
      throw new EmbeddingsFileError(path, "file", "not a regular file", "pass an embeddings file");
    }
    head = new Uint8Array(16);
    const n = (await f.read(head)) ?? 0;
    head = head.subarray(0, n);
  } catch (e) {
    if (e instanceof EmbeddingsFileError) throw e;
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new EmbeddingsFileError(
      path,
      "file",
      `cannot open: ${why}`,
      "check the path (write embeddings with `deno task embed`)",
    );
  }
  return formatOf(path, head);
}

/** The format of file `path` from its first bytes (binary formats) or its name (csv). */
function formatOf(path: string, head: Uint8Array): EmbeddingsFormat {
  if (head[0] === 0x93 && String.fromCharCode(...head.subarray(1, 6)) === "NUMPY") return "npy";
  if (head.length >= 9 && head[8] === 0x7b) return "safetensors";
  const byExt = formatFromPath(path);
  if (byExt === "csv") return "csv";
  throw new EmbeddingsFileError(
    path,
    "file",
    `not an embeddings file (neither safetensors nor npy by content${
      byExt ? `, though the name says ${byExt}` : ""
    })`,
    `write one with \`deno task embed --format ${EMBEDDINGS_FORMATS.join("|")}\``,
  );
}

async function readSafetensorsEmbeddings(
  source: FileSource,
  patch = false,
): Promise<EmbeddingsFile> {
  using f = await openSafetensors(source);
  const path = f.path;
  const t = f.tensors.get("features");
  if (!t) {
    throw new EmbeddingsFileError(
      path,
      "features",
      `no 'features' tensor (the file holds ${[...f.tensors.keys()].join(", ") || "none"})`,
      "this is not a bloom embeddings file; write one with `deno task embed`",
    );
  }
  if (t.shape.length !== 2) {
    throw new EmbeddingsFileError(
      path,
      "features",
      `shape [${t.shape}] is not [N, D]`,
      "features must be one row per cell",
    );
  }
  const [rows, dim] = t.shape;
  const features = await t.f32();
  let patchTokens: EmbeddingsFile["patchTokens"] = null;
  const pt = f.tensors.get("patch_tokens");
  if (patch && pt) {
    if (pt.shape.length !== 3 || pt.shape[0] !== rows || pt.shape[2] !== dim) {
      throw new EmbeddingsFileError(
        path,
        "patch_tokens",
        `shape [${pt.shape}] is not [${rows}, Np, ${dim}] (rows and width of 'features')`,
      );
    }
    patchTokens = { data: await pt.f32(), tokens: pt.shape[1] };
  }
  return assemble(path, "safetensors", features, rows, dim, { ...f.metadata }, patchTokens);
}

async function readNpyEmbeddings(path: string): Promise<EmbeddingsFile> {
  using f = await openNpy(path);
  const shape = f.header.shape;
  if (shape.length !== 2) {
    throw new EmbeddingsFileError(
      path,
      "shape",
      `array of shape (${shape.join(", ")}) is not (N, D)`,
      "save the features as a 2-D array, one row per cell",
    );
  }
  const features = await f.array.f32();
  const sidecar = await readSidecar(path);
  return assemble(path, "npy", features, shape[0], shape[1], sidecar, null);
}

/** The sidecar names tried for an npy file, in order. */
export function sidecarPaths(npyPath: string): string[] {
  const out = [`${npyPath}.json`];
  if (/\.npy$/i.test(npyPath)) out.push(npyPath.replace(/\.npy$/i, ".json"));
  return out;
}

async function readSidecar(npyPath: string): Promise<Record<string, string>> {
  for (const p of sidecarPaths(npyPath)) {
    let text: string;
    try {
      text = await Deno.readTextFile(p);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw new EmbeddingsFileError(p, "sidecar", `cannot read: ${(e as Error).message}`);
    }
    let obj: unknown;
    try {
      obj = JSON.parse(text);
    } catch (e) {
      throw new EmbeddingsFileError(p, "sidecar", `not valid JSON: ${(e as Error).message}`);
    }
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
      throw new EmbeddingsFileError(p, "sidecar", "is not a JSON object of metadata");
    }
    // Lists may be stored as JSON lists (what we write) or JSON-encoded strings
    // (safetensors style); normalise to the latter so one parser serves both.
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(obj)) {
      if (typeof v === "string") out[k] = v;
      else if (Array.isArray(v)) out[k] = JSON.stringify(v);
      else if (v !== null) {
        throw new EmbeddingsFileError(p, k, `must be a string or a list, got ${typeof v}`);
      }
    }
    return out;
  }
  return {};
}

/** Checks the metadata against the features and builds the result. */
function assemble(
  path: string,
  format: EmbeddingsFormat,
  features: Float32Array,
  rows: number,
  dim: number,
  metadata: Record<string, string>,
  patchTokens: EmbeddingsFile["patchTokens"],
): EmbeddingsFile {
  const list = (key: string): string[] | null => {
    const raw = metadata[key];
    if (raw === undefined) return null;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch {
      throw new EmbeddingsFileError(path, key, "metadata is not a JSON list", "re-run embed");
    }
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string" && typeof x !== "number")) {
      throw new EmbeddingsFileError(path, key, "metadata is not a JSON list of strings");
    }
    if (v.length !== rows) {
      throw new EmbeddingsFileError(
        path,
        key,
        `has ${v.length} entries for ${rows} feature rows`,
        "the file is inconsistent; re-run embed",
      );
    }
    return v.map(String);
  };
  const paths = list(META_KEYS.paths) ?? Array.from({ length: rows }, (_, i) => `#${i}`);
  const labels = list(META_KEYS.labels);
  const patients = list(META_KEYS.patients);
  const splits = list(META_KEYS.splits);
  const keys = list(META_KEYS.keys);
  if (labels?.some((l) => l === "")) {
    throw new EmbeddingsFileError(path, "labels", `row ${labels.indexOf("")} has an empty label`);
  }
  if (patients?.some((p) => p === "")) {
    throw new EmbeddingsFileError(
      path,
      "patients",
      `row ${patients.indexOf("")} has an empty patient id`,
    );
  }
  const meta: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata)) {
    if (!Object.hasOwn(META_KEYS, k)) meta[k] = v;
  }
  if (meta.pool !== undefined && !(POOLINGS as readonly string[]).includes(meta.pool)) {
    throw new EmbeddingsFileError(path, "pool", `'${meta.pool}' is not ${POOLINGS.join("|")}`);
  }
  if (features.length !== rows * dim) {
    throw new EmbeddingsFileError(
      path,
      "features",
      `${features.length} values for [${rows}, ${dim}]`,
    );
  }
  return {
    path,
    format,
    features,
    rows,
    dim,
    paths,
    labels,
    patients,
    splits,
    keys,
    meta,
    patchTokens,
  };
}

/**
 * Reads a csv file row by row (RFC 4180 quoting, CRLF, BOM), never holding
 * the whole text: features go straight into a growing Float32Array.
 */
async function readCsvEmbeddings(source: FileSource): Promise<EmbeddingsFile> {
  const path = typeof source === "string" ? source : source.name;
  let header: string[] | null = null;
  let dim = 0;
  let rows = 0;
  let feats = new Float32Array(1024);
  const paths: string[] = [];
  const labels: string[] = [];
  const patients: string[] = [];
  const onRow = (row: string[], line: number) => {
    if (!header) {
      header = row;
      const ok = row.length >= 4 && row[0] === "path" && row[1] === "label" &&
        row[2] === "patient" && row.slice(3).every((h, j) => h === `f${j}`);
      if (!ok) {
        throw new EmbeddingsFileError(
          path,
          "header",
          `expected 'path,label,patient,f0,f1,…', found '${row.slice(0, 5).join(",")}${
            row.length > 5 ? ",…" : ""
          }'`,
          "write the file with `deno task embed --format csv`",
        );
      }
      dim = row.length - 3;
      return;
    }
    if (row.length === 1 && row[0] === "") return; // blank line
    if (row.length !== dim + 3) {
      throw new EmbeddingsFileError(
        path,
        `line ${line}`,
        `${row.length} fields, the header has ${dim + 3}`,
      );
    }
    if ((rows + 1) * dim > feats.length) {
      const grown = new Float32Array(Math.max(feats.length * 2, (rows + 1) * dim));
      grown.set(feats);
      feats = grown;
    }
    for (let j = 0; j < dim; j++) {
      const s = row[3 + j];
      const v = Number(s);
      if (s.trim() === "" || !Number.isFinite(v)) {
        throw new EmbeddingsFileError(path, `line ${line}, f${j}`, `'${s}' is not a finite number`);
      }
      feats[rows * dim + j] = v;
    }
    paths.push(row[0]);
    labels.push(row[1]);
    patients.push(row[2]);
    rows++;
  };
  let chunks: AsyncIterable<Uint8Array>;
  if (typeof source === "string") {
    try {
      chunks = (await Deno.open(path, { read: true })).readable;
    } catch (e) {
      throw new EmbeddingsFileError(path, "file", `cannot open: ${(e as Error).message}`);
    }
  } else chunks = byteChunks(source);
  const parser = new CsvParser(onRow);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  try {
    for await (const chunk of chunks) parser.push(decoder.decode(chunk, { stream: true }));
    parser.push(decoder.decode());
    parser.end();
  } catch (e) {
    if (e instanceof EmbeddingsFileError) throw e;
    throw new EmbeddingsFileError(
      path,
      "file",
      `cannot read as UTF-8 csv: ${(e as Error).message}`,
    );
  }
  if (!header) {
    throw new EmbeddingsFileError(path, "header", "the file is empty", "write it with embed");
  }
  const column = (values: string[], name: string): string[] | null => {
    const empty = values.filter((v) => v === "").length;
    if (empty === values.length) return null;
    if (empty > 0) {
      throw new EmbeddingsFileError(
        path,
        name,
        `row ${values.indexOf("")} has an empty ${name} while others have one`,
        `give every row a ${name}, or none`,
      );
    }
    return values;
  };
  return {
    path,
    format: "csv",
    features: feats.slice(0, rows * dim),
    rows,
    dim,
    paths,
    labels: column(labels, "label"),
    patients: column(patients, "patient"),
    splits: null,
    keys: null,
    meta: {},
    patchTokens: null,
  };
}

/** A ByteSource in 1 MiB chunks, in order. */
async function* byteChunks(source: ByteSource): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < source.size;) {
    const buf = new Uint8Array(Math.min(2 ** 20, source.size - at));
    const n = await source.read(at, buf);
    if (n === 0) return;
    yield buf.subarray(0, n);
    at += n;
  }
}

/** An incremental RFC 4180 parser: text in chunks, whole rows out. */
export class CsvParser {
  #row: string[] = [];
  #field = "";
  #quoted = false;
  #afterQuote = false;
  #pendingCR = false;
  #line = 1;
  #first = true;
  constructor(private readonly onRow: (row: string[], line: number) => void) {}

  push(text: string): void {
    let i = 0;
    if (this.#first && text.length > 0) {
      this.#first = false;
      if (text.charCodeAt(0) === 0xfeff) i = 1;
    }
    for (; i < text.length; i++) {
      const c = text[i];
      if (this.#pendingCR) {
        this.#pendingCR = false;
        if (c === "\n") continue;
      }
      if (this.#quoted) {
        if (c === '"') {
          this.#quoted = false;
          this.#afterQuote = true;
        } else this.#field += c;
        continue;
      }
      if (c === '"') {
        // A quote right after a closing quote is an escaped quote ("").
        if (this.#afterQuote) this.#field += '"';
        if (this.#afterQuote || this.#field === "") {
          this.#quoted = true;
          this.#afterQuote = false;
          continue;
        }
      }
      this.#afterQuote = false;
      if (c === ",") {
        this.#row.push(this.#field);
        this.#field = "";
      } else if (c === "\n" || c === "\r") {
        if (c === "\r") this.#pendingCR = true;
        this.#endRow();
      } else this.#field += c;
    }
  }

  #endRow(): void {
    this.#row.push(this.#field);
    this.onRow(this.#row, this.#line++);
    this.#row = [];
    this.#field = "";
  }

  end(): void {
    if (this.#field !== "" || this.#row.length > 0) this.#endRow();
  }
}

// ------------------------------------------------------------------ writing

/** Options of `createEmbeddingsWriter`. */
export interface EmbeddingsWriterOptions {
  /** Feature width D. */
  dim: number;
  /** Default: from the extension, else safetensors. */
  format?: EmbeddingsFormat;
  /** Patch tokens per row (Np), when `patch_tokens` is written (safetensors only). */
  patchTokens?: number;
  meta?: EmbeddingsMeta;
}

/** One block of rows for `EmbeddingsWriter.append`. */
export interface EmbeddingsBlock {
  /** [n, dim] row-major. */
  features: Float32Array;
  paths: readonly string[];
  /** One per row, or omitted/null for unlabelled data (consistently over all blocks). */
  labels?: readonly string[] | null;
  patients?: readonly string[] | null;
  /** Each row's ingest split and sample key, or omitted/null (consistently; not in csv). */
  splits?: readonly string[] | null;
  keys?: readonly string[] | null;
  /** [n, Np, dim] when the writer was created with `patchTokens`. */
  patchTokens?: Float32Array;
}

/** A whole in-memory set (written or read) as one `append` block. */
export function embeddingsBlock(
  e: Pick<
    EmbeddingsData,
    "features" | "paths" | "labels" | "patients" | "splits" | "keys" | "patchTokens"
  >,
): EmbeddingsBlock {
  return {
    features: e.features,
    paths: e.paths,
    labels: e.labels,
    patients: e.patients,
    splits: e.splits,
    keys: e.keys,
    patchTokens: e.patchTokens?.data,
  };
}

/** Bytes copied per read/write when assembling a safetensors file. */
const COPY_CHUNK = 8 * 2 ** 20;

/**
 * Streams an embeddings file block by block; `finish` makes it appear
 * atomically, `abort` removes every temporary file.
 */
export class EmbeddingsWriter {
  readonly path: string;
  readonly format: EmbeddingsFormat;
  readonly dim: number;
  readonly patchTokens: number;
  /** Rows written so far. */
  rows = 0;
  #paths: string[] = [];
  #labels: string[] | null | undefined = undefined;
  #patients: string[] | null | undefined = undefined;
  #splits: string[] | null | undefined = undefined;
  #keys: string[] | null | undefined = undefined;
  #meta: EmbeddingsMeta;
  #npy: NpyRowWriter | null = null;
  /** safetensors side files (features, patch tokens); `file` is null once closed. */
  #raw: { file: Deno.FsFile | null; path: string }[] = [];
  #csv: AtomicFile | null = null;
  #done = false;

  private constructor(path: string, format: EmbeddingsFormat, opts: EmbeddingsWriterOptions) {
    this.path = path;
    this.format = format;
    this.dim = opts.dim;
    this.patchTokens = opts.patchTokens ?? 0;
    this.#meta = opts.meta ?? {};
  }

  /** Opens the output (see `createEmbeddingsWriter`). */
  static async create(path: string, opts: EmbeddingsWriterOptions): Promise<EmbeddingsWriter> {
    const format = opts.format ?? formatFromPath(path) ?? "safetensors";
    if (!Number.isInteger(opts.dim) || opts.dim < 1) {
      throw new EmbeddingsFileError(path, "features", `dim=${opts.dim} must be an integer ≥ 1`);
    }
    const np = opts.patchTokens ?? 0;
    if (!Number.isInteger(np) || np < 0) {
      throw new EmbeddingsFileError(path, "patch_tokens", `${np} tokens per row is not valid`);
    }
    if (np > 0 && format !== "safetensors") {
      throw new EmbeddingsFileError(
        path,
        "patch_tokens",
        `the ${format} format holds features only`,
        "write patch tokens with --format safetensors",
      );
    }
    const pool = opts.meta?.pool;
    if (pool !== undefined && !(POOLINGS as readonly string[]).includes(pool)) {
      throw new EmbeddingsFileError(path, "pool", `'${pool}' is not ${POOLINGS.join("|")}`);
    }
    const w = new EmbeddingsWriter(path, format, opts);
    if (format === "npy") {
      w.#npy = await createNpyWriter(path, { cols: opts.dim });
    } else if (format === "csv") {
      w.#csv = await AtomicFile.create(path);
      const head = [
        "path",
        "label",
        "patient",
        ...Array.from({ length: opts.dim }, (_, j) => `f${j}`),
      ];
      await w.#csv.write(new TextEncoder().encode(head.join(",") + "\n"));
    } else {
      const sides = np > 0 ? ["features", "patch_tokens"] : ["features"];
      for (const s of sides) {
        const p = `${path}.${s}.raw.tmp`;
        const file = await Deno.open(p, { write: true, create: true, truncate: true });
        w.#raw.push({ file, path: p });
      }
    }
    return w;
  }

  /** Appends a block of rows. */
  async append(block: EmbeddingsBlock): Promise<void> {
    if (this.#done) throw new EmbeddingsFileError(this.path, "rows", "append after finish/abort");
    const n = block.paths.length;
    const d = this.dim;
    if (block.features.length !== n * d) {
      throw new EmbeddingsFileError(
        this.path,
        "features",
        `block has ${block.features.length} values for ${n} paths × ${d} dims`,
      );
    }
    for (let i = 0; i < block.features.length; i++) {
      if (!Number.isFinite(block.features[i])) {
        throw new EmbeddingsFileError(
          this.path,
          "features",
          `row ${this.rows + Math.floor(i / d)} holds ${block.features[i]}`,
          "features must be finite (check the model's input)",
        );
      }
    }
    this.#labels = this.#column("labels", this.#labels, block.labels, n);
    this.#patients = this.#column("patients", this.#patients, block.patients, n);
    this.#splits = this.#column("splits", this.#splits, block.splits, n);
    this.#keys = this.#column("keys", this.#keys, block.keys, n);
    if (this.patchTokens > 0) {
      if (!block.patchTokens || block.patchTokens.length !== n * this.patchTokens * d) {
        throw new EmbeddingsFileError(
          this.path,
          "patch_tokens",
          `block needs [${n}, ${this.patchTokens}, ${d}] patch tokens, got ${
            block.patchTokens?.length ?? "none"
          } values`,
        );
      }
    }
    if (this.format === "npy") await this.#npy!.write(block.features);
    else if (this.format === "csv") await this.#writeCsv(block);
    else {
      await writeAll(this.#raw[0].file!, block.features);
      if (this.patchTokens > 0) await writeAll(this.#raw[1].file!, block.patchTokens!);
    }
    this.#paths.push(...block.paths);
    this.rows += n;
  }

  #column(
    name: string,
    acc: string[] | null | undefined,
    given: readonly string[] | null | undefined,
    n: number,
  ): string[] | null {
    const has = given !== undefined && given !== null;
    if (acc !== undefined && (acc !== null) !== has) {
      throw new EmbeddingsFileError(
        this.path,
        name,
        `some blocks have ${name} and some do not`,
        `give ${name} for every block or for none`,
      );
    }
    if (!has) return null;
    if (given.length !== n) {
      throw new EmbeddingsFileError(this.path, name, `${given.length} entries for ${n} rows`);
    }
    const bad = given.findIndex((v) => typeof v !== "string" || v === "");
    if (bad >= 0) {
      throw new EmbeddingsFileError(this.path, name, `row ${this.rows + bad} is empty`);
    }
    return (acc ?? []).concat(given);
  }

  async #writeCsv(block: EmbeddingsBlock): Promise<void> {
    const d = this.dim;
    const lines: string[] = [];
    for (let i = 0; i < block.paths.length; i++) {
      const cells = [
        csvField(block.paths[i]),
        csvField(block.labels?.[i] ?? ""),
        csvField(block.patients?.[i] ?? ""),
      ];
      // 9 significant digits round-trip every float32 exactly.
      for (let j = 0; j < d; j++) {
        cells.push(String(Number(block.features[i * d + j].toPrecision(9))));
      }
      lines.push(cells.join(","));
    }
    await this.#csv!.write(new TextEncoder().encode(lines.join("\n") + "\n"));
  }

  /** The string metadata (lists JSON-encoded), as safetensors stores it. */
  #metadata(): Record<string, string> {
    const m = this.#meta;
    const out: Record<string, string> = { ...(m.extra ?? {}) };
    out[META_KEYS.paths] = JSON.stringify(this.#paths);
    if (this.#labels) out[META_KEYS.labels] = JSON.stringify(this.#labels);
    if (this.#patients) out[META_KEYS.patients] = JSON.stringify(this.#patients);
    if (this.#splits) out[META_KEYS.splits] = JSON.stringify(this.#splits);
    if (this.#keys) out[META_KEYS.keys] = JSON.stringify(this.#keys);
    if (m.arch !== undefined) out.arch = m.arch;
    if (m.weights !== undefined) out.weights = m.weights;
    if (m.pool !== undefined) out.pool = m.pool;
    out[VERSION_KEY] = m.version ?? BLOOM_VERSION;
    return out;
  }

  /** Completes the file and renames it into place. */
  async finish(): Promise<void> {
    if (this.#done) return;
    try {
      if (this.format === "npy") {
        await this.#npy!.finish();
        await writeJsonAtomically(`${this.path}.json`, this.#sidecar());
      } else if (this.format === "csv") {
        await this.#csv!.commit();
      } else {
        await this.#assembleSafetensors();
      }
    } catch (e) {
      await this.abort();
      throw e;
    }
    this.#done = true;
    await this.#removeRaw();
  }

  #sidecar(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(this.#metadata())) {
      out[k] = Object.hasOwn(META_KEYS, k) ? JSON.parse(v) : v;
    }
    return out;
  }

  async #assembleSafetensors(): Promise<void> {
    const n = this.rows;
    const d = this.dim;
    const header: Record<string, unknown> = { __metadata__: this.#metadata() };
    const featBytes = n * d * 4;
    header.features = { dtype: "F32", shape: [n, d], data_offsets: [0, featBytes] };
    if (this.patchTokens > 0) {
      const pb = n * this.patchTokens * d * 4;
      header.patch_tokens = {
        dtype: "F32",
        shape: [n, this.patchTokens, d],
        data_offsets: [featBytes, featBytes + pb],
      };
    }
    const head = encodeSafetensorsHeader(header);
    for (const r of this.#raw) {
      r.file?.close();
      r.file = null;
    }
    const out = await AtomicFile.create(this.path);
    try {
      await out.write(head);
      for (const r of this.#raw) {
        using src = await Deno.open(r.path, { read: true });
        const buf = new Uint8Array(COPY_CHUNK);
        for (;;) {
          const got = await src.read(buf);
          if (got === null) break;
          await out.write(buf.subarray(0, got));
        }
      }
    } catch (e) {
      await out.abort();
      throw e;
    }
    await out.commit();
  }

  async #removeRaw(): Promise<void> {
    for (const r of this.#raw) {
      r.file?.close();
      r.file = null;
      await Deno.remove(r.path).catch(() => {});
    }
    this.#raw = [];
  }

  /** Drops everything written; any existing file at `path` stays untouched. */
  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#npy?.abort();
    await this.#csv?.abort();
    await this.#removeRaw();
  }
}

/** Starts streaming an embeddings file; see `EmbeddingsWriter`. */
export function createEmbeddingsWriter(
  path: string,
  opts: EmbeddingsWriterOptions,
): Promise<EmbeddingsWriter> {
  return EmbeddingsWriter.create(path, opts);
}

/**
 * Writes a whole embeddings file at once (format: argument, else the
 * extension, else safetensors).
 */
export async function writeEmbeddings(
  path: string,
  data: EmbeddingsData,
  format?: EmbeddingsFormat,
): Promise<void> {
  const w = await createEmbeddingsWriter(path, {
    dim: data.dim,
    format,
    patchTokens: data.patchTokens?.tokens,
    meta: data.meta,
  });
  try {
    await w.append(embeddingsBlock(data));
  } catch (e) {
    await w.abort();
    throw e;
  }
  await w.finish();
}

/**
 * The labels of `emb`, or an error saying which protocol needs them and how
 * to get a labelled file.
 */
export function requireLabels(emb: EmbeddingsFile, protocol: string): string[] {
  if (emb.labels) return emb.labels;
  throw new EmbeddingsFileError(
    emb.path,
    "labels",
    `no labels in the metadata, and the ${protocol} protocol needs one class label per row`,
    "embed a labelled layout (ingest with --layout imagefolder, csv, voc or mil, then embed " +
      "those shards) so the file carries labels",
  );
}

/** The patient ids of `emb`, or an error naming the protocol and the fix. */
export function requirePatients(emb: EmbeddingsFile, protocol: string): string[] {
  if (emb.patients) return emb.patients;
  throw new EmbeddingsFileError(
    emb.path,
    "patients",
    `no patients in the metadata, and the ${protocol} protocol needs one patient id per row`,
    "embed a patient-level layout (ingest with --layout mil: <split>/<class>/<patient>/ images)",
  );
}

/** A csv field, quoted (RFC 4180) when it holds a comma, quote, line break or edge spaces. */
export function csvField(s: string): string {
  return /[",\r\n]/.test(s) || s !== s.trim() ? `"${s.replace(/"/g, '""')}"` : s;
}

async function writeAll(file: Deno.FsFile, data: Float32Array): Promise<void> {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

function writeJsonAtomically(path: string, obj: unknown): Promise<void> {
  return writeAtomically(
    path,
    (out) => out.write(new TextEncoder().encode(JSON.stringify(obj) + "\n")),
  );
}
