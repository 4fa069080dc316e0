/**
 * POSIX tar (ustar, with PAX extended headers for what ustar cannot say),
 * written and read as streams. This is the container of the WebDataset shards
 * the ingest writes and the loader reads; Python's `tarfile` and GNU tar read
 * what `TarWriter` writes.
 *
 * Invariants:
 * - Every header and every payload is padded to 512-byte blocks; an archive
 *   ends with two zero blocks (`finish`).
 * - Output is a pure function of the entries: fixed mtime, uid, gid and mode,
 *   so two runs over the same samples give byte-identical shards (resume and
 *   reproducibility depend on it).
 * - Reading is bounded by the archive: no size field is trusted before it is
 *   checked against the bytes left and LIMITS.tarMemberBytes.
 */
import { CorruptFileError, ioError } from "./errors.ts";
import { LIMITS } from "./limits.ts";

/** Tar block size; headers and payloads are padded to it. */
export const BLOCK = 512;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * A malformed or truncated archive: names the shard (`file`) and the header's
 * byte offset (`key`). A CorruptFileError, so an InputError: the loader
 * catches it to skip and report the shard.
 */
export class TarFormatError extends CorruptFileError {
  override name = "TarFormatError";
}

/** Options of one entry. */
export interface TarEntryOptions {
  /** Seconds since the epoch (default 0, for reproducible archives). */
  mtime?: number;
  /** Permission bits (default 0o644). */
  mode?: number;
}

/** Largest size a 12-byte octal field holds (11 digits). */
const MAX_OCTAL_SIZE = 8 ** 11 - 1;

function writeString(h: Uint8Array, offset: number, length: number, s: string): void {
  const b = encoder.encode(s);
  if (b.length > length) throw new RangeError(`tar field of ${length} B cannot hold '${s}'`);
  h.set(b, offset);
}

/** Zero-padded octal of `width - 1` digits followed by NUL. */
function writeOctal(h: Uint8Array, offset: number, width: number, n: number): void {
  const s = Math.trunc(n).toString(8).padStart(width - 1, "0");
  if (s.length > width - 1) throw new RangeError(`${n} does not fit a ${width}-byte tar field`);
  writeString(h, offset, width - 1, s);
  h[offset + width - 1] = 0;
}

/** One PAX record: "LEN key=value\n", where LEN counts the whole record, itself included. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const bodyLen = encoder.encode(body).length;
  let len = bodyLen + String(bodyLen).length;
  if (String(len).length + bodyLen !== len) len = bodyLen + String(len).length;
  return `${len}${body}`;
}

/**
 * Splits a name into ustar's prefix (≤ 155 B) and name (≤ 100 B) at a '/', or
 * returns null when no split fits (then a PAX `path` record carries it).
 */
function splitUstarName(name: string): { prefix: string; name: string } | null {
  const bytes = encoder.encode(name);
  if (bytes.length !== name.length) return null; // non-ASCII: PAX says it exactly
  if (bytes.length <= 100) return { prefix: "", name };
  for (let i = name.length - 1; i > 0; i--) {
    if (name[i] !== "/") continue;
    const prefix = name.slice(0, i);
    const rest = name.slice(i + 1);
    if (prefix.length <= 155 && rest.length > 0 && rest.length <= 100) {
      return { prefix, name: rest };
    }
    if (prefix.length <= 155) break; // shorter prefixes only make `rest` longer
  }
  return null;
}

function header(
  name: string,
  prefix: string,
  size: number,
  type: string,
  opts: TarEntryOptions,
): Uint8Array {
  const h = new Uint8Array(BLOCK);
  writeString(h, 0, 100, name);
  writeOctal(h, 100, 8, opts.mode ?? 0o644);
  writeOctal(h, 108, 8, 0); // uid
  writeOctal(h, 116, 8, 0); // gid
  writeOctal(h, 124, 12, size);
  writeOctal(h, 136, 12, opts.mtime ?? 0);
  h.fill(0x20, 148, 156); // checksum is computed with its own field as spaces
  h[156] = type.charCodeAt(0);
  writeString(h, 257, 6, "ustar");
  writeString(h, 263, 2, "00");
  writeString(h, 345, 155, prefix);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i];
  writeOctal(h, 148, 7, sum);
  h[155] = 0x20;
  return h;
}

function padding(n: number): number {
  return (BLOCK - (n % BLOCK)) % BLOCK;
}

/**
 * The bytes of one regular-file entry: its header (preceded by a PAX header
 * when the name or size does not fit ustar), the data, and zero padding.
 */
export function tarEntry(name: string, data: Uint8Array, opts: TarEntryOptions = {}): Uint8Array {
  if (name.length === 0) throw new RangeError("tar entry name is empty");
  if (name.includes("\0")) throw new RangeError(`tar entry name contains NUL: ${name}`);
  const parts: Uint8Array[] = [];
  const split = splitUstarName(name);
  const records: string[] = [];
  if (!split) records.push(paxRecord("path", name));
  if (data.length > MAX_OCTAL_SIZE) records.push(paxRecord("size", String(data.length)));
  if (records.length > 0) {
    const pax = encoder.encode(records.join(""));
    // The PAX header's own name is informational; keep it short and ASCII.
    const shortName = `PaxHeader/${name.replace(/[^\x20-\x7e]/g, "_").slice(-80)}`;
    parts.push(header(shortName.slice(0, 100), "", pax.length, "x", opts));
    parts.push(pax, new Uint8Array(padding(pax.length)));
  }
  const asciiName = split ? split.name : name.replace(/[^\x20-\x7e]/g, "_").slice(-100);
  const size = data.length > MAX_OCTAL_SIZE ? 0 : data.length;
  parts.push(header(asciiName, split?.prefix ?? "", size, "0", opts));
  parts.push(data, new Uint8Array(padding(data.length)));
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The two zero blocks that end an archive. */
export function tarEnd(): Uint8Array {
  return new Uint8Array(2 * BLOCK);
}

/** Where a `TarWriter` puts its bytes. */
export interface ByteSink {
  write(chunk: Uint8Array): Promise<void>;
}

/**
 * Streams entries into a sink. Counts the bytes written so callers can size
 * shards; `finish` writes the end-of-archive blocks and must be called once.
 */
export class TarWriter {
  #sink: ByteSink;
  #bytes = 0;
  #finished = false;
  #opts: TarEntryOptions;

  constructor(sink: ByteSink, opts: TarEntryOptions = {}) {
    this.#sink = sink;
    this.#opts = opts;
  }

  /** Bytes written so far. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Appends one file entry. */
  async add(name: string, data: Uint8Array): Promise<void> {
    await this.addMany([{ name, data }]);
  }

  /** Appends several entries with one write (a sample's files belong together). */
  async addMany(entries: { name: string; data: Uint8Array }[]): Promise<void> {
    if (this.#finished) throw new Error("TarWriter: add after finish");
    const blobs = entries.map((e) => tarEntry(e.name, e.data, this.#opts));
    let total = 0;
    for (const b of blobs) total += b.length;
    const chunk = blobs.length === 1 ? blobs[0] : new Uint8Array(total);
    if (blobs.length !== 1) {
      let at = 0;
      for (const b of blobs) {
        chunk.set(b, at);
        at += b.length;
      }
    }
    await this.#sink.write(chunk);
    this.#bytes += chunk.length;
  }

  /** Writes the end-of-archive marker. */
  async finish(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    const end = tarEnd();
    await this.#sink.write(end);
    this.#bytes += end.length;
  }
}

/** One regular file read from an archive. */
export interface TarFile {
  name: string;
  data: Uint8Array;
  /** Byte offset of the entry's (first) header in the archive. */
  offset: number;
}

/** Where a tar stream comes from, for errors and bounds. */
export interface TarSource {
  /** Named in every error: the shard's path. */
  name: string;
  /** Bytes in the stream when known (a file's size): no entry may claim more than is left. */
  size?: number;
}

/** Reads exact byte counts from a stream of chunks, allocating only for bytes that arrived. */
class ExactReader {
  #it: AsyncIterator<Uint8Array>;
  #buf: Uint8Array = new Uint8Array(0);
  #at = 0;
  #name: string;
  /** Bytes consumed so far. */
  position = 0;

  constructor(source: AsyncIterable<Uint8Array>, name: string) {
    this.#it = source[Symbol.asyncIterator]();
    this.#name = name;
  }

  /** Exactly `n` bytes, or fewer only at the end of the stream. */
  async read(n: number): Promise<Uint8Array> {
    // Pieces first, one buffer at the end: a size field claiming more than the stream holds
    // costs only what the stream delivers.
    const parts: Uint8Array[] = [];
    let got = 0;
    while (got < n) {
      if (this.#at >= this.#buf.length) {
        let r: IteratorResult<Uint8Array>;
        try {
          r = await this.#it.next();
        } catch (e) {
          throw ioError(this.#name, `read the tar stream at byte ${this.position + got}`, e);
        }
        if (r.done) break;
        this.#buf = r.value;
        this.#at = 0;
        continue;
      }
      const take = Math.min(n - got, this.#buf.length - this.#at);
      parts.push(this.#buf.subarray(this.#at, this.#at + take));
      this.#at += take;
      got += take;
    }
    this.position += got;
    if (parts.length === 1) return parts[0].slice();
    const out = new Uint8Array(got);
    let at = 0;
    for (const p of parts) out.set(p, at), at += p.length;
    return out;
  }

  /** Stops reading the underlying stream (closes a file early). */
  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

function readString(h: Uint8Array, offset: number, length: number): string {
  let end = offset;
  while (end < offset + length && h[end] !== 0) end++;
  return decoder.decode(h.subarray(offset, end));
}

/** A numeric header field: octal text, or GNU base-256 (high bit of the first byte set). */
function readNumber(h: Uint8Array, offset: number, length: number): number | string {
  if (h[offset] & 0x80) {
    // Base-256, two's complement: 0x80 starts a positive value, 0xff a negative one.
    if (h[offset] === 0xff) return "a negative base-256 number";
    let n = h[offset] & 0x7f;
    for (let i = 1; i < length; i++) n = n * 256 + h[offset + i];
    return Number.isSafeInteger(n) ? n : "a base-256 number past 2^53";
  }
  const s = readString(h, offset, length).trim();
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s)) return `'${s}'`;
  return parseInt(s, 8);
}

function parsePax(data: Uint8Array, bad: (what: string) => TarFormatError): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < data.length) {
    let sp = i;
    while (sp < data.length && sp - i < 20 && data[sp] !== 0x20) sp++;
    const digits = decoder.decode(data.subarray(i, sp));
    const len = /^[0-9]+$/.test(digits) ? Number(digits) : NaN;
    // "LEN key=value\n": LEN counts the whole record, so it covers at least "LEN k=\n".
    if (!(len >= sp - i + 4) || i + len > data.length || data[i + len - 1] !== 0x0a) {
      throw bad(`malformed PAX record at byte ${i} of the extended header`);
    }
    const rec = decoder.decode(data.subarray(sp + 1, i + len - 1)); // drop the trailing \n
    const eq = rec.indexOf("=");
    if (eq > 0) out.set(rec.slice(0, eq), rec.slice(eq + 1));
    i += len;
  }
  return out;
}

/**
 * Yields the regular files of a tar stream in archive order, holding one
 * entry in memory at a time. Understands ustar prefixes, PAX `path`/`size`
 * records and GNU long names and base-256 sizes; skips directories, links
 * and other types.
 *
 * Bounded by the stream: an entry's size is checked against what is left of
 * `source.size` (when known) and against `LIMITS.tarMemberBytes` before
 * anything is read, and only bytes that arrive are buffered. Every problem
 * is a `TarFormatError` naming `source.name` and the header's byte offset
 * (I/O failures: a CheckpointError naming it too).
 */
export async function* readTar(
  source: AsyncIterable<Uint8Array>,
  from: TarSource = { name: "tar stream" },
): AsyncGenerator<TarFile> {
  const file = from.name;
  const r = new ExactReader(source, file);
  let paxPath: string | null = null;
  let paxSize: number | null = null;
  let longName: string | null = null;
  let entryStart = -1;
  try {
    while (true) {
      const at = r.position;
      const key = `header at byte ${at}`;
      const bad = (what: string, expected?: string, found?: string) =>
        new TarFormatError(what, { file, key, expected, found, fix: TAR_FIX });
      const h = await r.read(BLOCK);
      if (h.length === 0) return; // lenient: EOF without the end blocks
      if (h.length < BLOCK) throw bad("tar truncated in the header");
      if (h.every((b) => b === 0)) return; // end of archive
      let sum = 0;
      for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
      const stored = readNumber(h, 148, 8);
      if (stored !== sum) {
        throw bad(
          "tar header has a bad checksum (not a tar file, or corrupt)",
          `${sum}`,
          `${stored}`,
        );
      }
      if (entryStart < 0) entryStart = at;
      const type = String.fromCharCode(h[156] || 0x30);
      const size = paxSize ?? readNumber(h, 124, 12);
      if (typeof size === "string") throw bad("bad size field", "an octal size", size);
      const left = from.size === undefined ? Infinity : from.size - r.position;
      if (size > left) {
        throw bad(
          "entry is larger than the rest of the file (truncated, or a damaged size)",
          `at most ${left} bytes`,
          `${size}`,
        );
      }
      if (size > LIMITS.tarMemberBytes) {
        throw new TarFormatError("entry size exceeds bloom's limit for a shard member", {
          file,
          key,
          expected: `at most ${LIMITS.tarMemberBytes} bytes`,
          found: `${size}`,
        });
      }
      const data = await r.read(size);
      if (data.length < size) {
        throw bad("tar truncated inside the entry", `${size} bytes of data`, `${data.length}`);
      }
      const pad = padding(size);
      if (pad > 0 && (await r.read(pad)).length < pad) {
        throw bad("tar truncated after the entry", `${pad} bytes of padding`, "fewer");
      }
      if (type === "x") {
        const pax = parsePax(data, bad);
        const p = pax.get("path");
        if (p !== undefined) paxPath = checkPath(p, bad);
        const s = pax.get("size");
        if (s !== undefined) {
          if (!/^[0-9]{1,16}$/.test(s) || !Number.isSafeInteger(Number(s))) {
            throw bad(
              "bad PAX size record",
              "a decimal byte count",
              JSON.stringify(s.slice(0, 40)),
            );
          }
          paxSize = Number(s);
        }
        continue;
      }
      if (type === "g") continue; // global PAX defaults: nothing we use
      if (type === "L") {
        longName = checkPath(readString(data, 0, data.length), bad);
        continue;
      }
      if (type === "K") continue; // GNU long link name
      const prefix = readString(h, 345, 155);
      const ustarName = readString(h, 0, 100);
      const name = paxPath ?? longName ?? (prefix ? `${prefix}/${ustarName}` : ustarName);
      const offset = entryStart;
      paxPath = paxSize = longName = null;
      entryStart = -1;
      if (type === "0" || type === "7") yield { name, data, offset };
    }
  } finally {
    await r.close();
  }
}

const TAR_FIX = "the shard is damaged or not a tar file; re-run the ingest to rewrite it";

/** A PAX or GNU long path, refused past LIMITS.pathChars. */
function checkPath(p: string, bad: (what: string, e?: string, f?: string) => TarFormatError) {
  if (p.length > LIMITS.pathChars) {
    throw bad("member name exceeds bloom's limit", `at most ${LIMITS.pathChars}`, `${p.length}`);
  }
  return p;
}

/**
 * Reads the files of a tar archive on disk, streaming it; errors name `path`
 * (TarFormatError for a damaged archive, CheckpointError for I/O).
 */
export async function* readTarFile(path: string): AsyncGenerator<TarFile> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (e) {
    throw ioError(path, "open the shard", e);
  }
  let size: number;
  try {
    size = (await f.stat()).size;
  } catch (e) {
    f.close();
    throw ioError(path, "read the shard's size", e);
  }
  // readTar closes the stream (and so the file) when it stops.
  yield* readTar(f.readable, { name: path, size });
}
