/**
 * Downloads a named checkpoint into the cache, verified, once.
 *
 * The file streams into `NAME.pth.part` while a streamed SHA-256 follows it;
 * a cut connection resumes with an HTTP Range request (guarded by If-Range,
 * so a file that changed on the server starts over), also across runs. Size
 * and hash are checked before the file is renamed into place, so nothing
 * unverified is ever opened as a checkpoint. One process downloads while the
 * others wait on `NAME.pth.lock` (data/lock.ts). The proxy settings are
 * Deno's fetch's own: HTTP_PROXY, HTTPS_PROXY and NO_PROXY (read at start).
 */
import { createHash, type Hash } from "node:crypto";
import { InputError } from "../../data/errors.ts";
import { acquireLock, describeHolder } from "../../data/lock.ts";
import { fmtBytes } from "../../kernels/pool.ts";
import { Progress, type ProgressOptions } from "../progress.ts";
import {
  type CachedWeights,
  cachePaths,
  type CacheRecord,
  defaultCacheDir,
  describeExpectation,
  findCached,
  writeJsonAtomic,
} from "./cache.ts";
import {
  lookupWeights,
  mirrorFileName,
  nearestNames,
  UNPUBLISHED,
  WEIGHTS,
  type WeightsEntry,
  type WeightsSource,
  type WeightsTable,
} from "./registry.ts";

/** What went wrong, for callers that branch on it. */
export type WeightsErrorKind =
  | "offline"
  | "cache-dir"
  | "network"
  | "http"
  | "cut"
  | "size"
  | "hash"
  | "disk-full"
  | "lock-lost";

/** A named checkpoint could not be had; the message says why and what to do. */
export class WeightsError extends Error {
  override name = "WeightsError";
  readonly kind: WeightsErrorKind;
  constructor(kind: WeightsErrorKind, message: string, options?: ErrorOptions) {
    super(message, options);
    this.kind = kind;
  }
}

/** Neither a file nor a known name: bad input (exit code 2), with the nearest names. */
export class WeightsNameError extends InputError {
  override name = "WeightsNameError";
  /** The closest known names, best first (may be empty). */
  readonly suggestions: string[];
  constructor(message: string, suggestions: string[]) {
    super(message);
    this.suggestions = suggestions;
  }
}

/** Options of fetchWeights and resolveWeights. */
export interface FetchWeightsOptions {
  /** Default: defaultCacheDir() ($BLOOM_CACHE_DIR or ~/.cache/bloom/weights). */
  cacheDir?: string;
  /** Use the cache only (so does BLOOM_OFFLINE=1). */
  offline?: boolean;
  /** Base URL of a mirror holding the files under their primary names (default: BLOOM_WEIGHTS_URL). */
  mirror?: string;
  /** The table of names (tests pass their own). */
  table?: WeightsTable;
  /** Status lines (default: stderr). */
  log?: (line: string) => void;
  /** The download's progress line (default: stderr). */
  progress?: ProgressOptions;
  /** Resumes after a cut connection within one call (default 3). */
  retries?: number;
  /** Pause before resuming (default 1000 ms). */
  retryDelayMs?: number;
  /** How a second process waits for the one downloading (data/lock.ts; default: until done). */
  lockWait?: boolean | number;
  /** How often a waiting process looks again (default 250 ms). */
  lockPollMs?: number;
  /** Opens the part file for writing (tests inject a full disk here). */
  openPart?: (path: string, append: boolean) => Promise<Deno.FsFile>;
  /** Environment (default Deno.env.get). */
  env?: (key: string) => string | undefined;
  signal?: AbortSignal;
}

/**
 * The local path for `nameOrPath`: an existing file or folder as given; a
 * known name (see `./bloom weights list`) downloaded, verified and cached on
 * first use. Anything else is a WeightsNameError suggesting the nearest
 * names; a download that fails is a WeightsError saying what to do.
 */
export async function resolveWeights(
  nameOrPath: string,
  opts: FetchWeightsOptions = {},
): Promise<string> {
  try {
    await Deno.stat(nameOrPath);
    return nameOrPath;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const table = opts.table ?? WEIGHTS;
  const hit = lookupWeights(nameOrPath, table);
  if (hit) return (await fetchWeights(hit.name, opts)).path;
  throw unknownName(nameOrPath, table);
}

function unknownName(given: string, table: WeightsTable): WeightsNameError {
  const base = given.split(/[\\/]/).pop() ?? given;
  const near = nearestNames(base, table);
  const looksLikePath = /[\\/]/.test(given) || /\.(pth|bin|pt|safetensors)$/i.test(given);
  const known = `known names: ${Object.keys(table).join(", ")} (./bloom weights list)`;
  const seeAll = "./bloom weights list shows all names";
  const what = looksLikePath
    ? `${given}: no such file`
    : `'${given}' is neither a file nor a known model name`;
  const hint = near.length
    ? `did you mean ${near.join(", ")}?`
    : looksLikePath
    ? "check the path, or give a model name"
    : known;
  return new WeightsNameError(`${what}; ${hint}${near.length ? ` (${seeAll})` : ""}`, near);
}

/** Returns the verified cached file for `name`, downloading it first if needed. */
export async function fetchWeights(
  name: string,
  opts: FetchWeightsOptions = {},
): Promise<CachedWeights> {
  const env = opts.env ?? ((k: string) => Deno.env.get(k));
  const table = opts.table ?? WEIGHTS;
  const hit = lookupWeights(name, table);
  if (!hit) throw unknownName(name, table);
  const { entry } = hit;
  name = hit.name;
  const dir = opts.cacheDir ?? defaultCacheDir(env);
  const log = opts.log ?? ((line: string) => console.error(line));
  const cached = await findCached(dir, name, entry);
  if (cached) return cached;
  const offline = opts.offline || env("BLOOM_OFFLINE") === "1";
  if (offline) {
    throw new WeightsError(
      "offline",
      `${name} is not in the weights cache (${dir}) and offline mode (--offline or ` +
        `BLOOM_OFFLINE=1) forbids downloading. Run './bloom weights fetch ${name}' where there ` +
        `is network and copy ${entry.file} and ${name}.json into ${dir} (or set ` +
        `BLOOM_CACHE_DIR to a shared cache), or pass the checkpoint's path instead`,
    );
  }
  const paths = cachePaths(dir, entry, name);
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new WeightsError(
      "cache-dir",
      `cannot create the weights cache ${dir} (${(e as Error).message}); set BLOOM_CACHE_DIR ` +
        `to a writable folder`,
      { cause: e },
    );
  }
  const lock = await acquireLock(paths.lock, {
    what: `the weights cache entry ${name}`,
    wait: opts.lockWait ?? true,
    pollMs: opts.lockPollMs,
    signal: opts.signal,
    onWait: (h) => log(`${name}: waiting for ${describeHolder(h)}, which is downloading it`),
  });
  try {
    const done = await findCached(dir, name, entry);
    if (done) return done;
    const mirror = opts.mirror ?? env("BLOOM_WEIGHTS_URL");
    const tries: { src: WeightsSource; url: string }[] = mirror
      ? [{ src: entry.sources[0], url: `${mirror.replace(/\/+$/, "")}/${mirrorFileName(entry)}` }]
      : entry.sources.map((src) => ({ src, url: src.url }));
    const failures: WeightsError[] = [];
    for (const t of tries) {
      try {
        const record = await download(name, entry, t.src, t.url, paths, { ...opts, log });
        if (lock.lost) {
          throw new WeightsError(
            "lock-lost",
            `${name}: another process took over the download lock (${paths.lock}) while this ` +
              `one was downloading; run the command again`,
          );
        }
        await writeJsonAtomic(paths.record, record);
        await Deno.rename(paths.part, paths.file);
        await Deno.remove(paths.partInfo).catch(() => {});
        log(`${name}: saved ${paths.file} (${fmtBytes(record.bytes)}, SHA-256 ${record.sha256})`);
        return { name, path: paths.file, record };
      } catch (e) {
        if (!(e instanceof WeightsError)) throw e;
        failures.push(e);
        if (e.kind === "disk-full" || e.kind === "lock-lost" || e.kind === "cut") break;
        if (tries.length > 1 && t !== tries[tries.length - 1]) {
          log(`${name}: ${e.message}\n${name}: trying the next source`);
        }
      }
    }
    throw combine(name, entry, failures, Boolean(mirror));
  } finally {
    await lock.release();
  }
}

function combine(
  name: string,
  entry: WeightsEntry,
  failures: WeightsError[],
  mirror: boolean,
): WeightsError {
  const first = failures[0];
  if (failures.length === 1 && (first.kind === "disk-full" || first.kind === "cut")) return first;
  const lines = failures.map((f) => `  - ${f.message}`);
  const manual = mirror
    ? `check that the mirror (BLOOM_WEIGHTS_URL) holds ${mirrorFileName(entry)}`
    : `download ${entry.sources.map((s) => s.url).join(" or ")} yourself and ` +
      `pass the file's path, or set BLOOM_WEIGHTS_URL to a mirror holding ${mirrorFileName(entry)}`;
  return new WeightsError(
    first.kind,
    `could not download ${name}:\n${lines.join("\n")}\nTo go on: ${manual}`,
  );
}

/** What the part file is a download of; a part from another URL is discarded. */
interface PartInfo {
  url: string;
  etag?: string;
  lastModified?: string;
}

async function readPartInfo(path: string): Promise<PartInfo | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as PartInfo;
  } catch {
    return null;
  }
}

async function fileSize(path: string): Promise<number | null> {
  try {
    return (await Deno.stat(path)).size;
  } catch {
    return null;
  }
}

async function discardPart(paths: ReturnType<typeof cachePaths>): Promise<void> {
  await Deno.remove(paths.part).catch(() => {});
  await Deno.remove(paths.partInfo).catch(() => {});
}

/** Feeds the first `bytes` of a file into `hash` (the part already on disk, when resuming). */
async function hashPrefix(path: string, bytes: number, hash: Hash): Promise<void> {
  const f = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(4 << 20);
    let left = bytes;
    while (left > 0) {
      const n = await f.read(buf.subarray(0, Math.min(buf.length, left)));
      if (n === null) break;
      hash.update(buf.subarray(0, n));
      left -= n;
    }
  } finally {
    f.close();
  }
}

function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

function isDiskFull(e: unknown): boolean {
  const code = (e as { code?: string }).code;
  return code === "ENOSPC" || code === "EDQUOT" || /No space left|os error 28/.test(String(e));
}

/** "bytes 100-199/1000" → {start 100, total 1000}; "bytes * /1000" → {start NaN, total 1000}. */
function contentRange(v: string | null): { start: number; total: number | null } | null {
  const m = v && /^bytes\s+(?:(\d+)-\d+|\*)\/(\d+|\*)$/i.exec(v.trim());
  if (!m) return null;
  return {
    start: m[1] === undefined ? NaN : Number(m[1]),
    total: m[2] === "*" ? null : Number(m[2]),
  };
}

/**
 * Downloads one source into the part file, resuming what is there, and
 * checks size and hash. Returns the record to write; the part stays in
 * place for the caller to rename.
 */
async function download(
  name: string,
  entry: WeightsEntry,
  src: WeightsSource,
  url: string,
  paths: ReturnType<typeof cachePaths>,
  opts: FetchWeightsOptions & { log: (line: string) => void },
): Promise<CacheRecord> {
  const retries = opts.retries ?? 3;
  const delay = opts.retryDelayMs ?? 1000;
  const openPart = opts.openPart ??
    ((path: string, append: boolean) =>
      Deno.open(path, { write: true, create: true, append, truncate: !append }));
  const want = src.bytes === UNPUBLISHED ? null : src.bytes;
  const host = hostOf(url);

  let info = await readPartInfo(paths.partInfo);
  let offset = (info?.url === url ? await fileSize(paths.part) : null) ?? 0;
  if (offset === 0 || info?.url !== url) {
    await discardPart(paths);
    info = { url };
    offset = 0;
  }
  let hash = createHash("sha256");
  if (offset > 0) await hashPrefix(paths.part, offset, hash);
  let total: number | null = want;

  for (let attempt = 0;; attempt++) {
    const headers: Record<string, string> = { "user-agent": "bloom (weights download)" };
    if (offset > 0) {
      headers.range = `bytes=${offset}-`;
      const validator = info.etag && !info.etag.startsWith("W/") ? info.etag : info.lastModified;
      if (validator) headers["if-range"] = validator;
      opts.log(`${name}: resuming ${url} at ${fmtBytes(offset)}`);
    } else {
      opts.log(`${name}: downloading ${url}`);
    }
    let res: Response;
    try {
      res = await fetch(url, { headers, signal: opts.signal, redirect: "follow" });
    } catch (e) {
      if (opts.signal?.aborted) throw e;
      const cause = (e as { cause?: unknown }).cause;
      const detail = cause instanceof Error ? cause.message : (e as Error).message;
      throw new WeightsError(
        "network",
        `cannot reach ${host} (${detail}). No network, or a proxy in the way? Deno's fetch ` +
          `uses HTTPS_PROXY / HTTP_PROXY / NO_PROXY; behind a firewall set BLOOM_WEIGHTS_URL to ` +
          `a mirror`,
        { cause: e },
      );
    }

    if (res.status === 416 && offset > 0) {
      // Nothing past our offset: the part may already be whole.
      const cr = contentRange(res.headers.get("content-range"));
      await res.body?.cancel();
      if (cr?.total === offset) {
        total = offset;
        break;
      }
      opts.log(`${name}: the server refused to resume; starting over`);
      await discardPart(paths);
      offset = 0;
      hash = createHash("sha256");
      info = { url };
      continue;
    }
    if (res.status !== 200 && res.status !== 206) {
      await res.body?.cancel();
      const what = res.status === 404 || res.status === 410
        ? "the file is not there (moved, or missing from the mirror)"
        : res.status >= 500
        ? "a server error; try again later"
        : res.status === 401 || res.status === 403
        ? "access denied (a proxy or firewall rule?)"
        : "an unexpected answer";
      throw new WeightsError(
        "http",
        `${host} answered HTTP ${res.status} ${res.statusText} for ${url}: ${what}`,
      );
    }
    let append = offset > 0;
    if (res.status === 206) {
      const cr = contentRange(res.headers.get("content-range"));
      if (!cr || cr.start !== offset) {
        await res.body?.cancel();
        if (offset === 0) {
          throw new WeightsError(
            "http",
            `${host} answered 206 Partial Content (${res.headers.get("content-range")}) to a ` +
              `request for the whole of ${url}: a broken server or proxy`,
          );
        }
        opts.log(`${name}: the server resumed at the wrong offset; starting over`);
        await discardPart(paths);
        offset = 0;
        hash = createHash("sha256");
        info = { url };
        continue;
      }
      if (cr.total !== null) total = cr.total;
    } else {
      if (offset > 0) {
        opts.log(`${name}: the server sent the whole file (no resume); starting over`);
        offset = 0;
        hash = createHash("sha256");
        append = false;
      }
      const len = res.headers.get("content-length");
      if (len !== null && /^\d+$/.test(len)) total = Number(len);
    }
    if (want !== null && total !== null && total !== want) {
      await res.body?.cancel();
      await discardPart(paths);
      throw new WeightsError(
        "size",
        `${host} offers ${total} bytes for ${url}, but ${name} is ${want} bytes: an altered ` +
          `or different file; nothing was kept`,
      );
    }
    info = {
      url,
      ...(res.headers.get("etag") ? { etag: res.headers.get("etag")! } : {}),
      ...(res.headers.get("last-modified")
        ? { lastModified: res.headers.get("last-modified")! }
        : {}),
    };
    await writeJsonAtomic(paths.partInfo, info);

    const progress = new Progress(total !== null ? total - offset : 0, {
      label: `${name}${offset > 0 ? ` (from ${fmtBytes(offset)})` : ""}`,
      format: fmtBytes,
      ...opts.progress,
    });
    let file: Deno.FsFile;
    try {
      file = await openPart(paths.part, append);
    } catch (e) {
      await res.body?.cancel();
      throw diskError(e, paths.part, total, offset, name);
    }
    let cut: unknown = null;
    try {
      const reader = res.body!.getReader();
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          if (opts.signal?.aborted) throw e;
          cut = e;
          break;
        }
        if (chunk.done) break;
        const bytes = chunk.value;
        if (want !== null && offset + bytes.length > want) {
          await reader.cancel();
          file.close();
          await discardPart(paths);
          throw new WeightsError(
            "size",
            `${url} sent more than the ${want} bytes ${name} has: an altered or different ` +
              `file; nothing was kept`,
          );
        }
        try {
          let at = 0;
          while (at < bytes.length) at += await file.write(bytes.subarray(at));
        } catch (e) {
          await reader.cancel().catch(() => {});
          throw diskError(e, paths.part, total, offset, name);
        }
        hash.update(bytes);
        offset += bytes.length;
        progress.tick(bytes.length);
      }
      await file.syncData();
    } catch (e) {
      try {
        file.close();
      } catch { /* closed */ }
      if (e instanceof WeightsError && e.kind === "disk-full") await discardPart(paths);
      throw e;
    }
    file.close();
    progress.done();
    const short = total !== null && offset < total;
    if (cut === null && !short) break;
    const why = cut !== null
      ? `connection lost (${(cut as Error).message})`
      : "the server closed early";
    if (attempt < retries) {
      opts.log(
        `${name}: ${why} at ${fmtBytes(offset)}${total !== null ? ` of ${fmtBytes(total)}` : ""}`,
      );
      if (delay > 0) await new Promise((r) => setTimeout(r, delay * (attempt + 1)));
      continue;
    }
    throw new WeightsError(
      "cut",
      `${name}: the download from ${host} stopped at ${offset}${
        total !== null ? ` of ${total}` : ""
      } bytes: ${why}. The part is kept (${paths.part}); run the same command again to ` +
        `resume from there`,
      { cause: cut ?? undefined },
    );
  }

  const sha256 = hash.digest("hex");
  if (want !== null && offset !== want) {
    await discardPart(paths);
    throw new WeightsError(
      "size",
      `${name}: downloaded ${offset} bytes from ${url}, expected ${want}; the file was removed. ` +
        `Run again; if it repeats, the file on the server differs from the one bloom knows`,
    );
  }
  if (src.sha256 !== UNPUBLISHED && sha256 !== src.sha256) {
    await discardPart(paths);
    throw new WeightsError(
      "hash",
      `${name}: the downloaded file's SHA-256 is ${sha256}, expected ${src.sha256} ` +
        `(${describeExpectation(src)}; ${src.provenance}). The file was removed: it was ` +
        `altered or damaged in transit, or the publisher replaced it. Run again; if it ` +
        `repeats, download ${src.url} yourself, check it, and pass its path`,
    );
  }
  if (src.sha256 === UNPUBLISHED) {
    opts.log(
      `${name}: no SHA-256 is published for ${src.url}; recorded ${sha256} as found ` +
        `(later checks hold the file to it)`,
    );
  }
  return {
    name,
    file: entry.file,
    url,
    source: src.url,
    bytes: offset,
    sha256,
    hash: src.sha256 === UNPUBLISHED ? "first-use" : "published",
    fetched: new Date().toISOString(),
  };
}

function diskError(
  e: unknown,
  part: string,
  total: number | null,
  offset: number,
  name: string,
): unknown {
  if (!isDiskFull(e)) return e;
  const need = total !== null ? ` (${fmtBytes(total - offset)} still to come)` : "";
  return new WeightsError(
    "disk-full",
    `${name}: the disk holding the weights cache is full: cannot write ${part}${need}. The ` +
      `partial file was removed. Free some space, or set BLOOM_CACHE_DIR to a disk with room`,
    { cause: e },
  );
}
