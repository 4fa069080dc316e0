/**
 * safetensors reader and writer. Layout: u64 LE header length N, N bytes of
 * JSON (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, …,
 * "__metadata__": {str: str}}`, padded with spaces), then the tensors' bytes,
 * offsets relative to the end of the header.
 *
 * The reader reads the header, validates all of it (length against the file,
 * JSON, dtypes, shapes against byte lengths, offsets in range, tensors
 * non-overlapping and covering the buffer exactly) and then reads each
 * tensor's bytes by seeking, only when asked. The writer streams: header
 * first, then one tensor at a time, into `PATH.tmp`, renamed when complete.
 */
import {
  DTYPE_SAFETENSORS,
  DTYPE_SIZE,
  type DtypeName,
  lookup,
  SAFETENSORS_DTYPE,
} from "./dtypes.ts";
import { CorruptFileError, InvalidTensorError, UnsupportedFormatError } from "./errors.ts";
import { type FileSource, RandomAccessFile, writeAtomically } from "./file.ts";
import { limitError, LIMITS } from "./limits.ts";
import {
  checkShape,
  checkSource,
  FileRangeTensor,
  OpenTensorFile,
  sourceBytes,
  type TensorData,
  type TensorRecord,
  type TensorSource,
} from "./record.ts";

/** The reference implementation refuses headers above 100 MB; so does bloom. */
export const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = "__metadata__";

/** An open safetensors file. Its tensors are in the order of their data in the file. */
export class SafetensorsFile extends OpenTensorFile {
  /** The `__metadata__` string map ({} when absent). */
  readonly metadata: Readonly<Record<string, string>>;

  constructor(
    file: RandomAccessFile,
    metadata: Record<string, string>,
    tensors: Map<string, TensorRecord>,
  ) {
    super(file.path, tensors, file);
    this.metadata = metadata;
  }
}

/** Opens and validates a safetensors file; tensor bytes are read later, on demand. */
export async function openSafetensors(source: FileSource): Promise<SafetensorsFile> {
  const file = await RandomAccessFile.open(source);
  try {
    return await parse(file);
  } catch (e) {
    file.close();
    throw e;
  }
}

async function parse(file: RandomAccessFile): Promise<SafetensorsFile> {
  const path = file.path;
  if (file.size < 8) {
    throw new CorruptFileError("too short for a safetensors file (truncated?)", {
      file: path,
      key: "header length",
      expected: "at least 8 bytes",
      found: `${file.size}`,
    });
  }
  const lenBytes = await file.readAt(0, 8, "header length");
  const dv = new DataView(lenBytes.buffer);
  const n = dv.getUint32(4, true) * 4294967296 + dv.getUint32(0, true);
  if (n > MAX_HEADER_BYTES && n <= file.size - 8) {
    throw limitError(path, "header length", "safetensors header", MAX_HEADER_BYTES, n);
  }
  if (!(n <= file.size - 8) || n < 2) {
    throw new CorruptFileError(
      n > file.size - 8
        ? "header is longer than the file (truncated or not safetensors)"
        : "bad header length",
      {
        file: path,
        key: "header length",
        expected: `2..${Math.min(file.size - 8, MAX_HEADER_BYTES)} bytes`,
        found: `${n}`,
      },
    );
  }
  const headerBytes = await file.readAt(8, n, "header");
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new CorruptFileError("header is not valid UTF-8 JSON", {
      file: path,
      key: "header",
      found: e instanceof Error ? e.message : String(e),
      cause: e,
    });
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new CorruptFileError("header is not a JSON object", { file: path, key: "header" });
  }
  const dataStart = 8 + n;
  const bufferLen = file.size - dataStart;
  let metadata: Record<string, string> = {};
  const spans: { name: string; dtype: DtypeName; shape: number[]; begin: number; end: number }[] =
    [];
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      metadata = checkMetadata(path, v);
      continue;
    }
    const info = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof info !== "object" || info === null) {
      throw new CorruptFileError("tensor entry is not an object", { file: path, key: name });
    }
    if (name.length > LIMITS.nameChars) {
      throw limitError(
        path,
        name.slice(0, 64) + "…",
        "tensor name length",
        LIMITS.nameChars,
        name.length,
      );
    }
    if (Array.isArray(info.shape) && info.shape.length > LIMITS.rank) {
      throw limitError(path, name, "rank (length of shape)", LIMITS.rank, info.shape.length);
    }
    const dtype = typeof info.dtype === "string"
      ? lookup(SAFETENSORS_DTYPE, info.dtype)
      : undefined;
    if (!dtype) {
      throw new UnsupportedFormatError("unknown or unsupported dtype", {
        file: path,
        key: name,
        expected: Object.keys(SAFETENSORS_DTYPE).join(", "),
        found: JSON.stringify(info.dtype),
      });
    }
    let numel: number;
    try {
      numel = checkShape(path, name, info.shape);
    } catch (e) {
      throw new CorruptFileError("bad shape", {
        file: path,
        key: name,
        found: JSON.stringify(info.shape),
        cause: e,
      });
    }
    const off = info.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 || !off.every((x) =>
        Number.isSafeInteger(x) && x >= 0
      ) ||
      off[0] > off[1]
    ) {
      throw new CorruptFileError("bad data_offsets", {
        file: path,
        key: name,
        expected: "[begin, end] with 0 ≤ begin ≤ end",
        found: JSON.stringify(off),
      });
    }
    const [begin, end] = off as number[];
    if (end > bufferLen) {
      throw new CorruptFileError("data_offsets run past the end of the file (truncated?)", {
        file: path,
        key: name,
        expected: `end ≤ ${bufferLen}`,
        found: `[${begin}, ${end}]`,
      });
    }
    const want = numel * DTYPE_SIZE[dtype];
    if (end - begin !== want) {
      throw new CorruptFileError("shape × dtype size does not match the byte length", {
        file: path,
        key: name,
        expected: `${want} bytes ([${info.shape}] ${info.dtype})`,
        found: `${end - begin} bytes`,
      });
    }
    spans.push({ name, dtype, shape: info.shape as number[], begin, end });
  }
  // Tensors must tile the buffer exactly: no gaps, no overlaps, nothing after.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const s of spans) {
    if (s.begin !== at) {
      throw new CorruptFileError(
        s.begin < at ? "tensor data overlaps the previous tensor's" : "gap before tensor data",
        {
          file: path,
          key: s.name,
          expected: `data starting at ${at}`,
          found: `[${s.begin}, ${s.end}]`,
        },
      );
    }
    at = s.end;
  }
  if (at !== bufferLen) {
    throw new CorruptFileError("tensors do not cover the data buffer", {
      file: path,
      key: "data_offsets",
      expected: `${bufferLen} bytes of tensor data`,
      found: `${at}`,
    });
  }
  const tensors = new Map<string, TensorRecord>();
  for (const s of spans) {
    tensors.set(
      s.name,
      new FileRangeTensor(s.name, s.dtype, s.shape, file, dataStart + s.begin),
    );
  }
  return new SafetensorsFile(file, metadata, tensors);
}

function checkMetadata(path: string, v: unknown): Record<string, string> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new CorruptFileError("__metadata__ is not an object", { file: path, key: METADATA_KEY });
  }
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== "string") {
      throw new CorruptFileError("__metadata__ values must be strings", {
        file: path,
        key: `${METADATA_KEY}.${k}`,
        expected: "a string",
        found: typeof x,
      });
    }
  }
  return { ...(v as Record<string, string>) };
}

/**
 * Writes `tensors` (in iteration order) and `metadata` to `path` as
 * safetensors, streaming one tensor at a time into `path.tmp` and renaming it
 * when complete. Tensor sources may be in-memory data or records of another
 * open file (converting a checkpoint never holds it all in memory).
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorSource> | Map<string, TensorSource>,
  metadata: Record<string, string> = {},
): Promise<void> {
  const list = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const head = header(path, list, metadata);
  await writeAtomically(path, async (out) => {
    await out.write(head);
    for (const [name, t] of list) await out.write(await sourceBytes(path, name, t));
  });
}

/**
 * The bytes of a safetensors file holding in-memory `tensors` and `metadata`,
 * as `writeSafetensors` would write them (where there is no file system: the
 * browser page's downloads). `name` stands for the file in errors.
 */
export function encodeSafetensors(
  name: string,
  tensors: Record<string, TensorData> | Map<string, TensorData>,
  metadata: Record<string, string> = {},
): Uint8Array {
  const list = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const head = header(name, list, metadata);
  const views = list.map(([, t]) =>
    new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
  );
  const out = new Uint8Array(head.length + views.reduce((a, v) => a + v.length, 0));
  out.set(head);
  let at = head.length;
  for (const v of views) out.set(v, at), at += v.length;
  return out;
}

/** The u64 header length and the JSON header (checked, space-padded to 8 bytes). */
function header(
  path: string,
  list: [string, TensorSource][],
  metadata: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header[METADATA_KEY] = checkWriteMetadata(path, metadata);
  let offset = 0;
  for (const [name, t] of list) {
    if (name === METADATA_KEY || name === "") {
      throw new InvalidTensorError("reserved or empty tensor name", {
        file: path,
        key: JSON.stringify(name),
      });
    }
    const numel = checkSource(path, name, t);
    const bytes = numel * DTYPE_SIZE[t.dtype];
    header[name] = {
      dtype: DTYPE_SAFETENSORS[t.dtype],
      shape: [...t.shape],
      data_offsets: [offset, offset + bytes],
    };
    offset += bytes;
  }
  return encodeSafetensorsHeader(header);
}

/**
 * The u64 LE header length and the JSON `header`, space-padded so the data
 * starts 8-byte aligned, as the reference writer does. For writers that
 * build the header themselves (the embeddings file streams its tensors).
 */
export function encodeSafetensorsHeader(header: Record<string, unknown>): Uint8Array {
  const text = JSON.stringify(header);
  let json = new TextEncoder().encode(text);
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = new TextEncoder().encode(text + " ".repeat(pad));
  const out = new Uint8Array(8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

function checkWriteMetadata(path: string, m: Record<string, string>): Record<string, string> {
  for (const [k, v] of Object.entries(m)) {
    if (typeof v !== "string") {
      throw new InvalidTensorError("metadata values must be strings (JSON-encode lists)", {
        file: path,
        key: `${METADATA_KEY}.${k}`,
        found: typeof v,
      });
    }
  }
  return m;
}
