/**
 * Byte-level builders for crafted files: pickles opcode by opcode, zip
 * archives in memory (stored entries, correct CRCs unless told otherwise),
 * `.pth` checkpoints around a pickle, tar members with any header field, and
 * an in-memory ByteSource. The fuzz generators and the hostile-file tests
 * build from these; bloom's own writers only write well-formed files.
 */
import { deflateSync } from "npm:fflate@0.8.2";
import { crc32 } from "../../data/crc32.ts";
import { Bytes } from "../../data/zip_writer.ts";
import type { ByteSource } from "../../data/file.ts";

const enc = new TextEncoder();

/** A pickle assembled opcode by opcode (protocol 2 unless `proto` says otherwise). */
export class PickleOps {
  #b: number[] = [];

  /** Raw bytes. */
  raw(...bytes: number[]): this {
    for (const x of bytes) this.#b.push(x & 0xff);
    return this;
  }
  /** Raw bytes from an array. */
  rawBytes(b: Uint8Array): this {
    for (const x of b) this.#b.push(x);
    return this;
  }
  #u32(v: number): this {
    return this.raw(v, v >>> 8, v >>> 16, v >>> 24);
  }
  /** Bytes so far. */
  get length(): number {
    return this.#b.length;
  }
  proto(v = 2): this {
    return this.raw(0x80, v);
  }
  /** GLOBAL 'module\nname\n'. */
  global(module: string, name: string): this {
    return this.raw(0x63).rawBytes(enc.encode(`${module}\n${name}\n`));
  }
  /** BINUNICODE. */
  str(s: string): this {
    const b = enc.encode(s);
    return this.raw(0x58).#u32(b.length).rawBytes(b);
  }
  /** BINBYTES. */
  bytes(b: Uint8Array): this {
    return this.raw(0x42).#u32(b.length).rawBytes(b);
  }
  /** BININT1, BININT2, BININT or LONG1 by size. */
  int(n: number): this {
    if (n >= 0 && n < 256) return this.raw(0x4b, n);
    if (n >= 0 && n < 65536) return this.raw(0x4d, n, n >>> 8);
    if (n >= -(2 ** 31) && n < 2 ** 31) return this.raw(0x4a).#u32(n);
    const bytes: number[] = [];
    let v = BigInt(n);
    for (let i = 0; i < 8; i++) bytes.push(Number(v & 0xffn)), (v >>= 8n);
    return this.raw(0x8a, 8, ...bytes);
  }
  none(): this {
    return this.raw(0x4e);
  }
  bool(v: boolean): this {
    return this.raw(v ? 0x88 : 0x89);
  }
  mark(): this {
    return this.raw(0x28);
  }
  /** TUPLE (from MARK). */
  tuple(): this {
    return this.raw(0x74);
  }
  tuple1(): this {
    return this.raw(0x85);
  }
  tuple2(): this {
    return this.raw(0x86);
  }
  tuple3(): this {
    return this.raw(0x87);
  }
  emptyTuple(): this {
    return this.raw(0x29);
  }
  emptyDict(): this {
    return this.raw(0x7d);
  }
  emptyList(): this {
    return this.raw(0x5d);
  }
  setitem(): this {
    return this.raw(0x73);
  }
  setitems(): this {
    return this.raw(0x75);
  }
  append(): this {
    return this.raw(0x61);
  }
  appends(): this {
    return this.raw(0x65);
  }
  pop(): this {
    return this.raw(0x30);
  }
  dup(): this {
    return this.raw(0x32);
  }
  /** LONG_BINPUT i. */
  put(i: number): this {
    return this.raw(0x72).#u32(i);
  }
  /** LONG_BINGET i. */
  get(i: number): this {
    return this.raw(0x6a).#u32(i);
  }
  reduce(): this {
    return this.raw(0x52);
  }
  binpersid(): this {
    return this.raw(0x51);
  }
  build(): this {
    return this.raw(0x62);
  }
  stop(): this {
    return this.raw(0x2e);
  }
  /** `('storage', torch.<storage>, key, 'cpu', numel)` as a persistent id, resolved. */
  storage(key: string, numel: number, storage = "FloatStorage"): this {
    return this.mark().str("storage").global("torch", storage).str(key).str("cpu").int(numel)
      .tuple().binpersid();
  }
  /** The argument tuple of _rebuild_tensor_v2 (storage, offset, size, stride, False, OrderedDict()). */
  tensorArgs(
    key: string,
    numel: number,
    shape: readonly number[],
    stride: readonly number[],
    offset = 0,
    storage = "FloatStorage",
  ): this {
    this.mark().storage(key, numel, storage).int(offset);
    this.mark();
    for (const d of shape) this.int(d);
    this.tuple().mark();
    for (const s of stride) this.int(s);
    return this.tuple().bool(false).global("collections", "OrderedDict").emptyTuple().reduce()
      .tuple();
  }
  /** `_rebuild_tensor_v2(…)`: a tensor over storage `key`. */
  tensor(
    key: string,
    numel: number,
    shape: readonly number[],
    stride: readonly number[] = contiguousStrides(shape),
    offset = 0,
    storage = "FloatStorage",
  ): this {
    return this.global("torch._utils", "_rebuild_tensor_v2")
      .tensorArgs(key, numel, shape, stride, offset, storage).reduce();
  }
  /** The pickle, with STOP appended unless `stop` is false. */
  done(stop = true): Uint8Array {
    if (stop) this.stop();
    return Uint8Array.from(this.#b);
  }
}

/** C-order strides of `shape`. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) (s[d] = acc), (acc *= shape[d]);
  return s;
}

/** One entry of `zipBytes`. */
export interface ZipInput {
  name: string;
  data: Uint8Array;
  /** Stored CRC (default: the right one). */
  crc?: number;
  /** Deflate the data (method 8) instead of storing it. */
  deflate?: boolean;
}

/** Options of `zipBytes`. */
export interface ZipOptions {
  /** ZIP64 sizes, offsets and end records for every entry. */
  zip64?: boolean;
  /** Bytes of padding extra field in each local header (torch aligns data to 64). */
  pad?: number;
}

/** Where `zipBytes` put each part, for tests that damage one region. */
export interface ZipLayout {
  bytes: Uint8Array;
  entries: { name: string; localHeader: number; data: number; central: number }[];
  centralDirectory: number;
}

/** A stored (uncompressed) zip archive in memory, laid out as torch and bloom write them. */
export function zipBytes(entries: ZipInput[], opts: ZipOptions = {}): ZipLayout {
  const parts: Uint8Array[] = [];
  let at = 0;
  const push = (b: Uint8Array) => (parts.push(b), (at += b.length));
  const z64 = opts.zip64 ?? false;
  const layout: ZipLayout["entries"] = [];
  const written: {
    name: Uint8Array;
    crc: number;
    size: number;
    csize: number;
    method: number;
    offset: number;
  }[] = [];
  for (const e of entries) {
    const name = enc.encode(e.name);
    const crc = e.crc ?? crc32(e.data);
    const size = e.data.length;
    const method = e.deflate ? 8 : 0;
    const stored = e.deflate ? deflateSync(e.data) : e.data;
    const extra = new Bytes();
    if (z64) extra.u16(1).u16(16).u64(size).u64(stored.length);
    if (opts.pad) extra.u16(0x4246).u16(opts.pad).bytes(new Uint8Array(opts.pad).fill(0x5a));
    const ex = extra.done();
    const offset = at;
    push(
      new Bytes().u32(0x04034b50).u16(z64 ? 45 : 20).u16(0).u16(method).u16(0).u16(0x21).u32(crc)
        .u32(z64 ? 0xffffffff : stored.length).u32(z64 ? 0xffffffff : size).u16(name.length)
        .u16(ex.length).bytes(name).bytes(ex).done(),
    );
    layout.push({ name: e.name, localHeader: offset, data: at, central: 0 });
    push(stored);
    written.push({ name, crc, size, csize: stored.length, method, offset });
  }
  const dirOffset = at;
  for (const [i, w] of written.entries()) {
    layout[i].central = at;
    const ex = z64
      ? new Bytes().u16(1).u16(24).u64(w.size).u64(w.csize).u64(w.offset).done()
      : null;
    push(
      new Bytes().u32(0x02014b50).u16(z64 ? 45 : 20).u16(z64 ? 45 : 20).u16(0).u16(w.method).u16(0)
        .u16(0x21).u32(w.crc).u32(z64 ? 0xffffffff : w.csize).u32(z64 ? 0xffffffff : w.size)
        .u16(w.name.length).u16(ex ? ex.length : 0).u16(0).u16(0).u16(0).u32(0)
        .u32(z64 ? 0xffffffff : w.offset).bytes(w.name).bytes(ex ?? new Uint8Array(0)).done(),
    );
  }
  const dirSize = at - dirOffset;
  const n = entries.length;
  if (z64) {
    const rec = at;
    push(
      new Bytes().u32(0x06064b50).u64(44).u16(45).u16(45).u32(0).u32(0).u64(n).u64(n).u64(dirSize)
        .u64(dirOffset).done(),
    );
    push(new Bytes().u32(0x07064b50).u32(0).u64(rec).u32(1).done());
  }
  push(
    new Bytes().u32(0x06054b50).u16(0).u16(0).u16(z64 ? 0xffff : n).u16(z64 ? 0xffff : n)
      .u32(z64 ? 0xffffffff : dirSize).u32(z64 ? 0xffffffff : dirOffset).u16(0).done(),
  );
  const bytes = new Uint8Array(at);
  let p = 0;
  for (const b of parts) bytes.set(b, p), (p += b.length);
  return { bytes, entries: layout, centralDirectory: dirOffset };
}

/** A `.pth` around `pickle`: `archive/data.pkl`, `archive/data/<key>` storages, torch's extras. */
export function pthBytes(
  pickle: Uint8Array,
  storages: Record<string, Uint8Array> = {},
  opts: ZipOptions & { archive?: string } = {},
): ZipLayout {
  const a = opts.archive ?? "archive";
  return zipBytes([
    { name: `${a}/data.pkl`, data: pickle },
    { name: `${a}/byteorder`, data: enc.encode("little") },
    ...Object.entries(storages).map(([k, data]) => ({ name: `${a}/data/${k}`, data })),
    { name: `${a}/version`, data: enc.encode("3\n") },
  ], { pad: 0, ...opts });
}

/** An in-memory file for the readers, named `name` in their errors. */
export function memorySource(name: string, bytes: Uint8Array): ByteSource {
  return {
    name,
    size: bytes.length,
    read(offset: number, into: Uint8Array): Promise<number> {
      const part = bytes.subarray(offset, offset + into.length);
      into.set(part);
      return Promise.resolve(part.length);
    },
  };
}

/** Fields of one tar header block (`tarHeader`); numbers are written as octal unless raw. */
export interface TarHeaderFields {
  name: string;
  /** Octal size, or the 12 raw bytes of the size field (base-256 and other crafted values). */
  size: number | Uint8Array;
  /** Type flag: "0" file, "x" PAX header, "L" GNU long name… */
  type?: string;
}

/** One 512-byte tar header with a correct checksum. */
export function tarHeader(f: TarHeaderFields): Uint8Array {
  const h = new Uint8Array(512);
  h.set(enc.encode(f.name).subarray(0, 100), 0);
  h.set(enc.encode("0000644\0"), 100);
  h.set(enc.encode("0000000\0"), 108);
  h.set(enc.encode("0000000\0"), 116);
  if (typeof f.size === "number") {
    h.set(enc.encode(f.size.toString(8).padStart(11, "0").slice(-11) + "\0"), 124);
  } else h.set(f.size.subarray(0, 12), 124);
  h.set(enc.encode("00000000000\0"), 136);
  h.fill(0x20, 148, 156);
  h[156] = (f.type ?? "0").charCodeAt(0);
  h.set(enc.encode("ustar\x0000"), 257);
  let sum = 0;
  for (const b of h) sum += b;
  h.set(enc.encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
  return h;
}

/** Concatenates byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), (at += p.length);
  return out;
}

/** Bytes as a stream of chunks, as a file's readable would deliver them. */
export async function* chunks(b: Uint8Array, size = 4096): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}
