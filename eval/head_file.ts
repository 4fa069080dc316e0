/**
 * The file format of saved heads (the linear probe, the kNN reference set and
 * the MIL heads `eval --save` writes and `predict` reads): one safetensors
 * file per head, its weights as tensors and everything else as JSON strings
 * in `__metadata__`:
 *
 * - `bloom.head`: `probe`, `knn` or `mil`; `bloom.head_version`: `1`;
 *   `bloom.version`: the bloom that wrote it.
 * - `embedding`: the embedding model the head was trained on, as JSON
 *   `{arch, weights, weights_sha256, pool, input_size, dim}` (`weights` is
 *   the checkpoint's file name, `weights_sha256` its hash or null where the
 *   embeddings file did not record it).
 * - `classes`: the class names, JSON list, in the head's class order.
 * - `trained_on`: JSON provenance (features file, split, seed), free-form.
 * - per kind, the keys the kind's module documents (eval/probe.ts,
 *   eval/knn_index.ts, eval/mil_head.ts).
 *
 * A head is applied only to embeddings of the same model: same architecture,
 * weights (by hash where both sides know it, else by file name), pooling,
 * input size and width (`checkSameEmbedding`). Anything else is refused with
 * a message naming both models.
 */
import { basename } from "../data/paths.ts"; // not node:path: the browser page loads heads too
import { BLOOM_VERSION, POOLINGS } from "../data/embeddings_file.ts";
import { CheckpointError, FileFieldError, InputError } from "../data/errors.ts";
import type { FileSource } from "../data/file.ts";
import type { TensorData, TensorRecord } from "../data/record.ts";
import { openSafetensors, type SafetensorsFile, writeSafetensors } from "../data/safetensors.ts";
import type { Label } from "./labels.ts";

/** The kinds of saved head. */
export const HEAD_KINDS = ["probe", "knn", "mil"] as const;
/** One kind of saved head. */
export type HeadKind = typeof HEAD_KINDS[number];

/** The head format version this code writes and reads. */
export const HEAD_VERSION = "1";

/** The embedding model a head was trained on (or an input was embedded with). */
export interface EmbeddingModel {
  /** Backbone architecture ("vit_small", …), or null where unknown. */
  arch: string | null;
  /** The checkpoint's file name (no directory), or null where unknown. */
  weights: string | null;
  /** Lower-case hex SHA-256 of the checkpoint, or null where unknown. */
  weightsSha256: string | null;
  /** Pooling (cls, mean, cls+mean), or null where unknown. */
  pool: string | null;
  /** Side in pixels the model saw, or null where unknown. */
  inputSize: number | null;
  /** Embedding width. */
  dim: number;
}

/** A bad, unreadable or mismatched head file: names the file, the field and the fix. */
export class HeadFileError extends FileFieldError {
  override name = "HeadFileError";
}

/** A head applied to embeddings of another model. */
export class HeadMismatchError extends InputError {
  override name = "HeadMismatchError";
}

/**
 * The embedding model described by an embeddings file's metadata (`arch`,
 * `weights`, `pool`, `bloom.size`, `bloom.weights_sha256`) and its width.
 */
export function embeddingModelFromMeta(meta: Record<string, string>, dim: number): EmbeddingModel {
  const size = Number(meta["bloom.size"]);
  return {
    arch: meta.arch || null,
    weights: meta.weights ? basename(meta.weights) : null,
    weightsSha256: meta["bloom.weights_sha256"] || null,
    pool: meta.pool || null,
    inputSize: Number.isInteger(size) && size > 0 ? size : null,
    dim,
  };
}

/** One line naming a model: "vit_small DinoBloom-S.pth (sha256 1a2b3c4d…), pool cls, 224 px, 384-d". */
export function describeEmbeddingModel(m: EmbeddingModel): string {
  const parts = [
    `${m.arch ?? "unknown architecture"} ${m.weights ?? "unknown weights"}` +
    (m.weightsSha256 ? ` (sha256 ${m.weightsSha256.slice(0, 12)}…)` : ""),
    `pool ${m.pool ?? "unknown"}`,
    m.inputSize ? `${m.inputSize} px` : "input size unknown",
    `${m.dim}-d`,
  ];
  return parts.join(", ");
}

/** One field in which two embedding models differ. */
export interface EmbeddingDifference {
  field: "architecture" | "weights" | "pooling" | "input size" | "dimension";
  head: string;
  input: string;
}

/**
 * Where `input` differs from `head`, and which fields could not be compared
 * because one side does not record them. Weights are compared by hash when
 * both know it (a renamed checkpoint is the same model), else by file name.
 */
export function embeddingDifferences(
  head: EmbeddingModel,
  input: EmbeddingModel,
): { differences: EmbeddingDifference[]; unchecked: string[] } {
  const differences: EmbeddingDifference[] = [];
  const unchecked: string[] = [];
  const cmp = (
    field: EmbeddingDifference["field"],
    a: string | number | null,
    b: string | number | null,
  ) => {
    if (a === null || b === null) unchecked.push(field);
    else if (a !== b) differences.push({ field, head: String(a), input: String(b) });
  };
  if (head.dim !== input.dim) {
    differences.push({ field: "dimension", head: String(head.dim), input: String(input.dim) });
  }
  cmp("architecture", head.arch, input.arch);
  if (head.weightsSha256 && input.weightsSha256) {
    if (head.weightsSha256 !== input.weightsSha256) {
      differences.push({
        field: "weights",
        head: `${head.weights ?? "?"} (sha256 ${head.weightsSha256})`,
        input: `${input.weights ?? "?"} (sha256 ${input.weightsSha256})`,
      });
    }
  } else cmp("weights", head.weights, input.weights);
  cmp("pooling", head.pool, input.pool);
  cmp("input size", head.inputSize, input.inputSize);
  return { differences, unchecked };
}

/**
 * Throws HeadMismatchError, naming both models and what differs, unless
 * `input` (what `inputWhat` names: a features file, `--weights W`) is the
 * embedding model the head at `headPath` was trained on. Returns the fields
 * neither side could check (for a warning).
 */
export function checkSameEmbedding(
  headPath: string,
  head: EmbeddingModel,
  inputWhat: string,
  input: EmbeddingModel,
): string[] {
  const { differences, unchecked } = embeddingDifferences(head, input);
  if (differences.length === 0) return unchecked;
  const what = differences.map((d) => `${d.field} ${d.head} ≠ ${d.input}`).join("; ");
  throw new HeadMismatchError(
    `${headPath} was trained on embeddings of ${describeEmbeddingModel(head)}, but ${inputWhat} ` +
      `is ${describeEmbeddingModel(input)} (${what}). A head only applies to embeddings of the ` +
      `model it was trained on: embed the cells with that model, or train a head on these ` +
      `embeddings (eval --save)`,
  );
}

/** The model as the files store it (snake_case keys, as in `embedding`). */
export function embeddingJson(m: EmbeddingModel): Record<string, string | number | null> {
  return {
    arch: m.arch,
    weights: m.weights,
    weights_sha256: m.weightsSha256,
    pool: m.pool,
    input_size: m.inputSize,
    dim: m.dim,
  };
}

function embeddingFromJson(path: string, raw: string | undefined): EmbeddingModel {
  const bad = (what: string) =>
    new HeadFileError(path, "embedding", what, "re-save the head with `eval --save`");
  if (raw === undefined) throw bad("missing (the embedding model the head was trained on)");
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(raw);
  } catch {
    throw bad("is not JSON");
  }
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw bad("is not a JSON object");
  const str = (k: string) => {
    const v = o[k];
    if (v === null || v === undefined) return null;
    if (typeof v !== "string") throw bad(`${k} must be a string or null`);
    return v;
  };
  const dim = o.dim;
  if (typeof dim !== "number" || !Number.isInteger(dim) || dim < 1) {
    throw bad(`dim ${JSON.stringify(dim)} is not a positive integer`);
  }
  const size = o.input_size;
  if (size !== null && size !== undefined && !(Number.isInteger(size) && (size as number) > 0)) {
    throw bad(`input_size ${JSON.stringify(size)} is not a positive integer or null`);
  }
  const pool = str("pool");
  if (pool !== null && !(POOLINGS as readonly string[]).includes(pool)) {
    throw bad(`pool '${pool}' is not ${POOLINGS.join("|")}`);
  }
  return {
    arch: str("arch"),
    weights: str("weights"),
    weightsSha256: str("weights_sha256"),
    pool,
    inputSize: (size as number | null | undefined) ?? null,
    dim,
  };
}

/** What every head file carries besides its kind's own tensors and keys. */
export interface HeadCommon {
  embedding: EmbeddingModel;
  /** Class names in the head's order. */
  classes: Label[];
  /** Provenance (features file, split, seed …), stored as JSON. */
  trainedOn?: Record<string, unknown>;
}

/**
 * Writes a head file atomically: `tensors` plus the common metadata and the
 * kind's own string `meta`.
 */
export async function writeHeadFile(
  path: string,
  kind: HeadKind,
  common: HeadCommon,
  tensors: Record<string, TensorData>,
  meta: Record<string, string>,
): Promise<void> {
  const metadata: Record<string, string> = {
    "bloom.head": kind,
    "bloom.head_version": HEAD_VERSION,
    "bloom.version": BLOOM_VERSION,
    embedding: JSON.stringify(embeddingJson(common.embedding)),
    classes: JSON.stringify(common.classes),
    trained_on: JSON.stringify(common.trainedOn ?? {}),
    ...meta,
  };
  await writeSafetensors(path, tensors, metadata);
}

/** An open head file: the common fields, the kind's metadata and its tensors. */
export interface HeadFile extends HeadCommon {
  path: string;
  kind: HeadKind;
  meta: Readonly<Record<string, string>>;
  file: SafetensorsFile;
}

/**
 * Opens a head file and checks the common fields. `want` (a kind or kinds)
 * refuses other kinds with a message naming the file and what it holds.
 * The caller closes `file`.
 */
export async function openHeadFile(
  source: FileSource,
  want?: HeadKind | HeadKind[],
): Promise<HeadFile> {
  const path = typeof source === "string" ? source : source.name;
  let file: SafetensorsFile;
  try {
    file = await openSafetensors(source);
  } catch (e) {
    if (e instanceof CheckpointError) {
      throw new HeadFileError(
        path,
        "file",
        `not a readable head file: ${e.message}`,
        "pass a head written by `eval --save` (a .safetensors file), or save it again",
      );
    }
    throw e;
  }
  try {
    const meta = file.metadata;
    const kind = meta["bloom.head"];
    if (kind === undefined) {
      throw new HeadFileError(
        path,
        "bloom.head",
        "this safetensors file is not a bloom head (no 'bloom.head' in its metadata)",
        "pass a head written by `eval --save`",
      );
    }
    if (!(HEAD_KINDS as readonly string[]).includes(kind)) {
      throw new HeadFileError(
        path,
        "bloom.head",
        `unknown kind '${kind}'`,
        "expected probe|knn|mil",
      );
    }
    if (meta["bloom.head_version"] !== HEAD_VERSION) {
      throw new HeadFileError(
        path,
        "bloom.head_version",
        `version ${meta["bloom.head_version"]} is not the ${HEAD_VERSION} this bloom reads`,
        "save the head again with this bloom's `eval --save`",
      );
    }
    const wanted = want === undefined ? null : [want].flat();
    if (wanted && !wanted.includes(kind as HeadKind)) {
      throw new HeadFileError(
        path,
        "bloom.head",
        `holds a ${kind} head, not a ${wanted.join(" or ")} head`,
        `pass the ${wanted.join("/")} head file`,
      );
    }
    return {
      path,
      kind: kind as HeadKind,
      meta,
      file,
      embedding: embeddingFromJson(path, meta.embedding),
      classes: jsonList(path, meta, "classes"),
      trainedOn: jsonObject(path, meta, "trained_on"),
    };
  } catch (e) {
    file.close();
    throw e;
  }
}

/** The head kind of the file at `path` (opens and closes it). */
export async function headKindOf(path: string): Promise<HeadKind> {
  const h = await openHeadFile(path);
  h.file.close();
  return h.kind;
}

/** The metadata key `key` as a JSON list of labels. */
export function jsonList(path: string, meta: Record<string, string>, key: string): Label[] {
  const raw = meta[key];
  let v: unknown;
  try {
    v = raw === undefined ? undefined : JSON.parse(raw);
  } catch {
    v = undefined;
  }
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string" && typeof x !== "number")) {
    throw new HeadFileError(path, key, "missing or not a JSON list of class names", "re-save it");
  }
  return v as Label[];
}

function jsonObject(
  path: string,
  meta: Record<string, string>,
  key: string,
): Record<string, unknown> {
  const raw = meta[key];
  if (raw === undefined) return {};
  try {
    const v = JSON.parse(raw);
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v;
  } catch { /* reported below */ }
  throw new HeadFileError(path, key, "is not a JSON object");
}

/** A metadata number, checked; names the file and key otherwise. */
export function metaNumber(
  path: string,
  meta: Record<string, string>,
  key: string,
  check: (v: number) => boolean = Number.isFinite,
): number {
  const v = Number(meta[key]);
  if (meta[key] === undefined || meta[key].trim() === "" || !check(v)) {
    throw new HeadFileError(path, key, `${JSON.stringify(meta[key])} is not a valid value`);
  }
  return v;
}

/**
 * Reads a tensor of the head as float64 (f64 or f32 on disk), checking its
 * shape against `shape`.
 */
export async function readF64(h: HeadFile, name: string, shape: number[]): Promise<Float64Array> {
  const t = tensorOf(h, name, shape);
  if (t.dtype === "f64") {
    const bytes = await t.bytes();
    return new Float64Array(bytes.slice().buffer);
  }
  return Float64Array.from(await t.f32());
}

/** Reads a tensor of the head as float32, checking its shape. */
export async function readF32(h: HeadFile, name: string, shape: number[]): Promise<Float32Array> {
  return (await tensorOf(h, name, shape).f32()).slice();
}

/** Reads an i32 tensor of the head, checking its shape. */
export async function readI32(h: HeadFile, name: string, shape: number[]): Promise<Int32Array> {
  const t = tensorOf(h, name, shape);
  if (t.dtype !== "i32") {
    throw new HeadFileError(h.path, name, `dtype ${t.dtype} is not i32`, "re-save the head");
  }
  return new Int32Array((await t.bytes()).slice().buffer);
}

/** The tensor `name` of the head, its shape checked (−1 matches any size). */
export function tensorOf(h: HeadFile, name: string, shape: number[]): TensorRecord {
  const t = h.file.tensors.get(name);
  if (!t) {
    throw new HeadFileError(
      h.path,
      name,
      `tensor missing (the file holds ${[...h.file.tensors.keys()].join(", ") || "none"})`,
      "the head file is incomplete; save it again",
    );
  }
  const ok = t.shape.length === shape.length && shape.every((d, i) => d < 0 || t.shape[i] === d);
  if (!ok) {
    throw new HeadFileError(
      h.path,
      name,
      `shape [${t.shape}] is not [${shape.map((d) => (d < 0 ? "n" : d))}]`,
      "the head file is inconsistent; save it again",
    );
  }
  return t;
}
