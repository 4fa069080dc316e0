/**
 * Streaming zip writer for `.pth` archives: stored entries only, each entry's
 * data aligned to 64 bytes the way torch aligns it (padding in an "FB" extra
 * field), ZIP64 records when a size or offset passes 4 GiB (or always, on
 * request, so tests can exercise ZIP64 on small files). Output goes to
 * `PATH.tmp` and is renamed over `PATH` only by `finish()`.
 *
 * fflate has a zip writer, but it cannot write ZIP64 or align data, and it
 * builds the archive in memory; fflate still computes the CRC-32s.
 */
import { InvalidTensorError } from "./errors.ts";
import { AtomicFile } from "./file.ts";
import { checkEntryName, Crc32, RECORD_SIZE, SIG, ZIP64_EXTRA_ID } from "./zip.ts";

/** Options of ZipWriter. */
export interface ZipWriterOptions {
  /** Entry data starts at a multiple of this many bytes (torch: 64). */
  align?: number;
  /** "auto": ZIP64 only where a value does not fit 32 bits; "always": for every entry and the end. */
  zip64?: "auto" | "always";
}

/** Padding extra-field id torch uses ("FB"). */
const PAD_EXTRA_ID = 0x4246;
const U32_MAX = 0xffffffff;
/** DOS date 1980-01-01, time 00:00: fixed so equal inputs give equal files. */
const DOS_DATE = 0x0021;

interface Written {
  name: Uint8Array;
  utf8: boolean;
  crc: number;
  size: number;
  offset: number;
}

/** Little-endian byte builder for headers (the fuzz tests build crafted archives with it too). */
export class Bytes {
  #a: number[] = [];
  u16(v: number): this {
    this.#a.push(v & 0xff, (v >>> 8) & 0xff);
    return this;
  }
  u32(v: number): this {
    this.#a.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
    return this;
  }
  u64(v: number): this {
    return this.u32(v % 4294967296).u32(Math.floor(v / 4294967296));
  }
  bytes(b: Uint8Array): this {
    for (const x of b) this.#a.push(x);
    return this;
  }
  fill(n: number, v: number): this {
    for (let i = 0; i < n; i++) this.#a.push(v);
    return this;
  }
  get length(): number {
    return this.#a.length;
  }
  done(): Uint8Array {
    return Uint8Array.from(this.#a);
  }
}

/** Writes a zip archive entry by entry. */
export class ZipWriter {
  readonly path: string;
  #out: AtomicFile;
  #align: number;
  #always: boolean;
  #entries: Written[] = [];
  #names = new Set<string>();

  private constructor(path: string, out: AtomicFile, opts: ZipWriterOptions) {
    this.path = path;
    this.#out = out;
    this.#align = opts.align ?? 64;
    this.#always = opts.zip64 === "always";
    if (!Number.isInteger(this.#align) || this.#align < 1 || this.#align > 0x8000) {
      throw new InvalidTensorError("bad zip alignment", {
        file: path,
        key: "align",
        expected: "an integer in 1..32768",
        found: String(opts.align),
      });
    }
  }

  /** Starts `PATH.tmp`. */
  static async create(path: string, opts: ZipWriterOptions = {}): Promise<ZipWriter> {
    const out = await AtomicFile.create(path);
    try {
      return new ZipWriter(path, out, opts);
    } catch (e) {
      await out.abort();
      throw e;
    }
  }

  /** Appends an entry holding `chunks` (concatenated), stored uncompressed. */
  async add(name: string, ...chunks: Uint8Array[]): Promise<void> {
    checkEntryName(this.path, name);
    if (this.#names.has(name)) {
      throw new InvalidTensorError("zip entry written twice", { file: this.path, key: name });
    }
    this.#names.add(name);
    const crc = new Crc32();
    let size = 0;
    for (const c of chunks) {
      crc.update(c);
      size += c.length;
    }
    const entryCrc = crc.digest();
    const nameBytes = new TextEncoder().encode(name);
    // deno-lint-ignore no-control-regex
    const utf8 = /[^\x00-\x7f]/.test(name);
    const offset = this.#out.position;
    const zip64 = this.#always || size >= U32_MAX;
    const h = new Bytes()
      .u32(SIG.local)
      .u16(zip64 ? 45 : 20)
      .u16(utf8 ? 0x800 : 0)
      .u16(0) // stored
      .u16(0)
      .u16(DOS_DATE)
      .u32(entryCrc)
      .u32(zip64 ? U32_MAX : size)
      .u32(zip64 ? U32_MAX : size);
    const z64Len = zip64 ? 4 + 16 : 0;
    // Data starts after header, name, ZIP64 extra and a padding extra (4-byte header + pad).
    const before = offset + RECORD_SIZE.local + nameBytes.length + z64Len + 4;
    const pad = (this.#align - (before % this.#align)) % this.#align;
    h.u16(nameBytes.length).u16(z64Len + 4 + pad).bytes(nameBytes);
    if (zip64) h.u16(ZIP64_EXTRA_ID).u16(16).u64(size).u64(size);
    h.u16(PAD_EXTRA_ID).u16(pad).fill(pad, 0x5a);
    await this.#out.write(h.done());
    for (const c of chunks) await this.#out.write(c);
    this.#entries.push({ name: nameBytes, utf8, crc: entryCrc, size, offset });
  }

  /** Writes the central directory and end records, then renames `PATH.tmp` to `PATH`. */
  async finish(): Promise<void> {
    const dirOffset = this.#out.position;
    const cd = new Bytes();
    for (const e of this.#entries) {
      const bigSize = this.#always || e.size >= U32_MAX;
      const bigOffset = this.#always || e.offset >= U32_MAX;
      const z64 = (bigSize ? 16 : 0) + (bigOffset ? 8 : 0);
      cd.u32(SIG.central)
        .u16(z64 ? 45 : 20) // made by: spec version, MS-DOS attributes
        .u16(z64 ? 45 : 20)
        .u16(e.utf8 ? 0x800 : 0)
        .u16(0)
        .u16(0)
        .u16(DOS_DATE)
        .u32(e.crc)
        .u32(bigSize ? U32_MAX : e.size)
        .u32(bigSize ? U32_MAX : e.size)
        .u16(e.name.length)
        .u16(z64 ? 4 + z64 : 0)
        .u16(0) // comment
        .u16(0) // disk
        .u16(0) // internal attributes
        .u32(0) // external attributes
        .u32(bigOffset ? U32_MAX : e.offset)
        .bytes(e.name);
      if (z64) {
        cd.u16(ZIP64_EXTRA_ID).u16(z64);
        if (bigSize) cd.u64(e.size).u64(e.size);
        if (bigOffset) cd.u64(e.offset);
      }
    }
    const dirSize = cd.length;
    const count = this.#entries.length;
    const zip64End = this.#always || count >= 0xffff || dirOffset >= U32_MAX ||
      dirSize >= U32_MAX;
    const end = new Bytes();
    if (zip64End) {
      const recPos = dirOffset + dirSize;
      end.u32(SIG.eocd64)
        .u64(RECORD_SIZE.eocd64 - 12) // size of the rest of the record
        .u16(45)
        .u16(45)
        .u32(0)
        .u32(0)
        .u64(count)
        .u64(count)
        .u64(dirSize)
        .u64(dirOffset);
      end.u32(SIG.locator64).u32(0).u64(recPos).u32(1);
    }
    const sat = (v: number, max: number) => (this.#always || v >= max ? max : v);
    end.u32(SIG.eocd)
      .u16(0)
      .u16(0)
      .u16(sat(count, 0xffff))
      .u16(sat(count, 0xffff))
      .u32(sat(dirSize, U32_MAX))
      .u32(sat(dirOffset, U32_MAX))
      .u16(0);
    await this.#out.write(cd.done());
    await this.#out.write(end.done());
    await this.#out.commit();
  }

  /** Deletes `PATH.tmp` (after an error). */
  async abort(): Promise<void> {
    await this.#out.abort();
  }
}
