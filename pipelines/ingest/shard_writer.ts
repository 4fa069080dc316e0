/**
 * Writes one shard: `NAME.tar.tmp` while open, renamed to `NAME.tar` only
 * once complete and flushed, so a `.tar` on disk is always whole. Hashes the
 * bytes as they go out (no second read).
 */
import { createHash, type Hash } from "node:crypto";
import { join } from "node:path";
import { TarWriter } from "../../data/tar.ts";

/** What a finished shard is: the manifest's shard entry. */
export interface ShardInfo {
  name: string;
  samples: number;
  bytes: number;
  sha256: string;
}

/** One sample's files, extension (without dot) to bytes. */
export type SampleFiles = [ext: string, data: Uint8Array][];

/** An open shard being written. */
export class ShardWriter {
  readonly name: string;
  readonly path: string;
  #file: Deno.FsFile;
  #tar: TarWriter;
  #hash: Hash;
  #samples = 0;

  private constructor(dir: string, name: string, file: Deno.FsFile) {
    this.name = name;
    this.path = join(dir, name);
    this.#file = file;
    this.#hash = createHash("sha256");
    const sink = {
      write: async (chunk: Uint8Array) => {
        this.#hash.update(chunk);
        let at = 0;
        while (at < chunk.length) at += await this.#file.write(chunk.subarray(at));
      },
    };
    this.#tar = new TarWriter(sink);
  }

  /** Opens `dir/name.tmp` for writing, replacing any partial file of an earlier run. */
  static async create(dir: string, name: string): Promise<ShardWriter> {
    const file = await Deno.open(join(dir, `${name}.tmp`), {
      write: true,
      create: true,
      truncate: true,
    });
    return new ShardWriter(dir, name, file);
  }

  /** Samples written so far. */
  get samples(): number {
    return this.#samples;
  }

  /** Appends one sample: `{key}.{ext}` for each file, in the given order. */
  async add(key: string, files: SampleFiles): Promise<void> {
    await this.#tar.addMany(files.map(([ext, data]) => ({ name: `${key}.${ext}`, data })));
    this.#samples++;
  }

  /** Ends the archive, flushes it to disk and renames it into place. */
  async close(): Promise<ShardInfo> {
    await this.#tar.finish();
    await this.#file.sync();
    this.#file.close();
    await Deno.rename(`${this.path}.tmp`, this.path);
    return {
      name: this.name,
      samples: this.#samples,
      bytes: this.#tar.bytes,
      sha256: this.#hash.digest("hex"),
    };
  }

  /** Drops the partial file (a shard with no samples left, or an error). */
  async abort(): Promise<void> {
    try {
      this.#file.close();
    } catch { /* already closed */ }
    await Deno.remove(`${this.path}.tmp`).catch(() => {});
  }
}
