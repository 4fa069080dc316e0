/**
 * The resumable row journal of an embedding run, `OUT.partial/`: each
 * batch's rows are appended as soon as they are read back (features, patch
 * tokens when asked, one JSON line per row with its path, label and
 * patient; failed images in errors.jsonl), and `commit` records how far all
 * of it is durable, in progress.json.
 *
 * Invariants:
 * - progress.json is written atomically after the data files are synced, so
 *   what it counts is on disk; bytes past it (a batch appended, then a crash)
 *   are cut off when the journal is reopened.
 * - A commit is made at a batch boundary: `next` is the sample index after
 *   the batch's last one, so a rerun's batches are the batches the first run
 *   would have made (the same images in each), and its rows the same bits.
 * - state.json names the run (inputs, options, weights); a journal of another
 *   run is removed, never continued.
 */
import { join } from "node:path";
import { RandomAccessFile, writeTextAtomic } from "../data/file.ts";
import type { EmbeddingsBlock } from "../data/embeddings_file.ts";

/** How far a journal is durable (progress.json). */
interface Committed {
  /** Rows written. */
  rows: number;
  /** The loader's sample index to go on from. */
  next: number;
  /** Feature width (0 until the first row). */
  dim: number;
  /** Patch tokens per row and their width (0 when not written). */
  patches: number;
  tokenWidth: number;
  /** Whether rows carry labels / patients (null until the first row). */
  labelled: boolean | null;
  withPatients: boolean | null;
  /** Committed byte length of each file. */
  bytes: Record<JournalFile, number>;
}

/** One row's metadata, as rows.jsonl stores it. */
export interface RowMeta {
  path: string;
  label?: string;
  patient?: string;
  /** The ingest's split of the sample, with its key (shards only). */
  split?: string;
  key?: string;
}

const FILES = {
  features: "features.f32",
  tokens: "patch_tokens.f32",
  rows: "rows.jsonl",
  errors: "errors.jsonl",
} as const;
type JournalFile = keyof typeof FILES;

/** Version of the journal layout, part of the state (an older partial dir starts over). */
const JOURNAL_VERSION = 2;

const enc = new TextEncoder();

/** See the top of this file. */
export class EmbedJournal {
  readonly dir: string;
  #files: Record<JournalFile, Deno.FsFile>;
  #c: Committed;
  /** Sizes after the appends so far (committed or not). */
  #at: Record<JournalFile, number>;
  #pendingErrors: string[] = [];
  #rowsSinceCommit = 0;
  /** Rows and sample index the journal held when it was opened. */
  readonly resumed: { rows: number; next: number };

  private constructor(dir: string, files: Record<JournalFile, Deno.FsFile>, c: Committed) {
    this.dir = dir;
    this.#files = files;
    this.#c = c;
    this.#at = { ...c.bytes };
    this.resumed = { rows: c.rows, next: c.next };
  }

  /**
   * Opens the journal in `dir` for the run `state`: continues a journal of
   * the same run from its last commit (`start` when none), else starts a new
   * one there.
   */
  static async open(
    dir: string,
    state: Record<string, unknown>,
    start: number,
    log: (line: string) => void,
  ): Promise<EmbedJournal> {
    const want = JSON.stringify({ journal: JOURNAL_VERSION, ...state });
    const statePath = join(dir, "state.json");
    const old = await Deno.readTextFile(statePath).catch(() => null);
    let c: Committed | null = null;
    if (old !== null && old !== want) {
      log(`${dir} is from a run with other inputs or options; starting over`);
    } else if (old !== null) {
      c = await readCommitted(dir);
      if (c && !(await holds(dir, c))) {
        log(`${dir} is shorter than its progress.json says (a crash?); starting over`);
        c = null;
      }
    }
    if (c === null) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.mkdir(dir, { recursive: true });
      await writeTextAtomic(statePath, want);
      c = {
        rows: 0,
        next: start,
        dim: 0,
        patches: 0,
        tokenWidth: 0,
        labelled: null,
        withPatients: null,
        bytes: { features: 0, tokens: 0, rows: 0, errors: 0 },
      };
    }
    const files = {} as Record<JournalFile, Deno.FsFile>;
    for (const k of Object.keys(FILES) as JournalFile[]) {
      const f = await Deno.open(join(dir, FILES[k]), { read: true, write: true, create: true });
      await f.truncate(c.bytes[k]); // what a crash appended after the last commit
      await f.seek(0, Deno.SeekMode.End);
      files[k] = f;
    }
    return new EmbedJournal(dir, files, c);
  }

  /** Rows appended so far (committed or not). */
  get rows(): number {
    return this.#c.rows + this.#rowsSinceCommit;
  }

  /** Rows on disk as of the last commit. */
  get committedRows(): number {
    return this.#c.rows;
  }

  /** Feature width and patch tokens per row (0 before the first row). */
  get shape(): { dim: number; patches: number } {
    return { dim: this.#c.dim, patches: this.#c.patches };
  }

  /** Whether rows carry labels and patients (null before the first row). */
  get columns(): { labelled: boolean | null; withPatients: boolean | null } {
    return { labelled: this.#c.labelled, withPatients: this.#c.withPatients };
  }

  /**
   * Appends a batch's rows: `features` [n, dim], `tokens` [n, patches, width]
   * when patch tokens are kept. The caller has checked that the rows' columns
   * match `columns`.
   */
  async append(
    rows: RowMeta[],
    features: Float32Array,
    dim: number,
    tokens?: { data: Float32Array; patches: number; width: number },
  ): Promise<void> {
    const c = this.#c;
    if (c.dim === 0) {
      c.dim = dim;
      c.patches = tokens?.patches ?? 0;
      c.tokenWidth = tokens?.width ?? 0;
      c.labelled = rows[0]?.label !== undefined;
      c.withPatients = rows[0]?.patient !== undefined;
    }
    await this.#write(
      "features",
      new Uint8Array(features.buffer, features.byteOffset, features.byteLength),
    );
    if (tokens) {
      const t = tokens.data;
      await this.#write("tokens", new Uint8Array(t.buffer, t.byteOffset, t.byteLength));
    }
    await this.#write("rows", enc.encode(rows.map((r) => JSON.stringify(r) + "\n").join("")));
    this.#rowsSinceCommit += rows.length;
  }

  /** Records an image that could not be embedded (written with the next commit). */
  fail(path: string, reason: string): void {
    this.#pendingErrors.push(JSON.stringify({ path, reason }) + "\n");
  }

  /**
   * Makes everything appended durable and records that the run goes on from
   * sample index `next` (the index after the last batch appended).
   */
  async commit(next: number): Promise<void> {
    if (this.#pendingErrors.length) {
      await this.#write("errors", enc.encode(this.#pendingErrors.join("")));
      this.#pendingErrors = [];
    }
    for (const f of Object.values(this.#files)) await f.syncData();
    const c: Committed = {
      ...this.#c,
      rows: this.#c.rows + this.#rowsSinceCommit,
      next,
      bytes: { ...this.#at },
    };
    await writeTextAtomic(join(this.dir, "progress.json"), JSON.stringify(c));
    this.#c = c;
    this.#rowsSinceCommit = 0;
  }

  /** The distinct failure lines committed, in order (a resumed run reports some twice). */
  async failures(): Promise<string[]> {
    const text = await Deno.readTextFile(join(this.dir, FILES.errors));
    return [...new Set(text.split("\n").filter((l) => l.trim() !== ""))].map((l) => l + "\n");
  }

  /**
   * The committed rows as blocks of at most `maxRows`, for the final file.
   * Call after `close`.
   */
  async *blocks(maxRows = 4096): AsyncGenerator<EmbeddingsBlock> {
    const { rows, dim, patches, tokenWidth, labelled, withPatients } = this.#c;
    const tokenRow = patches * tokenWidth;
    const metas: RowMeta[] = (await Deno.readTextFile(join(this.dir, FILES.rows)))
      .split("\n").filter((l) => l !== "").slice(0, rows).map((l) => JSON.parse(l));
    // Splits only when every row has one (eval then uses the ingest's split).
    const withSplits = metas.every((x) => x.split !== undefined && x.key !== undefined);
    const feats = await RandomAccessFile.open(join(this.dir, FILES.features));
    const toks = patches > 0 ? await RandomAccessFile.open(join(this.dir, FILES.tokens)) : null;
    try {
      for (let r0 = 0; r0 < rows; r0 += maxRows) {
        const n = Math.min(maxRows, rows - r0);
        const m = metas.slice(r0, r0 + n);
        yield {
          features: f32(await feats.readAt(r0 * dim * 4, n * dim * 4, "features")),
          paths: m.map((x) => x.path),
          labels: labelled ? m.map((x) => x.label!) : null,
          patients: withPatients ? m.map((x) => x.patient!) : null,
          splits: withSplits ? m.map((x) => x.split!) : null,
          keys: withSplits ? m.map((x) => x.key!) : null,
          patchTokens: toks
            ? f32(await toks.readAt(r0 * tokenRow * 4, n * tokenRow * 4, "patch tokens"))
            : undefined,
        };
      }
    } finally {
      feats.close();
      toks?.close();
    }
  }

  /** Closes the files (the journal stays on disk). */
  close(): void {
    for (const f of Object.values(this.#files)) {
      try {
        f.close();
      } catch { /* already closed */ }
    }
  }

  async #write(k: JournalFile, bytes: Uint8Array): Promise<void> {
    const f = this.#files[k];
    let done = 0;
    while (done < bytes.length) done += await f.write(bytes.subarray(done));
    this.#at[k] += bytes.length;
  }
}

async function readCommitted(dir: string): Promise<Committed | null> {
  try {
    return JSON.parse(await Deno.readTextFile(join(dir, "progress.json")));
  } catch {
    return null; // nothing committed yet
  }
}

/** Whether every file holds at least its committed bytes. */
async function holds(dir: string, c: Committed): Promise<boolean> {
  for (const k of Object.keys(FILES) as JournalFile[]) {
    const size = await Deno.stat(join(dir, FILES[k])).then((s) => s.size, () => 0);
    if (size < c.bytes[k]) return false;
  }
  return true;
}

/** A read's bytes as floats (readAt returns a buffer of its own, at offset 0). */
function f32(bytes: Uint8Array): Float32Array {
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}
