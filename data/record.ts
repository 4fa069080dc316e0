/**
 * The tensor types every format shares: TensorRecord (a loaded tensor whose
 * bytes are read lazily), TensorData (what writers take from memory) and
 * TensorFile (an open file of named tensors, and OpenTensorFile, the part of
 * one every reader shares). The whole project uses these for tensors that
 * come from or go to disk.
 */
import {
  DTYPE_ARRAY,
  DTYPE_SIZE,
  type DtypeName,
  DTYPES,
  fromFloat32,
  isDtype,
  takeFloat32,
} from "./dtypes.ts";
import { InvalidTensorError, MissingKeyError } from "./errors.ts";
import type { RandomAccessFile } from "./file.ts";
import { numelOf } from "./strided.ts";

/** A tensor in a file. Its bytes are read only when asked for, each call afresh. */
export interface TensorRecord {
  /** Full name in the file ("teacher.backbone.cls_token"). */
  readonly name: string;
  /** Element type as stored (kept even when read as f32). */
  readonly dtype: DtypeName;
  readonly shape: readonly number[];
  /** Product of `shape`. */
  readonly numel: number;
  /** Reads the values converted to float32 (a fresh array each call). */
  f32(): Promise<Float32Array>;
  /** Reads the C-contiguous little-endian bytes in `dtype` (a fresh array each call). */
  bytes(): Promise<Uint8Array>;
}

/**
 * A tensor in memory, for the writers. `data` is one of:
 * - the typed array of `dtype` (Float32Array for f32, Float64Array for f64,
 *   BigInt64Array for i64, Int32Array, Int16Array, Int8Array, Uint8Array for
 *   u8 and bool, Uint16Array of raw bits for f16 and bf16), `numel` long;
 * - a Float32Array for any other dtype, converted on write (f16/bf16 round
 *   half to even, integers truncate);
 * - a Uint8Array of raw little-endian bytes, `numel × size` long.
 */
export interface TensorData {
  dtype: DtypeName;
  shape: readonly number[];
  data: ArrayBufferView;
}

/** What writers accept for one tensor: data in memory, or a record from another file. */
export type TensorSource = TensorData | TensorRecord;

/** An open file of named tensors (a .pth, .safetensors or .npy). */
export interface TensorFile {
  readonly path: string;
  /** Every tensor, by full name, in file order. */
  readonly tensors: ReadonlyMap<string, TensorRecord>;
  /** The tensor called `name`; MissingKeyError (with near names) when absent. */
  tensor(name: string): TensorRecord;
  /** Closes the file; records read afterwards fail. */
  close(): void;
  [Symbol.dispose](): void;
}

/**
 * What every format's open file shares: its tensors by full name, lookup
 * with near-name hints, and closing the file (or archive) they are read from.
 */
export class OpenTensorFile implements TensorFile {
  readonly path: string;
  readonly tensors: ReadonlyMap<string, TensorRecord>;
  #source: { close(): void };

  constructor(
    path: string,
    tensors: ReadonlyMap<string, TensorRecord>,
    source: { close(): void },
  ) {
    this.path = path;
    this.tensors = tensors;
    this.#source = source;
  }

  tensor(name: string): TensorRecord {
    const t = this.tensors.get(name);
    if (!t) throw missingTensor(this.path, name, this.tensors.keys());
    return t;
  }

  close(): void {
    this.#source.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A tensor stored as one C-contiguous run of bytes in a file (a .npy array,
 * a safetensors entry), read from disk on each call.
 */
export class FileRangeTensor implements TensorRecord {
  readonly numel: number;
  readonly byteLength: number;
  constructor(
    readonly name: string,
    readonly dtype: DtypeName,
    readonly shape: readonly number[],
    private readonly file: RandomAccessFile,
    /** Absolute file offset of the first byte. */
    readonly offset: number,
  ) {
    this.numel = numelOf(shape);
    this.byteLength = this.numel * DTYPE_SIZE[dtype];
  }
  bytes(): Promise<Uint8Array> {
    return this.file.readAt(this.offset, this.byteLength, this.name);
  }
  async f32(): Promise<Float32Array> {
    return takeFloat32(await this.bytes(), this.dtype);
  }
}

/** Whether `v` is a TensorRecord (has `bytes()`), as opposed to TensorData. */
export function isTensorRecord(v: unknown): v is TensorRecord {
  return typeof v === "object" && v !== null && typeof (v as TensorRecord).bytes === "function" &&
    typeof (v as TensorRecord).f32 === "function";
}

/** Whether `v` looks like TensorData: a dtype string, a shape array and an ArrayBufferView. */
export function isTensorData(v: unknown): v is TensorData {
  if (typeof v !== "object" || v === null) return false;
  const t = v as TensorData;
  return typeof t.dtype === "string" && Array.isArray(t.shape) && ArrayBuffer.isView(t.data);
}

/**
 * Element count of `shape`; throws InvalidTensorError naming `file` and
 * `name` unless every dimension is a non-negative safe integer.
 */
export function checkShape(file: string, name: string, shape: unknown): number {
  if (!Array.isArray(shape)) {
    throw new InvalidTensorError("shape is not an array", {
      file,
      key: name,
      expected: "an array of non-negative integers",
      found: String(shape),
    });
  }
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new InvalidTensorError("bad shape", {
        file,
        key: name,
        expected: "non-negative integer dimensions",
        found: `[${shape}]`,
      });
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) {
    throw new InvalidTensorError("shape has too many elements", {
      file,
      key: name,
      found: `[${shape}]`,
    });
  }
  return n;
}

/**
 * Validates TensorData for writing under `name`: a known dtype, a good shape
 * and a data array of an accepted kind and exact length. Returns numel.
 */
export function checkTensorData(file: string, name: string, t: TensorData): number {
  const { dtype, shape, data } = t;
  if (!isDtype(dtype)) {
    throw new InvalidTensorError("unknown dtype", {
      file,
      key: name,
      expected: DTYPES.join(", "),
      found: String(dtype),
    });
  }
  const numel = checkShape(file, name, shape);
  if (!ArrayBuffer.isView(data)) {
    throw new InvalidTensorError("data is not a typed array", {
      file,
      key: name,
      found: typeof data,
    });
  }
  const native = DTYPE_ARRAY[dtype];
  const kind = (data.constructor as unknown) === native
    ? "native"
    : data instanceof Float32Array
    ? "f32"
    : data instanceof Uint8Array
    ? "raw"
    : null;
  if (!kind) {
    throw new InvalidTensorError("data array does not match the dtype", {
      file,
      key: name,
      expected: `${native.name}, Float32Array or raw Uint8Array for ${dtype}`,
      found: data.constructor.name,
    });
  }
  const want = kind === "raw"
    ? numel * DTYPE_SIZE[dtype]
    : numel * (kind === "f32" ? 4 : native.BYTES_PER_ELEMENT);
  if (data.byteLength !== want) {
    throw new InvalidTensorError("data length does not match shape × dtype", {
      file,
      key: name,
      expected: `${kind === "raw" ? `${want} bytes` : `${numel} elements`} ([${shape}] ${dtype})`,
      found: kind === "raw"
        ? `${data.byteLength} bytes`
        : `${(data as unknown as ArrayLike<unknown>).length} elements of ${data.constructor.name}`,
    });
  }
  return numel;
}

/**
 * Validates a tensor to be written under `name` (TensorData fully; a record's
 * dtype and shape) and returns its element count.
 */
export function checkSource(file: string, name: string, src: TensorSource): number {
  if (!isTensorRecord(src)) return checkTensorData(file, name, src);
  if (!isDtype(src.dtype)) {
    throw new InvalidTensorError("unknown dtype", {
      file,
      key: name,
      expected: DTYPES.join(", "),
      found: String(src.dtype),
    });
  }
  return checkShape(file, name, src.shape);
}

/**
 * The little-endian bytes of `src` for writing to `file` under `name`: read
 * from a TensorRecord, or taken (converted if needed) from TensorData; always
 * exactly `numel × size` long.
 */
export async function sourceBytes(
  file: string,
  name: string,
  src: TensorSource,
): Promise<Uint8Array> {
  const numel = checkSource(file, name, src);
  if (isTensorRecord(src)) {
    const want = numel * DTYPE_SIZE[src.dtype];
    const bytes = await src.bytes();
    if (bytes.length !== want) {
      throw new InvalidTensorError("record returned the wrong number of bytes", {
        file,
        key: name,
        expected: `${want} bytes ([${src.shape}] ${src.dtype})`,
        found: `${bytes.length}`,
      });
    }
    return bytes;
  }
  const data = src.data;
  const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if ((data.constructor as unknown) !== DTYPE_ARRAY[src.dtype] && data instanceof Float32Array) {
    return fromFloat32(data, src.dtype);
  }
  return raw;
}

/**
 * MissingKeyError for `name` in `file`, listing the names that end with it
 * (a missing prefix such as "teacher.backbone.") or, else, the first few.
 */
export function missingTensor(
  file: string,
  name: string,
  names: Iterable<string>,
): MissingKeyError {
  const all = [...names];
  const near = all.filter((n) => n.endsWith(`.${name}`) || n.endsWith(name)).slice(0, 5);
  const hint = near.length
    ? `did you mean ${near.map((n) => `'${n}'`).join(", ")}?`
    : all.length
    ? `the file holds ${all.length} tensors, e.g. ${
      all.slice(0, 5).map((n) => `'${n}'`).join(", ")
    }`
    : "the file holds no tensors";
  return new MissingKeyError("no such tensor", { file, key: name, fix: hint });
}
