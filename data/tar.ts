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
 */

/** Tar block size; headers and payloads are padded to it. */
export const BLOCK = 512;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A malformed or truncated archive; the message names the byte offset. */
export class TarFormatError extends Error {
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

/** Reads exact byte counts from a stream of chunks. */
class ExactReader {
  #it: AsyncIterator<Uint8Array>;
  #buf: Uint8Array = new Uint8Array(0);
  #at = 0;
  /** Bytes consumed so far. */
  position = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  /** Exactly `n` bytes, or fewer only at the end of the stream. */
  async read(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      if (this.#at >= this.#buf.length) {
        const r = await this.#it.next();
        if (r.done) break;
        this.#buf = r.value;
        this.#at = 0;
        continue;
      }
      const take = Math.min(n - got, this.#buf.length - this.#at);
      out.set(this.#buf.subarray(this.#at, this.#at + take), got);
      this.#at += take;
      got += take;
    }
    this.position += got;
    return got === n ? out : out.subarray(0, got);
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

function readOctal(h: Uint8Array, offset: number, length: number, at: number): number {
  // GNU base-256 for large values: high bit of the first byte set.
  if (h[offset] & 0x80) {
    let n = h[offset] & 0x7f;
    for (let i = 1; i < length; i++) n = n * 256 + h[offset + i];
    return n;
  }
  const s = readString(h, offset, length).trim();
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s)) {
    throw new TarFormatError(`tar header at byte ${at}: bad octal field '${s}'`);
  }
  return parseInt(s, 8);
}

function parsePax(data: Uint8Array, at: number): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < data.length) {
    let sp = i;
    while (sp < data.length && data[sp] !== 0x20) sp++;
    const len = parseInt(decoder.decode(data.subarray(i, sp)), 10);
    if (!Number.isFinite(len) || len <= 0 || i + len > data.length) {
      throw new TarFormatError(`PAX header at byte ${at}: malformed record`);
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
 * records and GNU long names; skips directories, links and other types.
 * Throws `TarFormatError` on a bad checksum or a truncated entry.
 */
export async function* readTar(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarFile> {
  const r = new ExactReader(source);
  let paxPath: string | null = null;
  let paxSize: number | null = null;
  let longName: string | null = null;
  let entryStart = -1;
  try {
    while (true) {
      const at = r.position;
      const h = await r.read(BLOCK);
      if (h.length === 0) return; // lenient: EOF without the end blocks
      if (h.length < BLOCK) throw new TarFormatError(`tar truncated in the header at byte ${at}`);
      if (h.every((b) => b === 0)) return; // end of archive
      let sum = 0;
      for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
      const stored = readOctal(h, 148, 8, at);
      if (stored !== sum) {
        throw new TarFormatError(
          `tar header at byte ${at} has a bad checksum (not a tar file, or corrupt)`,
        );
      }
      if (entryStart < 0) entryStart = at;
      const type = String.fromCharCode(h[156] || 0x30);
      const size = paxSize ?? readOctal(h, 124, 12, at);
      const data = await r.read(size);
      if (data.length < size) {
        throw new TarFormatError(`tar truncated inside the entry whose header is at byte ${at}`);
      }
      const pad = padding(size);
      if (pad > 0 && (await r.read(pad)).length < pad) {
        throw new TarFormatError(`tar truncated after the entry whose header is at byte ${at}`);
      }
      if (type === "x") {
        const pax = parsePax(data, at);
        paxPath = pax.get("path") ?? paxPath;
        const s = pax.get("size");
        paxSize = s !== undefined ? Number(s) : paxSize;
        continue;
      }
      if (type === "g") continue; // global PAX defaults: nothing we use
      if (type === "L") {
        longName = readString(data, 0, data.length);
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

/** Reads the files of a tar archive on disk, streaming it. */
export async function* readTarFile(path: string): AsyncGenerator<TarFile> {
  const f = await Deno.open(path, { read: true });
  // readTar closes the stream (and so the file) when it stops.
  yield* readTar(f.readable);
}
