/**
 * Seek-based file access for the format readers, and atomic streaming output
 * for the writers. Checkpoints reach 4.5 GB, more than one ArrayBuffer should
 * hold, so readers never load a whole file: they read ranges by seeking.
 *
 * Invariant: every read is checked against the file size before its buffer
 * is allocated, so a corrupt length field can never make us allocate more
 * than the file holds.
 */
import { CheckpointError, CorruptFileError, ioError } from "./errors.ts";
// Not node:path: the readers here are bundled for the browser page too.
import { dirname } from "./paths.ts";

/**
 * Where a reader's bytes come from: a file on disk (what `RandomAccessFile.open`
 * makes of a path under Deno) or anything else that reads byte ranges, such as
 * a browser `File` (`blobSource`). The readers take either, so the page parses
 * a dropped checkpoint with the same code the command line runs.
 */
export interface ByteSource {
  /** Named in errors: the path, or the dropped file's name. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** Reads up to `into.length` bytes at `offset` into `into`; returns how many (fewer only at the end). */
  read(offset: number, into: Uint8Array): Promise<number>;
}

/** What the readers open: a path (read with Deno) or a ByteSource. */
export type FileSource = string | ByteSource;

/** A `Blob` (a browser `File`, say) as a ByteSource; `name` defaults to the File's name. */
export function blobSource(blob: Blob, name?: string): ByteSource {
  return {
    name: name ?? ((blob as File).name || "blob"),
    size: blob.size,
    async read(offset: number, into: Uint8Array): Promise<number> {
      const bytes = new Uint8Array(await blob.slice(offset, offset + into.length).arrayBuffer());
      into.set(bytes);
      return bytes.length;
    },
  };
}

/** A file opened with Deno, as a ByteSource (seek + read is not atomic: RandomAccessFile serialises). */
function denoFileSource(path: string, file: Deno.FsFile, size: number): ByteSource {
  return {
    name: path,
    size,
    async read(offset: number, into: Uint8Array): Promise<number> {
      await file.seek(offset, Deno.SeekMode.Start);
      let got = 0;
      while (got < into.length) {
        const n = await file.read(into.subarray(got));
        if (n === null) break;
        got += n;
      }
      return got;
    },
  };
}

/** A read-only file read by byte ranges. Concurrent reads are serialised (seek + read is not atomic). */
export class RandomAccessFile {
  /** The path, or the source's name. */
  readonly path: string;
  /** File size in bytes at open time. */
  readonly size: number;
  #source: ByteSource;
  #release: () => void;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;
  /** Largest single read so far, in bytes (the fuzz test checks it never exceeds `size`). */
  largestRead = 0;

  private constructor(source: ByteSource, release: () => void) {
    this.path = source.name;
    this.size = source.size;
    this.#source = source;
    this.#release = release;
  }

  /**
   * Opens a path for reading (a missing or unreadable file is a
   * CheckpointError naming it), or reads from a ByteSource, which stays the
   * caller's: `close` ends this reader's use of it.
   */
  static async open(source: FileSource): Promise<RandomAccessFile> {
    if (typeof source !== "string") return new RandomAccessFile(source, () => {});
    const path = source;
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw ioError(path, "open the file", e);
    }
    let st: Deno.FileInfo;
    try {
      st = await file.stat();
    } catch (e) {
      file.close();
      throw ioError(path, "read the file's size", e);
    }
    if (!st.isFile) {
      file.close();
      throw new CheckpointError("not a regular file (a directory?)", {
        file: path,
        fix: "pass the path of the checkpoint file itself",
      });
    }
    return new RandomAccessFile(denoFileSource(path, file, st.size), () => file.close());
  }

  /**
   * Reads `length` bytes at `offset`. `what` names the part being read (a zip
   * entry, a tensor) for the error when the range lies outside the file.
   */
  readAt(offset: number, length: number, what: string): Promise<Uint8Array> {
    this.checkRange(offset, length, what);
    const run = this.#queue.then(() => this.#read(offset, length, what));
    // Keep the queue alive after a failed read; the caller sees the failure.
    this.#queue = run.catch(() => {});
    return run;
  }

  /**
   * Throws CorruptFileError unless [offset, offset+length) lies inside the
   * file. Callers use it to validate a range before they rely on it.
   */
  checkRange(offset: number, length: number, what: string): void {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
      length < 0 || offset + length > this.size
    ) {
      throw new CorruptFileError("range lies outside the file (truncated or corrupt file)", {
        file: this.path,
        key: what,
        expected: `bytes ${offset}..${offset + length} within the file`,
        found: `a file of ${this.size} bytes`,
      });
    }
  }

  async #read(offset: number, length: number, what: string): Promise<Uint8Array> {
    if (this.#closed) {
      throw new CheckpointError("read after the file was closed", {
        file: this.path,
        key: what,
        fix: "keep the checkpoint open while its tensors are read",
      });
    }
    const buf = new Uint8Array(length);
    if (length > this.largestRead) this.largestRead = length;
    let got: number;
    try {
      got = await this.#source.read(offset, buf);
    } catch (e) {
      throw ioError(this.path, `read ${what}`, e);
    }
    if (got < length) {
      throw new CorruptFileError("the file ended early (it changed while open?)", {
        file: this.path,
        key: what,
        expected: `${length} bytes at ${offset}`,
        found: `${got}`,
      });
    }
    return buf;
  }

  /** Whether `close` has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the file (idempotent). Reads still queued fail with a CheckpointError. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#release();
  }
}

/** Whether anything (a file, a folder, a link's target) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Output written to `PATH.tmp` and renamed over `PATH` by `commit`, so a
 * crash or error never leaves a half-written checkpoint under the real name.
 */
export class AtomicFile {
  readonly path: string;
  readonly tmpPath: string;
  #file: Deno.FsFile;
  /** Bytes written so far (the offset of the next write). */
  position = 0;
  #done = false;

  private constructor(path: string, file: Deno.FsFile) {
    this.path = path;
    this.tmpPath = `${path}.tmp`;
    this.#file = file;
  }

  /** Creates (truncates) `PATH.tmp`. */
  static async create(path: string): Promise<AtomicFile> {
    try {
      const f = await Deno.open(`${path}.tmp`, { write: true, create: true, truncate: true });
      return new AtomicFile(path, f);
    } catch (e) {
      throw ioError(path, `create ${path}.tmp`, e);
    }
  }

  /** Appends all of `bytes`. */
  async write(bytes: Uint8Array): Promise<void> {
    try {
      let done = 0;
      while (done < bytes.length) done += await this.#file.write(bytes.subarray(done));
    } catch (e) {
      throw ioError(this.path, `write ${this.tmpPath}`, e);
    }
    this.position += bytes.length;
  }

  /** Overwrites bytes at `offset` (for headers patched at the end), then returns to the end. */
  async writeAt(offset: number, bytes: Uint8Array): Promise<void> {
    try {
      await this.#file.seek(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < bytes.length) done += await this.#file.write(bytes.subarray(done));
      await this.#file.seek(0, Deno.SeekMode.End);
    } catch (e) {
      throw ioError(this.path, `write ${this.tmpPath}`, e);
    }
  }

  /**
   * Flushes `PATH.tmp` to disk, closes it, renames it to `PATH`, then fsyncs
   * the folder, so that after a crash `PATH` is either the old file or the
   * whole new one, and the rename itself is not lost.
   */
  async commit(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    try {
      await this.#file.syncData();
      this.#file.close();
      await Deno.rename(this.tmpPath, this.path);
    } catch (e) {
      await Deno.remove(this.tmpPath).catch(() => {});
      throw ioError(this.path, `rename ${this.tmpPath} to ${this.path}`, e);
    }
    await syncDirectory(dirname(this.path), this.path);
  }

  /** Closes and deletes `PATH.tmp`, leaving any existing `PATH` untouched (idempotent). */
  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    try {
      this.#file.close();
    } catch { /* already closed */ }
    await Deno.remove(this.tmpPath).catch(() => {});
  }
}

/**
 * Runs `body` on a fresh AtomicFile for `path`, committing on success and
 * removing the temporary file on any error (which is rethrown).
 */
export async function writeAtomically(
  path: string,
  body: (out: AtomicFile) => Promise<void>,
): Promise<void> {
  const out = await AtomicFile.create(path);
  try {
    await body(out);
  } catch (e) {
    await out.abort();
    throw e;
  }
  await out.commit();
}

/**
 * Writes a small text file (a manifest, a resume record) atomically and
 * durably: `PATH.tmp` is written, fsynced and renamed over `PATH`, then the
 * directory is fsynced so that the rename itself survives a crash
 * (`AtomicFile.commit`).
 */
export async function writeTextAtomic(path: string, text: string): Promise<void> {
  await writeAtomically(path, (out) => out.write(new TextEncoder().encode(text)));
}

/** fsyncs directory `dir` (after a rename into it that `path` names). */
async function syncDirectory(dir: string, path: string): Promise<void> {
  // Windows cannot open a directory as a file; its renames are not made durable this way.
  if (Deno.build.os === "windows") return;
  let f: Deno.FsFile;
  try {
    f = await Deno.open(dir, { read: true });
  } catch (e) {
    throw ioError(path, `open its directory ${dir} to sync it`, e);
  }
  try {
    await f.sync();
  } catch (e) {
    throw ioError(path, `sync its directory ${dir}`, e);
  } finally {
    f.close();
  }
}
