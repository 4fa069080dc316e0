/**
 * Random-access zip reader, the container of PyTorch's `.pth` files.
 *
 * It parses the end-of-central-directory record (and the ZIP64 locator,
 * record and extra fields torch writes), lists entries, and reads one entry's
 * bytes, or a byte range of a stored entry, by seeking. Stored entries (what
 * torch writes) are read in place; deflated ones are inflated with fflate.
 *
 * Invariants, checked before anything is allocated or trusted:
 * - every offset and length lies inside the file (and entry data lies before
 *   the central directory), and a deflated entry inflates to no more than
 *   the allocation budget of the whole file (data/limits.ts);
 * - every entry name stays inside the archive (no `..`, absolute path,
 *   backslash or drive letter), since callers build paths from them.
 */
import { inflateSync } from "npm:fflate@0.8.2";
import { Crc32, crc32 } from "./crc32.ts";
import {
  CorruptFileError,
  LimitError,
  MissingKeyError,
  UnsafeFileError,
  UnsupportedFormatError,
} from "./errors.ts";
import { type FileSource, RandomAccessFile } from "./file.ts";
import { LIMITS } from "./limits.ts";

/** Record signatures (APPNOTE.txt §4.3). */
export const SIG = {
  local: 0x04034b50,
  central: 0x02014b50,
  eocd: 0x06054b50,
  eocd64: 0x06064b50,
  locator64: 0x07064b50,
} as const;

/** Sizes of the fixed parts of each record. */
export const RECORD_SIZE = { local: 30, central: 46, eocd: 22, eocd64: 56, locator64: 20 } as const;

/** Extra-field header id of the ZIP64 extended information. */
export const ZIP64_EXTRA_ID = 0x0001;

/** Deflate expands at most ~1032:1; a larger claimed ratio is a corrupt (or hostile) header. */
const MAX_INFLATE_RATIO = 1032;

/** One entry of the central directory. */
export interface ZipEntry {
  /** Path inside the archive, '/'-separated. */
  readonly name: string;
  /** 0 = stored, 8 = deflated. */
  readonly method: number;
  /** General-purpose flags (bit 3: sizes and CRC in a data descriptor; bit 11: UTF-8 name). */
  readonly flags: number;
  /** DOS modification time and date (time in the low 16 bits), as the directory records them. */
  readonly modified: number;
  /** CRC-32 of the uncompressed data, as the directory records it. */
  readonly crc32: number;
  /** Bytes of (possibly compressed) data in the file. */
  readonly compressedSize: number;
  /** Bytes once uncompressed. */
  readonly size: number;
  /** Offset of the entry's local header. */
  readonly localHeaderOffset: number;
}

export { Crc32, crc32 } from "./crc32.ts";

/**
 * Throws UnsafeFileError unless `name` is a relative '/'-separated path that
 * stays inside the archive.
 */
export function checkEntryName(file: string, name: string): void {
  const bad = name === ""
    ? "an empty name"
    : name.includes("\\")
    ? "a backslash"
    : name.includes("\0")
    ? "a NUL byte"
    : name.startsWith("/")
    ? "an absolute path"
    : /^[A-Za-z]:/.test(name)
    ? "a drive letter"
    : name.split("/").includes("..")
    ? "a '..' segment"
    : null;
  if (bad) {
    throw new UnsafeFileError(`zip entry name has ${bad}, which would leave the archive`, {
      file,
      key: JSON.stringify(name),
      fix: "bloom refuses such archives; re-create the file with torch.save or bloom",
    });
  }
}

/** Little-endian u64 as a number; values past 2^53 come out inexact, and every range check rejects them. */
function u64(dv: DataView, at: number): number {
  return dv.getUint32(at + 4, true) * 4294967296 + dv.getUint32(at, true);
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Where the central directory is, from the (ZIP64) end records. */
interface Directory {
  count: number;
  offset: number;
  size: number;
  /** Where the end records begin: entry data and the directory lie before it. */
  end: number;
}

/** Options of ZipReader.open. */
export interface ZipReaderOptions {
  /**
   * Check every entry's CRC-32 the first time its bytes are read (default
   * true). A range of a stored entry that is not yet checked is read by
   * streaming the whole entry once through the CRC, keeping the range; later
   * reads of a checked entry read just their range.
   */
  verify?: boolean;
}

/** Bytes per read while a stored entry streams through the CRC for a partial range. */
const VERIFY_CHUNK = 8 << 20;

/** A zip archive open for random access. Call `close()` when done. */
export class ZipReader {
  readonly file: RandomAccessFile;
  readonly entries: readonly ZipEntry[];
  /** Whether entries are CRC-checked on first read. */
  readonly verify: boolean;
  #byName: Map<string, ZipEntry>;
  #dataOffsets = new Map<string, Promise<number>>();
  /** Per stored entry, the one check of its CRC (settled: checked, or the failure, kept). */
  #checks = new Map<string, Promise<void>>();
  #dirOffset: number;

  private constructor(
    file: RandomAccessFile,
    entries: ZipEntry[],
    dirOffset: number,
    verify: boolean,
  ) {
    this.file = file;
    this.entries = entries;
    this.#byName = new Map(entries.map((e) => [e.name, e]));
    this.#dirOffset = dirOffset;
    this.verify = verify;
  }

  /** The archive's path. */
  get path(): string {
    return this.file.path;
  }

  /** Opens `path` (or takes an open file, which the reader then owns) and reads its directory. */
  static async open(
    path: FileSource | RandomAccessFile,
    opts: ZipReaderOptions = {},
  ): Promise<ZipReader> {
    const file = path instanceof RandomAccessFile ? path : await RandomAccessFile.open(path);
    try {
      const dir = await readDirectory(file);
      const entries = await readEntries(file, dir);
      return new ZipReader(file, entries, dir.offset, opts.verify ?? true);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** The entry called `name`, or undefined. */
  entry(name: string): ZipEntry | undefined {
    return this.#byName.get(name);
  }

  /** The entry called `name`; MissingKeyError if absent. */
  require(name: string): ZipEntry {
    const e = this.#byName.get(name);
    if (!e) {
      throw new MissingKeyError("entry missing from the zip archive", {
        file: this.path,
        key: name,
      });
    }
    return e;
  }

  /**
   * File offset of the entry's data, from its local header (read once, then
   * cached). The local header must agree with the directory: same name,
   * flags, method and time stamp, and the same CRC and sizes (or zeros, when
   * a data descriptor carries them: flag bit 3).
   */
  dataOffset(entry: ZipEntry): Promise<number> {
    let p = this.#dataOffsets.get(entry.name);
    if (!p) {
      p = this.#resolve(entry);
      this.#dataOffsets.set(entry.name, p);
      p.catch(() => this.#dataOffsets.delete(entry.name));
    }
    return p;
  }

  async #resolve(entry: ZipEntry): Promise<number> {
    const at = entry.localHeaderOffset;
    const h = view(await this.file.readAt(at, RECORD_SIZE.local, entry.name));
    const info = { file: this.path, key: entry.name };
    if (h.getUint32(0, true) !== SIG.local) {
      throw new CorruptFileError("no local file header where the directory points", {
        ...info,
        expected: `signature 0x${SIG.local.toString(16)} at byte ${at}`,
        found: `0x${h.getUint32(0, true).toString(16)}`,
      });
    }
    const nameLen = h.getUint16(26, true);
    const extraLen = h.getUint16(28, true);
    const start = at + RECORD_SIZE.local + nameLen + extraLen;
    if (start + entry.compressedSize > this.#dirOffset) {
      throw new CorruptFileError("entry data runs into the central directory", {
        ...info,
        expected: `data ending by byte ${this.#dirOffset}`,
        found: `bytes ${start}..${start + entry.compressedSize}`,
      });
    }
    // Name and extra lie before the data, so inside the file (checked just above).
    const rest = await this.file.readAt(at + RECORD_SIZE.local, nameLen + extraLen, entry.name);
    const mismatch = (field: string, local: string, central: string) =>
      new CorruptFileError(`the local header's ${field} differs from the central directory's`, {
        ...info,
        expected: `${central} (central directory)`,
        found: `${local} (local header at byte ${at})`,
        fix: "the file is damaged; download or copy it again",
      });
    let localName: string;
    try {
      localName = utf8.decode(rest.subarray(0, nameLen));
    } catch {
      localName = "(not UTF-8)";
    }
    if (localName !== entry.name) {
      throw mismatch("name", JSON.stringify(localName), JSON.stringify(entry.name));
    }
    const flags = h.getUint16(6, true);
    if (flags !== entry.flags) throw mismatch("flags", hex(flags), hex(entry.flags));
    const method = h.getUint16(8, true);
    if (method !== entry.method) throw mismatch("method", `${method}`, `${entry.method}`);
    const time = h.getUint32(10, true); // DOS time and date
    if (time !== entry.modified) throw mismatch("time stamp", hex(time), hex(entry.modified));
    // With a data descriptor (flag bit 3; torch sets it) these may be zero; else they must agree.
    const described = (flags & 8) !== 0;
    const crc = h.getUint32(14, true);
    if (crc !== entry.crc32 && !(described && crc === 0)) {
      throw mismatch("CRC-32", hex(crc), hex(entry.crc32));
    }
    let csize: number | null = h.getUint32(18, true);
    let size: number | null = h.getUint32(22, true);
    if (csize === 0xffffffff || size === 0xffffffff) {
      // ZIP64: both sizes in the local extra field, uncompressed first (when it is there).
      const z = findExtra(rest.subarray(nameLen), ZIP64_EXTRA_ID);
      [size, csize] = z && z.length >= 16 ? [u64(view(z), 0), u64(view(z), 8)] : [null, null];
    }
    const zero = described && csize === 0 && size === 0;
    if (size !== null && !zero && (csize !== entry.compressedSize || size !== entry.size)) {
      throw mismatch(
        "sizes",
        `${csize} compressed, ${size}`,
        `${entry.compressedSize} compressed, ${entry.size}`,
      );
    }
    return start;
  }

  /**
   * The entry's uncompressed bytes, CRC-checked on the first read (or on
   * every read, for deflated entries) unless the reader was opened with
   * `verify: false` or `verify` is false here.
   */
  async read(entry: ZipEntry | string, verify = this.verify): Promise<Uint8Array> {
    const e = typeof entry === "string" ? this.require(entry) : entry;
    if (e.method !== 8) return await this.#readStored(e, 0, e.size, verify);
    const start = await this.dataOffset(e);
    const raw = await this.file.readAt(start, e.compressedSize, e.name);
    let data: Uint8Array;
    try {
      data = inflateSync(raw, { out: new Uint8Array(e.size) });
    } catch (err) {
      throw new CorruptFileError("deflated data does not inflate", {
        file: this.path,
        key: e.name,
        cause: err,
      });
    }
    if (data.length !== e.size) {
      throw new CorruptFileError("inflated size differs from the directory's", {
        file: this.path,
        key: e.name,
        expected: `${e.size} bytes`,
        found: `${data.length}`,
      });
    }
    if (verify) this.#compare(e, crc32(data));
    return data;
  }

  /**
   * `length` bytes from `offset` within the entry's uncompressed data, read
   * in place for stored entries (deflated ones are inflated whole, then cut).
   * Every byte returned lies in an entry whose CRC-32 was checked (unless
   * verification is off).
   */
  async readRange(entry: ZipEntry, offset: number, length: number): Promise<Uint8Array> {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
      length < 0 || offset + length > entry.size
    ) {
      throw new CorruptFileError("range lies outside the entry", {
        file: this.path,
        key: entry.name,
        expected: `bytes ${offset}..${offset + length} within the entry`,
        found: `an entry of ${entry.size} bytes`,
      });
    }
    // Deflated: inflate it all (CRC-checked, since a short inflate would otherwise go unnoticed).
    if (entry.method === 8) return (await this.read(entry, true)).slice(offset, offset + length);
    return await this.#readStored(entry, offset, length, this.verify);
  }

  /** A range of a stored entry; the entry's first read checks its CRC (see ZipReaderOptions). */
  async #readStored(
    e: ZipEntry,
    offset: number,
    length: number,
    verify: boolean,
  ): Promise<Uint8Array> {
    const start = await this.dataOffset(e);
    if (verify) {
      const check = this.#checks.get(e.name);
      if (check) await check; // checked (or being checked): the range alone is enough
      else {
        let out: Uint8Array | undefined;
        const p = this.#streamCheck(e, start, offset, length).then((b) => void (out = b));
        this.#checks.set(e.name, p);
        await p;
        return out!;
      }
    }
    return await this.file.readAt(start + offset, length, e.name);
  }

  /**
   * Reads the whole stored entry once, through the CRC, and returns bytes
   * [offset, offset+length) of it: one read when that is the whole entry,
   * else chunks of VERIFY_CHUNK with the range copied out as it passes.
   */
  async #streamCheck(
    e: ZipEntry,
    start: number,
    offset: number,
    length: number,
  ): Promise<Uint8Array> {
    if (offset === 0 && length === e.size) {
      const all = await this.file.readAt(start, e.size, e.name);
      this.#compare(e, crc32(all));
      return all;
    }
    const out = new Uint8Array(length);
    const crc = new Crc32();
    for (let at = 0; at < e.size; at += VERIFY_CHUNK) {
      const chunk = await this.file.readAt(start + at, Math.min(VERIFY_CHUNK, e.size - at), e.name);
      crc.update(chunk);
      // The part of [offset, offset+length) inside this chunk.
      const lo = Math.max(offset, at);
      const hi = Math.min(offset + length, at + chunk.length);
      if (lo < hi) out.set(chunk.subarray(lo - at, hi - at), lo - offset);
    }
    this.#compare(e, crc.digest());
    return out;
  }

  #compare(e: ZipEntry, got: number): void {
    if (got !== e.crc32) {
      throw new CorruptFileError("CRC-32 mismatch (the entry's bytes are damaged)", {
        file: this.path,
        key: e.name,
        expected: hex(e.crc32),
        found: hex(got),
        fix: "the file is damaged; download or copy it again",
      });
    }
  }

  /** Closes the underlying file. */
  close(): void {
    this.file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, "0")}`;
}

function corrupt(file: RandomAccessFile, what: string, expected?: string, found?: string) {
  return new CorruptFileError(what, { file: file.path, key: "zip directory", expected, found });
}

/** Finds the end-of-central-directory record (and its ZIP64 twin) and returns where the directory is. */
async function readDirectory(file: RandomAccessFile): Promise<Directory> {
  if (file.size < RECORD_SIZE.eocd) {
    throw corrupt(
      file,
      "not a zip archive (too short; truncated?)",
      "at least 22 bytes",
      `${file.size}`,
    );
  }
  // The EOCD is the last record, followed only by a comment of at most 65,535 bytes.
  const tailLen = Math.min(file.size, RECORD_SIZE.eocd + 0xffff);
  const tailStart = file.size - tailLen;
  const tail = await file.readAt(tailStart, tailLen, "zip end records");
  const tv = view(tail);
  let at = -1;
  for (let i = tailLen - RECORD_SIZE.eocd; i >= 0; i--) {
    if (
      tv.getUint32(i, true) === SIG.eocd &&
      i + RECORD_SIZE.eocd + tv.getUint16(i + 20, true) <= tailLen
    ) {
      at = i;
      break;
    }
  }
  if (at < 0) {
    throw corrupt(
      file,
      "no end-of-central-directory record: not a zip archive, or truncated",
      "signature PK\\x05\\x06 near the end",
      "none",
    );
  }
  const eocdPos = tailStart + at;
  let count = tv.getUint16(at + 10, true);
  let size = tv.getUint32(at + 12, true);
  let offset = tv.getUint32(at + 16, true);
  const disk = tv.getUint16(at + 4, true);
  let end = eocdPos;
  const locPos = eocdPos - RECORD_SIZE.locator64;
  const hasLocator = locPos >= 0 &&
    (locPos >= tailStart
      ? tv.getUint32(locPos - tailStart, true) === SIG.locator64
      : view(await file.readAt(locPos, 4, "zip64 locator")).getUint32(0, true) ===
        SIG.locator64);
  if (hasLocator) {
    const loc = view(await file.readAt(locPos, RECORD_SIZE.locator64, "zip64 locator"));
    const recPos = u64(loc, 8);
    if (!(recPos + RECORD_SIZE.eocd64 <= locPos)) {
      throw corrupt(
        file,
        "ZIP64 locator points outside the file",
        `an offset below ${locPos}`,
        `${recPos}`,
      );
    }
    const rec = view(await file.readAt(recPos, RECORD_SIZE.eocd64, "zip64 end record"));
    if (rec.getUint32(0, true) !== SIG.eocd64) {
      throw corrupt(
        file,
        "no ZIP64 end record where the locator points",
        "signature PK\\x06\\x06",
        "other bytes",
      );
    }
    count = u64(rec, 32);
    size = u64(rec, 40);
    offset = u64(rec, 48);
    end = recPos;
  } else if (count === 0xffff || size === 0xffffffff || offset === 0xffffffff) {
    throw corrupt(
      file,
      "ZIP64 sizes announced but no ZIP64 locator found",
      "a ZIP64 locator",
      "none",
    );
  } else if (disk !== 0) {
    throw new UnsupportedFormatError("multi-volume zip archives are not supported", {
      file: file.path,
      key: "zip directory",
    });
  }
  if (!(offset + size <= end)) {
    throw corrupt(
      file,
      "central directory lies outside the file (truncated?)",
      `directory ending by byte ${end}`,
      `bytes ${offset}..${offset + size}`,
    );
  }
  if (!(count * RECORD_SIZE.central <= size)) {
    throw corrupt(
      file,
      "entry count does not fit the central directory",
      `at most ${Math.floor(size / RECORD_SIZE.central)} entries`,
      `${count}`,
    );
  }
  return { count, size, offset, end };
}

/** Parses and validates every central-directory entry. */
async function readEntries(file: RandomAccessFile, dir: Directory): Promise<ZipEntry[]> {
  const cd = await file.readAt(dir.offset, dir.size, "zip central directory");
  const dv = view(cd);
  const entries: ZipEntry[] = [];
  const seen = new Set<string>();
  let p = 0;
  for (let i = 0; i < dir.count; i++) {
    if (p + RECORD_SIZE.central > cd.length || dv.getUint32(p, true) !== SIG.central) {
      throw corrupt(
        file,
        `central directory entry ${i} is damaged`,
        "signature PK\\x01\\x02",
        `byte ${dir.offset + p}`,
      );
    }
    const flags = dv.getUint16(p + 8, true);
    const method = dv.getUint16(p + 10, true);
    const modified = dv.getUint32(p + 12, true);
    const crc = dv.getUint32(p + 16, true);
    let compressedSize = dv.getUint32(p + 20, true);
    let size = dv.getUint32(p + 24, true);
    const nameLen = dv.getUint16(p + 28, true);
    const extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    const diskStart = dv.getUint16(p + 34, true);
    let localHeaderOffset = dv.getUint32(p + 42, true);
    const next = p + RECORD_SIZE.central + nameLen + extraLen + commentLen;
    if (next > cd.length) {
      throw corrupt(
        file,
        `central directory entry ${i} runs past the directory`,
        `${cd.length} bytes`,
        `${next}`,
      );
    }
    let name: string;
    try {
      name = utf8.decode(cd.subarray(p + RECORD_SIZE.central, p + RECORD_SIZE.central + nameLen));
    } catch {
      throw corrupt(file, `central directory entry ${i} has a name that is not UTF-8`);
    }
    checkEntryName(file.path, name);
    // ZIP64 extended information holds, in order, only the fields saturated above.
    const extra = cd.subarray(
      p + RECORD_SIZE.central + nameLen,
      p + RECORD_SIZE.central + nameLen + extraLen,
    );
    if (size === 0xffffffff || compressedSize === 0xffffffff || localHeaderOffset === 0xffffffff) {
      const z = findExtra(extra, ZIP64_EXTRA_ID);
      const need = 8 *
        [size, compressedSize, localHeaderOffset].filter((v) => v === 0xffffffff).length;
      if (!z || z.length < need) {
        throw new CorruptFileError(
          "ZIP64 sizes announced but the ZIP64 extra field is missing or short",
          {
            file: file.path,
            key: name,
          },
        );
      }
      const zv = view(z);
      let q = 0;
      if (size === 0xffffffff) (size = u64(zv, q)), (q += 8);
      if (compressedSize === 0xffffffff) (compressedSize = u64(zv, q)), (q += 8);
      if (localHeaderOffset === 0xffffffff) (localHeaderOffset = u64(zv, q)), (q += 8);
    }
    const entryInfo = { file: file.path, key: name };
    if (seen.has(name)) throw new CorruptFileError("the archive holds this entry twice", entryInfo);
    seen.add(name);
    if (flags & 1) {
      throw new UnsupportedFormatError("encrypted zip entries are not supported", entryInfo);
    }
    if (diskStart !== 0 && diskStart !== 0xffff) {
      throw new UnsupportedFormatError("multi-volume zip archives are not supported", entryInfo);
    }
    if (method !== 0 && method !== 8) {
      throw new UnsupportedFormatError("zip compression method not supported", {
        ...entryInfo,
        expected: "0 (stored) or 8 (deflate)",
        found: `${method}`,
      });
    }
    if (method === 0 && compressedSize !== size) {
      throw new CorruptFileError("stored entry's sizes disagree", {
        ...entryInfo,
        expected: `compressed size = size = ${size}`,
        found: `${compressedSize}`,
      });
    }
    // Inflating may not build more than the allocation budget allows for the whole file.
    const inflateLimit = LIMITS.budgetFixed + LIMITS.budgetPerByte * file.size;
    if (method === 8 && size > inflateLimit) {
      throw new LimitError("deflated entry inflates past bloom's limit for this file", {
        ...entryInfo,
        expected: `at most ${inflateLimit} bytes (${LIMITS.budgetFixed} + ` +
          `${LIMITS.budgetPerByte} × the file's ${file.size})`,
        found: `${size}`,
        fix: "re-save the checkpoint uncompressed (torch.save does)",
      });
    }
    if (method === 8 && size > compressedSize * MAX_INFLATE_RATIO + 1024) {
      throw new CorruptFileError("deflated entry claims an impossible expansion", {
        ...entryInfo,
        expected: `at most ${compressedSize * MAX_INFLATE_RATIO + 1024} bytes`,
        found: `${size}`,
      });
    }
    if (!(localHeaderOffset + RECORD_SIZE.local + compressedSize <= dir.offset)) {
      throw new CorruptFileError("entry lies outside the archive's data area (truncated?)", {
        ...entryInfo,
        expected: `local header + data ending by byte ${dir.offset}`,
        found: `local header at ${localHeaderOffset}, ${compressedSize} bytes of data`,
      });
    }
    entries.push({
      name,
      method,
      flags,
      modified,
      crc32: crc,
      compressedSize,
      size,
      localHeaderOffset,
    });
    p = next;
  }
  return entries;
}

/** The data of the extra field `id` in a zip extra block, or undefined. */
export function findExtra(extra: Uint8Array, id: number): Uint8Array | undefined {
  const dv = view(extra);
  let p = 0;
  while (p + 4 <= extra.length) {
    const len = dv.getUint16(p + 2, true);
    if (p + 4 + len > extra.length) return undefined;
    if (dv.getUint16(p, true) === id) return extra.subarray(p + 4, p + 4 + len);
    p += 4 + len;
  }
  return undefined;
}
