/**
 * The data loader for training and embedding: reads ingested shards (a
 * manifest directory or tar files) or plain image folders/lists (decoded and
 * resized on the fly with the ingest's image code), in order or shuffled with
 * a seeded shuffle buffer, and hands out batches of raw RGB pixels while the
 * next ones are being decoded.
 *
 * Invariants:
 * - Memory is bounded: at most `prefetch` finished batches, one batch being
 *   filled, the decode window (2 × workers + 2 images; their decoding leases
 *   memory from one budget, dataset/decode_budget.ts) and, when shuffling
 *   shards, `shuffleBuffer` encoded samples (at most 256 MiB of them).
 *   Nothing grows with the dataset except the list of file paths of a
 *   folder source.
 * - Unshuffled order is the manifest's shard order and each shard's sample
 *   order (for folders: the layout's sorted order), so embeddings line up
 *   with `manifest.splits`.
 * - The same seed and epoch give the same order, whatever the decode timing.
 * - A sample that fails to decode is skipped and reported, never fatal; so
 *   is a shard that cannot be read (from where it breaks). Only when every
 *   shard opened fails, and none gave a sample, does the loader stop.
 * - Sample indices (`range`, `Batch.indices`) count every sample of the
 *   unshuffled order, failed ones included, so they never depend on what
 *   decoded. A manifest's per-shard `samples` is trusted to skip whole shards
 *   before `range`'s start unopened; a streamed shard that disagrees with it
 *   is an error when `range` is set (the indices would be shifted).
 */
import { join } from "node:path";
import { InputError } from "../data/errors.ts";
import { exists } from "../data/file.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { decodeCell, type Region, setImageThreads, withImageFile } from "./dataset/images.ts";
import { ResizePool } from "./dataset/resize_pool.ts";
import { RESAMPLE_FILTERS, type ResampleFilter } from "./dataset/resample.ts";
import { enumerate, type Layout } from "./dataset/layouts.ts";
import { readManifest } from "./dataset/manifest.ts";
import { orderedMap } from "./dataset/ordered.ts";
import { BoundedQueue } from "./dataset/queue.ts";
import { mixSeed, mulberry32, shuffleInPlace } from "../graph/random.ts";
import { squareCrop } from "./dataset/voc.ts";
import { readShardSamples, type ShardSample } from "./dataset/webdataset.ts";
import {
  dedupeKeys,
  type Enumeration,
  type ItemError,
  keyFromPath,
  type SampleSource,
} from "./dataset/sample.ts";
import { isInside, listDir, realPathOf, walkImages, walkScope } from "./dataset/walk.ts";

/** One batch: B images [B, S, S, 3] RGB bytes, row-major, plus their labels and keys. */
export interface Batch {
  pixels: Uint8Array;
  /** Class index per image, -1 where unlabelled. */
  labels: Int32Array;
  keys: string[];
  /**
   * Each image's index in the loader's unshuffled order (what `range`
   * counts), so a consumer can resume after the last one even when samples
   * failed; -1 when shuffling tar files given without a manifest (their
   * offsets are unknown).
   */
  indices: number[];
  /** The sample's json (shards) or what is known of a file (folders). */
  meta: Record<string, unknown>[];
  /** Images in this batch (the last one may be short). */
  count: number;
  /** Side S of the images. */
  size: number;
}

/** Options of `openLoader`. */
export interface LoaderOptions {
  batchSize: number;
  /** Image side; default: the manifest's size, else 224. Shards of another size are resized. */
  size?: number;
  /**
   * Resize filter for images not already `size`×`size` (default "lanczos",
   * as ingest and training; "bilinear" is torchvision's `Resize`, the
   * evaluation protocol). See `CellOptions.resample`.
   */
  resample?: ResampleFilter;
  /**
   * Only samples [start, end) of the unshuffled order: the ones before
   * `start` are passed over without decoding (whole manifest shards without
   * opening them). `end` beyond the data (or `Infinity`) means "to the end";
   * `start` beyond it is an error. Not allowed with `seed`.
   */
  range?: [number, number];
  /** Manifest splits to read (default: all, in shard order). */
  split?: string | string[];
  /** Shuffle with this seed (default: no shuffle, stable order). */
  seed?: number;
  /** Samples held by the shuffle buffer when reading shards (default 512). */
  shuffleBuffer?: number;
  /** Finished batches kept ready ahead of the consumer (default 2). */
  prefetch?: number;
  /** Images decoded in parallel (default: the number of cores). */
  workers?: number;
  /**
   * Worker threads for the resizes done in JavaScript (bilinear, and Lanczos
   * enlargements; `dataset/resize_pool.ts`), so the thread that drives the GPU
   * does not spend ~3 ms per cell on them; 0: on that thread. Default: one per
   * decode worker, up to the cores, on machines with 4 cores or more; with
   * fewer, the threads' start-up and messaging cost more than they free.
   */
  resizeThreads?: number;
  /** Drop a last, short batch (training) instead of returning it (embedding). */
  dropLast?: boolean;
  /**
   * One rank's share of a data-parallel run: of the sample stream (shuffled
   * or not, failed samples included), rank `index` of `count` takes runs
   * `index, index + count, …` of `batchSize` samples, passing the others over
   * undecoded. The ranks together see every sample once per epoch, and rank
   * r's k-th batch is part r of batch k of one loader of `count·batchSize`.
   */
  shard?: { index: number; count: number };
  /** Layout of a folder/list source (default: inferred). */
  layout?: Layout;
  /** VOC crop margin for a `voc` folder source, as in the ingest (default 0.1). */
  margin?: number;
  /** Folder sources: follow symbolic links out of the folder too (default: refused, reported). */
  followLinks?: boolean;
  /** Called for every sample that cannot be used (default: a warning on stderr). */
  onError?: (where: string, reason: string) => void;
}

/** Counters a loader keeps, for logs and for tests of its bounds. */
export interface LoaderStats {
  /** Samples decoded so far (this epoch). */
  decoded: number;
  /** Samples skipped because they failed. */
  failed: number;
  /** Samples read from shards (before decoding). */
  shardSamples: number;
  /** Shards that could not be read to their end (skipped from there, reported). */
  failedShards: number;
  /** Batches handed to the consumer. */
  delivered: number;
  /** Most finished batches waiting at once. */
  maxQueuedBatches: number;
  /** Most samples in the decode window at once. */
  maxDecodeWindow: number;
}

/** A sample before decoding: encoded bytes (shards) or a path (folders). */
interface RawSample {
  key: string;
  /** Index in the unshuffled order (-1: unknown, see `Batch.indices`). */
  index: number;
  label: number;
  meta: Record<string, unknown>;
  bytes?: Uint8Array;
  path?: string;
  crop?: Region;
  /** Where to report a failure. */
  where: string;
}

/** Where samples come from. */
type Source =
  | {
    kind: "shards";
    shards: string[];
    /** Samples per shard (from the manifest), else null. */
    counts: number[] | null;
    classes: string[];
    size: number | null;
    total: number | null;
  }
  | { kind: "files"; samples: RawSample[]; classes: string[] };

const IMAGE_MEMBERS = ["png", "jpg", "jpeg", "tif", "tiff", "bmp"];

/**
 * Encoded bytes the shuffle buffer holds at most (256 MiB), whatever
 * `shuffleBuffer` says: 512 cells of 50 KB are 25 MB, but a shard of
 * large members must not multiply into gigabytes.
 */
const SHUFFLE_BUFFER_BYTES = 256 << 20;

async function isDir(p: string): Promise<boolean> {
  try {
    return (await Deno.stat(p)).isDirectory;
  } catch {
    return false;
  }
}

/**
 * Enumerates a plain source: a folder with class subfolders (imagefolder), a
 * flat folder of images (unlabelled), a .csv, or a list file; or the given
 * layout.
 */
async function enumerateFiles(
  p: string,
  layout?: Layout,
  followLinks?: boolean,
): Promise<Enumeration> {
  const opts = { followLinks };
  if (layout) return await enumerate(layout, p, opts);
  if (p.toLowerCase().endsWith(".csv")) return await enumerate("csv", p, opts);
  if (!(await isDir(p))) return await enumerate("list", p, opts);
  const errors: ItemError[] = [];
  const scope = await walkScope(p, errors, opts);
  const { dirs } = await listDir(p, { ...scope, errors: [] }); // the walk reports them
  if (dirs.length > 0) return await enumerate("imagefolder", p, opts);
  const samples: SampleSource[] = (await walkImages(p, "", scope)).map((f) => ({
    key: keyFromPath(f.rel),
    path: f.path,
    rel: f.rel,
    label: null,
  }));
  return { samples: dedupeKeys(samples, errors), classes: [], errors };
}

/** A path a command writes (`--out`), and its flag, for `checkSource`. */
export interface OutputPath {
  path: string;
  flag: string;
}

/**
 * Checks that `source` names something the loader can open, without reading
 * an image: the paths exist, several sources are all .tar shards, a folder
 * with shards has its manifest.json (a finished ingest). Commands call it
 * before they load weights or start the GPU; `openLoader` calls it too.
 * `what` starts the message (the flag, e.g. "--input").
 *
 * With `output`, a folder source that is walked (not a finished ingest) may
 * not hold the output: the run's own files there (a `.partial` folder, a
 * run directory) would be walked as input by its rerun or `--resume`, a
 * folder of them even taken for a class, or turning a flat folder into
 * class folders whose images are then refused. Refused, naming both flags.
 */
export async function checkSource(
  source: string | string[],
  what = "openLoader:",
  output?: OutputPath,
): Promise<void> {
  const paths = Array.isArray(source) ? source : [source];
  if (paths.length === 0) throw new InputError(`${what} no source given`);
  if (paths.every((p) => p.endsWith(".tar"))) {
    for (const p of paths) {
      if (!(await exists(p))) throw new InputError(`${what} shard ${p} does not exist`);
    }
    return;
  }
  if (paths.length !== 1) {
    throw new InputError(
      `${what} several sources must all be .tar shards; pass one folder or list`,
    );
  }
  const p = paths[0];
  if (await isDir(p)) {
    if (await exists(join(p, "manifest.json"))) return;
    for await (const e of Deno.readDir(p)) {
      if (e.isFile && /\.tar(\.tmp)?$/.test(e.name)) {
        throw new InputError(
          `${what} ${p} holds shards but no manifest.json, so its ingest did not finish; ` +
            `rerun the same deno task ingest command to complete it, or pass the .tar files`,
        );
      }
    }
    if (output && isInside(await realPathOf(output.path), await Deno.realPath(p))) {
      throw new InputError(
        `${output.flag} ${output.path} is inside ${what} ${p}: the run's own files would be ` +
          `read back as images by a rerun or --resume (its folders taken for classes); ` +
          `choose an ${output.flag} outside ${p}`,
      );
    }
  } else if (!(await exists(p))) {
    throw new InputError(`${what} ${p} does not exist`);
  }
}

/** Resolves what `source` names: a manifest dir, tar files, a folder, a CSV or a list. */
async function resolveSource(source: string | string[], opts: LoaderOptions): Promise<Source> {
  await checkSource(source);
  const paths = Array.isArray(source) ? source : [source];
  if (paths.every((p) => p.endsWith(".tar"))) {
    return { kind: "shards", shards: paths, counts: null, classes: [], size: null, total: null };
  }
  const p = paths[0];
  if ((await isDir(p)) && (await exists(join(p, "manifest.json")))) {
    const m = await readManifest(p);
    const want = opts.split === undefined ? null : [opts.split].flat();
    if (want) {
      const unknown = want.filter((s) => !Object.hasOwn(m.counts, s));
      if (unknown.length > 0) {
        throw new InputError(
          `openLoader: split ${unknown.join(",")} is not in ${p}/manifest.json ` +
            `(it has ${Object.keys(m.counts).join(", ")})`,
        );
      }
    }
    const shards = m.shards.filter((s) => !want || want.includes(s.split));
    return {
      kind: "shards",
      shards: shards.map((s) => join(p, s.name)),
      counts: shards.map((s) => s.samples),
      classes: m.classes,
      size: m.size,
      total: shards.reduce((n, s) => n + s.samples, 0),
    };
  }
  const en = await enumerateFiles(p, opts.layout, opts.followLinks);
  for (const e of en.errors) (opts.onError ?? warn)(e.path, e.reason);
  const samples: RawSample[] = en.samples.map((s, index) => ({
    key: s.key,
    index,
    label: s.label === null ? -1 : en.classes.indexOf(s.label),
    meta: { source: s.rel, label: s.label, ...(s.patient ? { patient: s.patient } : {}) },
    path: s.path,
    crop: s.box ? squareCrop(s.box, opts.margin ?? 0.1) : undefined,
    where: s.path,
  }));
  if (samples.length === 0) throw new InputError(`openLoader: no images found in ${p}`);
  return { kind: "files", samples, classes: en.classes };
}

function warn(where: string, reason: string): void {
  console.warn(`loader: skipping ${where}: ${reason}`);
}

const dec = new TextDecoder();

/** How `shardSamples` walks the shards. */
interface ShardWalk {
  /** Shard paths in unshuffled order. */
  shards: string[];
  /** Samples per shard (manifest), or null when unknown. */
  counts: number[] | null;
  /** Visiting order: indices into `shards` (shuffled or 0, 1, …). */
  order: number[];
  /** Sample index range [start, end) of the unshuffled order, or null for all. */
  range: [number, number] | null;
  shuffle: { rand: () => number; buffer: number } | null;
  onError: (where: string, reason: string) => void;
  /** Counts shards that could not be read to their end. */
  stats: LoaderStats;
}

/**
 * The samples of one shard; a shard that cannot be read (damaged, truncated,
 * unreadable) ends early and `onFail` gets the reason instead of the loop
 * stopping.
 */
async function* tolerantShard(
  shard: string,
  onFail: (e: unknown) => void,
): AsyncGenerator<ShardSample> {
  try {
    yield* readShardSamples(shard);
  } catch (e) {
    onFail(e);
  }
}

/**
 * Streams raw samples of shards in `order`, through a seeded shuffle buffer.
 * With a range (never shuffled) samples before its start are passed over as
 * tar members, without decoding, and whole shards before it (counts known)
 * are not opened; streaming stops at its end.
 */
async function* shardSamples(w: ShardWalk): AsyncGenerator<RawSample> {
  const { shards, counts, range, shuffle, onError, stats } = w;
  let opened = 0;
  let firstFailure = "";
  const start = range?.[0] ?? 0;
  const end = range?.[1] ?? Infinity;
  const offsets = counts && prefixSums(counts);
  const buf: RawSample[] = [];
  let bufBytes = 0;
  let next = 0; // index of the next sample in the unshuffled order (unshuffled walks)
  for (const i of w.order) {
    if (next >= end) break;
    const shard = shards[i];
    if (counts && next + counts[i] <= start) {
      next += counts[i]; // wholly before the range: not opened
      continue;
    }
    let inShard = 0;
    let stopped = false;
    let broken = false;
    opened++;
    const onFail = (e: unknown) => {
      broken = true;
      stats.failedShards++;
      const msg = e instanceof Error ? e.message : String(e);
      const why = msg.startsWith(`${shard}: `) ? msg.slice(shard.length + 2) : msg;
      firstFailure ||= `${shard}: ${why}`;
      onError(
        shard,
        `shard skipped after ${inShard} samples, the rest unreadable: ${why.replace(/\s+/g, " ")}`,
      );
    };
    for await (const s of tolerantShard(shard, onFail)) {
      const index = shuffle ? (offsets ? offsets[i] + inShard : -1) : next++;
      inShard++;
      stats.shardSamples++;
      if (range) {
        if (index < start) continue; // before the range: read past, never decoded
        if (index >= end) {
          stopped = true;
          break;
        }
      }
      const ext = IMAGE_MEMBERS.find((e) => s.files.has(e));
      const where = `${shard}:${s.key}`;
      if (!ext) {
        onError(where, `sample has no image member (has ${[...s.files.keys()].join(", ")})`);
        continue;
      }
      let meta: Record<string, unknown> = {};
      const json = s.files.get("json");
      if (json) {
        let parsed: unknown;
        try {
          parsed = JSON.parse(dec.decode(json));
        } catch {
          onError(where, "sample json does not parse; kept without it");
        }
        // Consumers read fields of it: only an object is metadata (null, 5, [] are not).
        if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
          meta = parsed as Record<string, unknown>;
        } else if (parsed !== undefined) {
          onError(where, "sample json is not an object; kept without it");
        }
      }
      const clsBytes = s.files.get("cls");
      const label = clsBytes ? parseInt(dec.decode(clsBytes), 10) : -1;
      const raw: RawSample = {
        key: s.key,
        index,
        label: Number.isFinite(label) ? label : -1,
        meta,
        bytes: s.files.get(ext)!,
        where,
      };
      if (!shuffle) {
        yield raw;
        continue;
      }
      // Shuffle buffer: keep `buffer` samples (and at most SHUFFLE_BUFFER_BYTES of
      // them), emit a random one for each new one.
      if (buf.length < shuffle.buffer && bufBytes < SHUFFLE_BUFFER_BYTES) {
        buf.push(raw);
        bufBytes += raw.bytes!.length;
        continue;
      }
      const j = Math.floor(shuffle.rand() * buf.length);
      const out = buf[j];
      buf[j] = raw;
      bufBytes += raw.bytes!.length - out.bytes!.length;
      yield out;
    }
    if (broken) {
      // The shard's remaining indices are passed over, so later shards keep theirs.
      if (!shuffle && offsets) next = offsets[i] + counts![i];
      continue;
    }
    if (range && counts && !stopped && inShard !== counts[i]) {
      throw new InputError(
        `loader: shard ${shard} holds ${inShard} samples but manifest.json says ${counts[i]}, ` +
          `so sample indices (range) would be shifted; re-run the ingest of this dataset`,
      );
    }
  }
  if (opened > 0 && stats.failedShards === opened && stats.shardSamples === 0) {
    throw new InputError(
      `loader: every shard failed (${opened} of ${opened}), so there is nothing to read; ` +
        `first: ${firstFailure}. Re-run the ingest that wrote them`,
    );
  }
  if (range && next < start) {
    throw new RangeError(
      `loader: range start ${start} is beyond the ${next} samples of ${shards.length} shard(s)`,
    );
  }
  if (shuffle) {
    shuffleInPlace(buf, shuffle.rand);
    yield* buf;
  }
}

/** [0, c0, c0 + c1, …]: the index of each shard's first sample. */
function prefixSums(counts: number[]): number[] {
  const out: number[] = [];
  let n = 0;
  for (const c of counts) {
    out.push(n);
    n += c;
  }
  return out;
}

/** A prepared data source; iterate `batches(epoch)` once per epoch. */
export class Loader {
  readonly classes: string[];
  readonly size: number;
  /** Samples per epoch when known up front (before decode failures), else null. */
  readonly length: number | null;
  stats: LoaderStats = emptyStats();
  #source: Source;
  #opts: LoaderOptions;

  /** Use `openLoader`. */
  constructor(source: Source, opts: LoaderOptions) {
    this.#source = source;
    this.#opts = opts;
    this.classes = source.classes;
    this.size = opts.size ?? (source.kind === "shards" ? source.size : null) ?? 224;
    const total = source.kind === "files" ? source.samples.length : source.total;
    const r = opts.range;
    const all = total === null ? null : r ? Math.min(r[1], total) - r[0] : total;
    this.length = all === null || !opts.shard ? all : shareOf(all, opts.batchSize, opts.shard);
  }

  /**
   * Batches of one epoch. The epoch number varies the shuffle (same seed and
   * epoch, same order). Decoding runs ahead of the consumer by at most
   * `prefetch` batches; breaking out of the loop stops it.
   */
  async *batches(epoch = 0): AsyncGenerator<Batch> {
    const o = this.#opts;
    const B = o.batchSize;
    const S = this.size;
    const workers = o.workers ?? navigator.hardwareConcurrency ?? 1;
    const onError = o.onError ?? warn;
    const stats: LoaderStats = (this.stats = emptyStats());
    const rand = o.seed === undefined ? null : mulberry32(mixSeed(o.seed, epoch));

    let raw: AsyncIterable<RawSample> | Iterable<RawSample>;
    const src = this.#source;
    if (src.kind === "files") {
      if (rand) raw = shuffleInPlace([...src.samples], rand);
      else raw = o.range ? src.samples.slice(o.range[0], o.range[1]) : src.samples;
    } else {
      const order = [...src.shards.keys()];
      raw = shardSamples({
        shards: src.shards,
        counts: src.counts,
        order: rand ? shuffleInPlace(order, rand) : order,
        range: o.range ?? null,
        shuffle: rand ? { rand, buffer: Math.max(1, o.shuffleBuffer ?? 512) } : null,
        onError,
        stats,
      });
    }
    if (o.shard) raw = takeShard(raw, B, o.shard);
    // Resizes (JavaScript) on worker threads, so this thread stays free to drive the GPU.
    const cores = navigator.hardwareConcurrency || 1;
    const threads = o.resizeThreads ?? (cores >= 4 ? Math.min(workers, cores) : 0);
    const resizer = threads > 0 ? new ResizePool(threads) : null;
    const decoded = orderedMap(raw, async (s) => {
      try {
        const cellOpts = {
          size: S,
          crop: s.crop,
          pad: "edge" as const,
          resample: o.resample,
          resize: resizer ? resizer.resize.bind(resizer) : undefined,
        };
        const cell = s.bytes
          ? await decodeCell(s.bytes, cellOpts)
          : await withImageFile(s.path!, (bytes) => decodeCell(bytes, cellOpts));
        const meta = s.bytes
          ? s.meta
          : { ...s.meta, width: cell.info.width, height: cell.info.height };
        return { s, pixels: cell.pixels, meta, error: null };
      } catch (e) {
        return { s, pixels: null, meta: s.meta, error: (e as Error).message };
      }
    }, {
      concurrency: workers,
      window: 2 * workers + 2,
      onHeld: (n) => (stats.maxDecodeWindow = Math.max(stats.maxDecodeWindow, n)),
    });

    const queue = new BoundedQueue<Batch>(Math.max(1, o.prefetch ?? 2));
    const prevThreads = setImageThreads(workers > 1 ? 1 : 0);
    const producer = (async () => {
      let cur = newBatch(B, S);
      try {
        for await (const d of decoded) {
          if (d.error !== null) {
            stats.failed++;
            onError(d.s.where, d.error);
            continue;
          }
          stats.decoded++;
          cur.pixels.set(d.pixels!, cur.count * S * S * 3);
          cur.labels[cur.count] = d.s.label;
          cur.keys.push(d.s.key);
          cur.indices.push(d.s.index);
          cur.meta.push(d.meta);
          cur.count++;
          if (cur.count === B) {
            if (!(await queue.push(cur))) return;
            stats.maxQueuedBatches = Math.max(stats.maxQueuedBatches, queue.maxHeld);
            cur = newBatch(B, S);
          }
        }
        if (cur.count > 0 && !o.dropLast) {
          await queue.push(trim(cur, S));
          stats.maxQueuedBatches = Math.max(stats.maxQueuedBatches, queue.maxHeld);
        }
        queue.close();
      } catch (e) {
        queue.fail(e);
      }
    })();

    try {
      while (true) {
        const b = await queue.pop();
        if (b === undefined) break;
        stats.delivered++;
        yield b;
      }
    } finally {
      queue.cancel();
      await producer;
      resizer?.close();
      setImageThreads(prevThreads);
    }
  }
}

/** Samples of `total` that runs of `B` dealt round-robin give to `shard.index`. */
function shareOf(total: number, B: number, shard: { index: number; count: number }): number {
  const rounds = Math.floor(total / (B * shard.count));
  const rest = total - rounds * B * shard.count;
  return rounds * B + Math.min(B, Math.max(0, rest - shard.index * B));
}

/** The samples of `raw` in this shard's runs (see LoaderOptions.shard). */
async function* takeShard(
  raw: AsyncIterable<RawSample> | Iterable<RawSample>,
  B: number,
  shard: { index: number; count: number },
): AsyncGenerator<RawSample> {
  let at = 0;
  for await (const s of raw) {
    if (Math.floor(at++ / B) % shard.count === shard.index) yield s;
  }
}

function emptyStats(): LoaderStats {
  return {
    decoded: 0,
    failed: 0,
    shardSamples: 0,
    failedShards: 0,
    delivered: 0,
    maxQueuedBatches: 0,
    maxDecodeWindow: 0,
  };
}

function newBatch(B: number, S: number): Batch {
  return {
    pixels: new Uint8Array(B * S * S * 3),
    labels: new Int32Array(B),
    keys: [],
    indices: [],
    meta: [],
    count: 0,
    size: S,
  };
}

/** A short last batch, its arrays cut to its count. */
function trim(b: Batch, S: number): Batch {
  return {
    ...b,
    pixels: b.pixels.slice(0, b.count * S * S * 3),
    labels: b.labels.slice(0, b.count),
  };
}

/**
 * Opens a loader over `source`: a directory with manifest.json (shards of
 * `opts.split`), one or more `.tar` shards, an image folder (class
 * subfolders), a `.csv` (`Image Path,Label`) or a text list of paths.
 */
export async function openLoader(source: string | string[], opts: LoaderOptions): Promise<Loader> {
  if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) {
    throw new RangeError(`openLoader: batchSize must be a positive integer, got ${opts.batchSize}`);
  }
  if (opts.size !== undefined && (!Number.isInteger(opts.size) || opts.size < 1)) {
    throw new RangeError(`openLoader: size must be a positive integer, got ${opts.size}`);
  }
  if (opts.prefetch !== undefined && !(Number.isInteger(opts.prefetch) && opts.prefetch >= 1)) {
    throw new RangeError(`openLoader: prefetch must be an integer ≥ 1, got ${opts.prefetch}`);
  }
  const rt = opts.resizeThreads;
  if (rt !== undefined && !(Number.isInteger(rt) && rt >= 0)) {
    throw new RangeError(`openLoader: resizeThreads must be an integer ≥ 0, got ${rt}`);
  }
  if (opts.resample !== undefined && !RESAMPLE_FILTERS.includes(opts.resample)) {
    throw new RangeError(
      `openLoader: resample must be ${RESAMPLE_FILTERS.map((f) => `"${f}"`).join(" or ")}, ` +
        `got ${JSON.stringify(opts.resample)}`,
    );
  }
  if (opts.range !== undefined) checkRange(opts.range, opts.seed);
  const sh = opts.shard;
  if (
    sh && !(Number.isInteger(sh.count) && sh.count >= 1 && Number.isInteger(sh.index) &&
      sh.index >= 0 && sh.index < sh.count)
  ) {
    throw new RangeError(`openLoader: shard ${JSON.stringify(sh)} needs 0 ≤ index < count`);
  }
  const src = await resolveSource(source, opts);
  const total = src.kind === "files" ? src.samples.length : src.total;
  if (opts.range && total !== null && opts.range[0] > total) {
    throw new RangeError(
      `openLoader: range start ${opts.range[0]} is beyond the ${total} samples of ` +
        `${[source].flat().join(", ")}${opts.split === undefined ? "" : ` (split ${opts.split})`}`,
    );
  }
  return new Loader(src, opts);
}

/** Validates `range`: integers, 0 ≤ start ≤ end (end may be Infinity), and no shuffling. */
function checkRange(range: unknown, seed: number | undefined): void {
  const show = Array.isArray(range)
    ? `[${range.map(String).join(", ")})`
    : JSON.stringify(range) ?? String(range);
  if (!Array.isArray(range) || range.length !== 2) {
    throw new RangeError(`openLoader: range must be [start, end), got ${show}`);
  }
  const [start, end] = range;
  if (!Number.isInteger(start) || start < 0) {
    throw new RangeError(`openLoader: range start must be an integer ≥ 0, got ${show}`);
  }
  if (!(Number.isInteger(end) || end === Infinity) || end < start) {
    throw new RangeError(
      `openLoader: range end must be an integer ≥ start (or Infinity: to the end), got ${show}`,
    );
  }
  if (seed !== undefined) {
    throw new Error(
      `openLoader: range ${show} counts samples in the unshuffled order, so it cannot be ` +
        `combined with seed ${seed} (shuffling); drop one of them`,
    );
  }
}

/**
 * Uploads a batch's pixels to the GPU as packed bytes (`gpu.uploadBytes`):
 * a u32 tensor of ceil(B·S·S·3 / 4) words, byte i of the batch at
 * `(w[i >> 2] >> (8 * (i & 3))) & 255`. The caller owns (and releases) it.
 */
export function uploadBatch(gpu: Gpu, batch: Batch): GpuTensor {
  return gpu.uploadBytes(batch.pixels, `batch ${batch.count}x${batch.size}`);
}
