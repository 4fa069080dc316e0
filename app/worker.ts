/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
/**
 * The page's engine, in a worker so the page stays responsive: it owns the
 * WebGPU device and the model, reads weights with the command line's
 * readers (a dropped File as a ByteSource), decodes cells with the browser's
 * decoders (app/decode.ts) and embeds them with the command line's
 * `embedBatch` (the evaluation transform, then the ViT). Requests run one at
 * a time; `cancel` is answered between batches.
 *
 * Failures are sorted for the page (protocol.ts, fit.ts): a bad image is
 * reported and skipped; out of memory or a limit halves the batch and
 * retries, and says the model does not fit when one image is too much; a
 * lost device ends the job, and the page starts a new engine.
 */
import { blobSource } from "../data/file.ts";
import { loadCheckpoint, type LoadedModel } from "../graph/checkpoint.ts";
import { GpuError } from "../kernels/errors.ts";
import { Gpu } from "../kernels/runtime.ts";
import { embedBatch } from "../pipelines/embed.ts";
import { decodeCell } from "./decode.ts";
import { doesNotFit, endsJob, inHalves, retriedInHalves } from "./fit.ts";
import { type CellJob, failureKind, type FromEngine, type ToEngine } from "./protocol.ts";

interface WorkerScope {
  postMessage(message: FromEngine, transfer?: Transferable[]): void;
  onmessage: ((ev: MessageEvent<ToEngine>) => void) | null;
}
const scope = self as unknown as WorkerScope;
const post = (m: FromEngine, transfer: Transferable[] = []) => scope.postMessage(m, transfer);

let gpu: Gpu | null = null;
/** The `simulate-memory` test hook: more cells than this at once run out of memory. */
let memoryCells = Infinity;

function simulatedMemory(cells: number): void {
  if (cells > memoryCells) {
    throw new GpuError(
      `GPU out-of-memory error (simulated by a test: ${cells} cells at once, over ${memoryCells})`,
    );
  }
}
let model: LoadedModel | null = null;
const cancelled = new Set<number>();
/** Requests run in order, one at a time (the GPU runtime is single-threaded). */
let queue: Promise<void> = Promise.resolve();

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function init(): Promise<void> {
  try {
    gpu = await Gpu.create();
  } catch (e) {
    const none = e instanceof Error && e.name === "NoAdapterError";
    post({ type: "no-gpu", reason: none ? "this browser offers no WebGPU adapter" : message(e) });
    return;
  }
  // SwiftShader calls itself "google"; its architecture says what it is.
  const a = gpu.adapter;
  const name = a.architecture && !a.name.includes(a.architecture)
    ? `${a.name} ${a.architecture}`
    : a.name;
  post({
    type: "ready",
    adapter: {
      describe: gpu.describe().replace(a.name, name),
      name,
      isFallback: gpu.adapter.isFallback,
      maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize,
      maxBufferSize: gpu.limits.maxBufferSize,
      maxComputeWorkgroupStorageSize: gpu.limits.maxComputeWorkgroupStorageSize,
    },
  });
}

async function load(file: Blob, name: string, inputSize: number, heads?: number): Promise<void> {
  if (!gpu) {
    return post({ type: "load-failed", file: name, reason: "no WebGPU device", kind: "other" });
  }
  const t0 = performance.now();
  model?.arena.destroy();
  model = null;
  let m: LoadedModel;
  try {
    m = await loadCheckpoint(gpu, blobSource(file, name), { heads });
  } catch (e) {
    const kind = failureKind(e);
    const reason = kind === "oom"
      ? `the weights do not fit in this adapter's memory (${message(e)})`
      : message(e);
    return post({ type: "load-failed", file: name, reason, kind });
  }
  const params = m.arena.size;
  // One cell through the whole model: compiles the kernels now and shows the
  // model fits this adapter (memory, binding size, workgroup storage) before any
  // real cell depends on it.
  try {
    const blank = new Uint8Array(inputSize * inputSize * 3).fill(255);
    simulatedMemory(1);
    await embedBatch(gpu, m, { pixels: blank, count: 1, size: inputSize }, { inputSize });
  } catch (e) {
    m.arena.destroy();
    return post({
      type: "load-failed",
      file: name,
      kind: failureKind(e),
      reason: doesNotFit({ arch: m.config.arch, params }, gpu.adapter.name, inputSize, e),
    });
  }
  model = m;
  const c = m.config;
  post({
    type: "loaded",
    model: {
      file: name,
      arch: c.arch,
      layout: m.layout,
      params,
      dim: c.dim,
      depth: c.depth,
      heads: c.heads,
      patch: c.patch,
      registers: c.registers,
      posGrid: c.posGrid,
      ffn: c.ffn,
      seconds: (performance.now() - t0) / 1000,
    },
  });
}

interface Decoded {
  cell: CellJob;
  pixels: Uint8Array;
}

async function decodeAll(job: number, cells: CellJob[], size: number): Promise<Decoded[]> {
  const out = await Promise.all(cells.map(async (cell) => {
    try {
      return { cell, pixels: await decodeCell(cell.file, size) };
    } catch (e) {
      post({ type: "bad", job, id: cell.id, path: cell.path, reason: message(e) });
      return null;
    }
  }));
  return out.filter((d): d is Decoded => d !== null);
}

/** Embeds decoded cells, in halves when the GPU refuses them all at once (app/fit.ts). */
function embedDecoded(
  job: number,
  cells: Decoded[],
  size: number,
  posted: Set<number>,
): Promise<number> {
  const S = size;
  return inHalves(cells, async (part) => {
    const pixels = new Uint8Array(part.length * S * S * 3);
    part.forEach((d, i) => pixels.set(d.pixels, i * S * S * 3));
    const t0 = performance.now();
    simulatedMemory(part.length);
    const e = await embedBatch(gpu!, model!, { pixels, count: part.length, size: S }, {
      inputSize: S,
    });
    post({
      type: "rows",
      job,
      ids: part.map((d) => d.cell.id),
      features: e.features,
      dim: e.dim,
      gpuSeconds: (performance.now() - t0) / 1000,
    }, [e.features.buffer]);
    for (const d of part) posted.add(d.cell.id);
  });
}

async function embed(job: number, cells: CellJob[], batch: number, size: number): Promise<void> {
  if (!gpu || !model) {
    post({
      type: "batch-failed",
      job,
      ids: cells.map((c) => c.id),
      reason: "no model is loaded",
      kind: "other",
    });
    return post({ type: "done", job, cancelled: false });
  }
  let bs = batch;
  let at = 0;
  // Decode one batch ahead while the GPU runs the current one.
  let next = decodeAll(job, cells.slice(0, bs), size);
  let taken = Math.min(bs, cells.length);
  while (at < cells.length && !cancelled.has(job)) {
    const decoded = await next;
    at = taken;
    taken = Math.min(at + bs, cells.length);
    next = at < cells.length ? decodeAll(job, cells.slice(at, taken), size) : Promise.resolve([]);
    if (decoded.length === 0) continue;
    // Cells whose rows were sent: a failure later in the batch is not theirs.
    const posted = new Set<number>();
    try {
      bs = Math.min(bs, await embedDecoded(job, decoded, size, posted));
    } catch (e) {
      const ids = decoded.map((d) => d.cell.id).filter((id) => !posted.has(id));
      const kind = failureKind(e);
      const reason = retriedInHalves(kind)
        ? doesNotFit(
          { arch: model.config.arch, params: model.arena.size },
          gpu.adapter.name,
          size,
          e,
        )
        : message(e);
      post({ type: "batch-failed", job, ids, reason, kind });
      // These would recur on every batch; other failures stay with their cells.
      if (endsJob(kind)) break;
    }
  }
  await next.catch(() => {});
  post({ type: "done", job, cancelled: cancelled.has(job) });
  cancelled.delete(job);
}

async function patch(id: number, file: Blob, path: string, size: number): Promise<void> {
  if (!gpu || !model) return post({ type: "patch-failed", id, path, reason: "no model is loaded" });
  try {
    const pixels = await decodeCell(file, size);
    const e = await embedBatch(gpu, model, { pixels, count: 1, size }, {
      inputSize: size,
      patchTokens: true,
    });
    const tokens = e.patchTokens!;
    post({
      type: "patch",
      id,
      tokens,
      patches: e.patches,
      dim: tokens.length / e.patches,
      pixels,
      size,
    }, [tokens.buffer]);
  } catch (e) {
    post({ type: "patch-failed", id, path, reason: message(e) });
  }
}

scope.onmessage = (ev) => {
  const m = ev.data;
  if (m.type === "cancel") {
    cancelled.add(m.job);
    return;
  }
  if (m.type === "simulate-memory") {
    memoryCells = m.cells ?? Infinity;
    return;
  }
  if (m.type === "lose-device") {
    gpu?.device.destroy();
    return;
  }
  const run = (): Promise<void> => {
    switch (m.type) {
      case "init":
        return init();
      case "load":
        return load(m.file, m.name, m.inputSize, m.heads);
      case "embed":
        return embed(m.job, m.cells, m.batch, m.inputSize);
      case "patch":
        return patch(m.id, m.file, m.path, m.inputSize);
    }
  };
  queue = queue.then(run).catch((e) => console.error("bloom engine:", e));
};
