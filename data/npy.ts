/**
 * numpy `.npy` files (format versions 1.0, 2.0 and 3.0; little-endian,
 * C order), so numpy users can `np.load` bloom's outputs and bloom can read
 * arrays from numpy. Layout: `\x93NUMPY`, major, minor, header length (u16
 * for 1.0, u32 after), a Python dict literal
 * `{'descr': '<f4', 'fortran_order': False, 'shape': (N, D), }` padded with
 * spaces and a newline so the data starts 64-byte aligned, then the data.
 *
 * `createNpyWriter` streams an [N, D] float32 matrix row block by row block
 * (embeddings of a whole data set) without holding it in memory.
 */
import { DTYPE_NUMPY, DTYPE_SIZE, type DtypeName, lookup, NUMPY_DTYPE } from "./dtypes.ts";
import { CorruptFileError, InvalidTensorError, UnsupportedFormatError } from "./errors.ts";
import { AtomicFile, type FileSource, RandomAccessFile, writeAtomically } from "./file.ts";
import { limitError, LIMITS } from "./limits.ts";
import {
  checkSource,
  FileRangeTensor,
  OpenTensorFile,
  sourceBytes,
  type TensorRecord,
  type TensorSource,
} from "./record.ts";
import { numelOf } from "./strided.ts";

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
/** numpy aligns the data start to this many bytes. */
const ALIGN = 64;

/** A parsed .npy header. */
export interface NpyHeader {
  version: [number, number];
  dtype: DtypeName;
  shape: number[];
  /** File offset of the first data byte. */
  dataOffset: number;
}

/** An open .npy file: one tensor, named after the file (without `.npy`). */
export class NpyFile extends OpenTensorFile {
  readonly header: NpyHeader;
  /** The array. */
  readonly array: TensorRecord;

  constructor(file: RandomAccessFile, header: NpyHeader) {
    const name = (file.path.split("/").pop() ?? "array").replace(/\.npy$/, "");
    const array = new FileRangeTensor(name, header.dtype, header.shape, file, header.dataOffset);
    super(file.path, new Map([[name, array]]), file);
    this.header = header;
    this.array = array;
  }
}

/** Opens a .npy file and validates its header against the file size. */
export async function openNpy(source: FileSource): Promise<NpyFile> {
  const file = await RandomAccessFile.open(source);
  try {
    return new NpyFile(file, await readHeader(file));
  } catch (e) {
    file.close();
    throw e;
  }
}

/** Reads a whole .npy file as float32 (the source dtype is reported alongside). */
export async function readNpy(
  path: string,
): Promise<{ dtype: DtypeName; shape: number[]; data: Float32Array }> {
  using f = await openNpy(path);
  return { dtype: f.header.dtype, shape: f.header.shape, data: await f.array.f32() };
}

async function readHeader(file: RandomAccessFile): Promise<NpyHeader> {
  const path = file.path;
  const bad = (what: string, expected?: string, found?: string) =>
    new CorruptFileError(what, { file: path, key: "npy header", expected, found });
  if (file.size < 10) {
    throw bad("too short for a .npy file (truncated?)", "at least 10 bytes", `${file.size}`);
  }
  const pre = await file.readAt(0, 12 <= file.size ? 12 : 10, "npy header");
  if (!MAGIC.every((b, i) => pre[i] === b)) {
    throw bad("not a .npy file", "magic \\x93NUMPY", "other bytes");
  }
  const major = pre[6];
  const minor = pre[7];
  if (major < 1 || major > 3) {
    throw new UnsupportedFormatError("unknown .npy format version", {
      file: path,
      key: "npy header",
      expected: "1.0, 2.0 or 3.0",
      found: `${major}.${minor}`,
    });
  }
  const dv = new DataView(pre.buffer);
  if (major > 1 && pre.length < 12) throw bad("header length field is truncated");
  const hlen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  if (start + hlen > file.size) {
    throw bad(
      "header is longer than the file (truncated?)",
      `≤ ${file.size - start} bytes`,
      `${hlen}`,
    );
  }
  const text = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(
    await file.readAt(start, hlen, "npy header"),
  );
  const dict = parseDict(path, text);
  const descr = dict.get("descr");
  const fortran = dict.get("fortran_order");
  const shape = dict.get("shape");
  if (typeof descr !== "string" || typeof fortran !== "boolean" || !Array.isArray(shape)) {
    throw bad(
      "header lacks descr, fortran_order or shape",
      "{'descr': str, 'fortran_order': bool, 'shape': tuple}",
      text.trim(),
    );
  }
  if (shape.length > LIMITS.rank) {
    throw limitError(path, "shape", "rank", LIMITS.rank, shape.length);
  }
  const dtype = lookup(NUMPY_DTYPE, descr);
  if (!dtype) {
    throw new UnsupportedFormatError("dtype not supported", {
      file: path,
      key: "descr",
      expected: Object.keys(NUMPY_DTYPE).join(", "),
      found: JSON.stringify(descr),
      fix: descr.startsWith(">")
        ? "save it little-endian: np.save(path, a.astype(a.dtype.newbyteorder('<')))"
        : undefined,
    });
  }
  if (fortran) {
    throw new UnsupportedFormatError("Fortran-order arrays are not supported", {
      file: path,
      key: "fortran_order",
      expected: "False",
      found: "True",
      fix: "save it in C order: np.save(path, np.ascontiguousarray(a))",
    });
  }
  const dataOffset = start + hlen;
  const numel = numelOf(shape);
  const need = numel * DTYPE_SIZE[dtype];
  if (!(need <= file.size - dataOffset)) {
    throw new CorruptFileError("data is shorter than the shape says (truncated?)", {
      file: path,
      key: "data",
      expected: `${need} bytes for shape (${shape}) ${descr}`,
      found: `${file.size - dataOffset}`,
    });
  }
  return { version: [major, minor], dtype, shape, dataOffset };
}

/**
 * Parses numpy's header dict literal: str keys; str, True/False or int-tuple
 * values. Never evaluates anything.
 */
function parseDict(path: string, text: string): Map<string, string | boolean | number[]> {
  let i = 0;
  const fail = (what: string): never => {
    throw new CorruptFileError(`unreadable header dict: ${what} at character ${i}`, {
      file: path,
      key: "npy header",
      found: JSON.stringify(text.slice(0, 120)),
    });
  };
  const ws = () => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  const eat = (c: string) => {
    ws();
    if (text[i] !== c) fail(`expected '${c}'`);
    i++;
  };
  const str = (): string => {
    ws();
    const q = text[i];
    if (q !== "'" && q !== '"') return fail("expected a string");
    const end = text.indexOf(q, i + 1);
    if (end < 0) fail("unterminated string");
    const s = text.slice(i + 1, end);
    i = end + 1;
    return s;
  };
  const value = (): string | boolean | number[] => {
    ws();
    if (text[i] === "'" || text[i] === '"') return str();
    if (text.startsWith("True", i)) return (i += 4), true;
    if (text.startsWith("False", i)) return (i += 5), false;
    if (text[i] === "(") {
      i++;
      const dims: number[] = [];
      for (;;) {
        ws();
        if (text[i] === ")") break;
        const m = /^(\d+)L?/.exec(text.slice(i, i + 24));
        if (!m) fail("expected a dimension");
        const d = Number(m![1]);
        if (!Number.isSafeInteger(d)) fail("dimension too large");
        dims.push(d);
        i += m![0].length;
        ws();
        if (text[i] === ",") i++;
        else if (text[i] !== ")") fail("expected ',' or ')'");
      }
      i++;
      return dims;
    }
    if (text[i] === "[") {
      throw new UnsupportedFormatError("structured (record) dtypes are not supported", {
        file: path,
        key: "descr",
        found: JSON.stringify(text.slice(i, i + 60)),
      });
    }
    return fail("unexpected value");
  };
  const out = new Map<string, string | boolean | number[]>();
  eat("{");
  for (;;) {
    ws();
    if (text[i] === "}") break;
    const k = str();
    eat(":");
    out.set(k, value());
    ws();
    if (text[i] === ",") i++;
    else if (text[i] !== "}") fail("expected ',' or '}'");
  }
  return out;
}

/** numpy's header dict for (descr, shape), padded so the data starts at a multiple of 64 and ≥ `minTotal`. */
function headerBytes(descr: string, shape: readonly number[], minTotal = 0): Uint8Array {
  const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${dims}, }`;
  // Version 1.0 while the header fits a u16 length; 2.0 beyond.
  const v1 = 10 + dict.length + 1 <= 0xffff;
  const pre = v1 ? 10 : 12;
  let total = pre + dict.length + 1;
  total = Math.max(Math.ceil(total / ALIGN) * ALIGN, minTotal);
  const hlen = total - pre;
  const out = new Uint8Array(total);
  out.set(MAGIC);
  out[6] = v1 ? 1 : 2;
  out[7] = 0;
  const dv = new DataView(out.buffer);
  if (v1) dv.setUint16(8, hlen, true);
  else dv.setUint32(8, hlen, true);
  const text = dict + " ".repeat(hlen - dict.length - 1) + "\n";
  for (let k = 0; k < text.length; k++) out[pre + k] = text.charCodeAt(k);
  return out;
}

function numpyDescr(path: string, dtype: DtypeName): string {
  const d = DTYPE_NUMPY[dtype];
  if (!d) {
    throw new InvalidTensorError("numpy has no such dtype", {
      file: path,
      key: "dtype",
      found: dtype,
      fix: "convert to f32 (or write safetensors, which has BF16)",
    });
  }
  return d;
}

/** Writes one tensor as a .npy file (atomically, via `path.tmp`). */
export async function writeNpy(path: string, tensor: TensorSource): Promise<void> {
  checkSource(path, "array", tensor);
  const descr = numpyDescr(path, tensor.dtype);
  const bytes = await sourceBytes(path, "array", tensor);
  await writeAtomically(path, async (out) => {
    await out.write(headerBytes(descr, tensor.shape));
    await out.write(bytes);
  });
}

/** Options of createNpyWriter. */
export interface NpyWriterOptions {
  /** Row length D. */
  cols: number;
  /** Row count N if known up front (checked at finish); else the header is patched at finish. */
  rows?: number;
}

/** Rows longer than 2^53 do not exist; this many digits always fit the patched header. */
const ROWS_RESERVE = 10 ** 15;

/** Streams an [N, D] float32 .npy file block by block. */
export class NpyRowWriter {
  readonly path: string;
  readonly cols: number;
  readonly rows?: number;
  /** Rows written so far. */
  written = 0;
  #out: AtomicFile;
  #headerLen: number;

  private constructor(path: string, out: AtomicFile, opts: NpyWriterOptions, headerLen: number) {
    this.path = path;
    this.#out = out;
    this.cols = opts.cols;
    this.rows = opts.rows;
    this.#headerLen = headerLen;
  }

  /** Starts `path.tmp` with the header (final shape if `rows` is given). */
  static async create(path: string, opts: NpyWriterOptions): Promise<NpyRowWriter> {
    const { cols, rows } = opts;
    if (
      !Number.isSafeInteger(cols) || cols < 0 ||
      (rows !== undefined && (!Number.isSafeInteger(rows) || rows < 0))
    ) {
      throw new InvalidTensorError("bad shape for a streamed .npy", {
        file: path,
        key: "shape",
        expected: "non-negative integer rows and cols",
        found: `[${rows ?? "?"}, ${cols}]`,
      });
    }
    const header = headerBytes("<f4", [rows ?? ROWS_RESERVE, cols]);
    const out = await AtomicFile.create(path);
    try {
      await out.write(header);
    } catch (e) {
      await out.abort();
      throw e;
    }
    return new NpyRowWriter(path, out, opts, header.length);
  }

  /** Appends whole rows (`block.length` a multiple of `cols`). */
  async write(block: Float32Array): Promise<void> {
    if (this.cols === 0 ? block.length !== 0 : block.length % this.cols !== 0) {
      throw new InvalidTensorError("block is not a whole number of rows", {
        file: this.path,
        key: "rows",
        expected: `a multiple of ${this.cols} values`,
        found: `${block.length}`,
      });
    }
    const n = this.cols === 0 ? 0 : block.length / this.cols;
    if (this.rows !== undefined && this.written + n > this.rows) {
      throw new InvalidTensorError("more rows than declared", {
        file: this.path,
        key: "rows",
        expected: `${this.rows}`,
        found: `${this.written + n}`,
      });
    }
    await this.#out.write(new Uint8Array(block.buffer, block.byteOffset, block.byteLength));
    this.written += n;
  }

  /** Checks the row count (or writes it into the header) and renames the file into place. */
  async finish(): Promise<void> {
    if (this.rows !== undefined && this.written !== this.rows) {
      await this.abort();
      throw new InvalidTensorError("fewer rows written than declared", {
        file: this.path,
        key: "rows",
        expected: `${this.rows}`,
        found: `${this.written}`,
      });
    }
    if (this.rows === undefined) {
      await this.#out.writeAt(0, headerBytes("<f4", [this.written, this.cols], this.#headerLen));
    }
    await this.#out.commit();
  }

  /** Deletes `path.tmp`. */
  async abort(): Promise<void> {
    await this.#out.abort();
  }
}

/** Starts streaming an [N, D] float32 .npy file; see NpyRowWriter. */
export function createNpyWriter(path: string, opts: NpyWriterOptions): Promise<NpyRowWriter> {
  return NpyRowWriter.create(path, opts);
}
