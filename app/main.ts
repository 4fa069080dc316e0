/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
/**
 * bloom's page: weights and cells go in, embeddings, predictions, a
 * differential count, a UMAP and the patch-token view come out, all on this
 * computer. The engine worker (app/worker.ts) runs the model; this module
 * keeps every result, runs the classification and maps (eval/, app/classify.ts)
 * and draws (app/views.ts).
 *
 * Robustness: a file that is no image, or a corrupt one, or a folder that
 * cannot be read, is named with the reason and skipped; weights that cannot
 * be read or do not fit are named with the reason, and the page goes on with
 * the weights it had; out of GPU memory halves the batch (app/fit.ts), and
 * cells that do not fit even one at a time are named; a lost device restarts
 * the engine, reloads the weights and goes on with the cells not yet
 * embedded. Nothing already computed is thrown away except by the user (new
 * weights, Clear).
 */
import { readEmbeddings } from "../data/embeddings_file.ts";
import { blobSource } from "../data/file.ts";
import {
  differentialCount,
  differentialCsv,
  type DifferentialTable,
} from "../eval/differential.ts";
import {
  describeEmbeddingModel,
  embeddingDifferences,
  type EmbeddingModel,
  embeddingModelFromMeta,
} from "../eval/head_file.ts";
import { matrix } from "../eval/matrix.ts";
import { patchPcaColours } from "../eval/patch_pca.ts";
import { Probe } from "../eval/probe.ts";
import { scatterSvg, umapEmbedding } from "../eval/umap.ts";
import { type CellSource, type FolderRule, placeCell, sortDropped } from "./cells.ts";
import { knnPredict, type Predictions, probePredict, type Reference } from "./classify.ts";
import { Engine } from "./engine_client.ts";
import { embeddingsCsv, embeddingsSafetensors, type ExportRows, predictionsCsv } from "./export.ts";
import { download, droppedFiles, inputFiles, type PickedFile } from "./files.ts";
import type { GalleryView } from "./gallery.ts";
import type { AdapterInfo, FailureKind, ModelInfo } from "./protocol.ts";
import { canvasPng, renderDifferential, renderGallery, renderPca, svgToPng } from "./views.ts";

/** One cell on the page and everything known about it. */
interface Cell extends CellSource {
  id: number;
  file: File;
  url: string;
  features: Float32Array | null;
  error: string | null;
  /** Sent to the engine and not answered yet. */
  pending: boolean;
  predicted: string | null;
  confidence: number | null;
}

interface Job {
  id: number;
  total: number;
  done: number;
  embedded: number;
  started: number;
  lost: boolean;
  /** Why the engine gave up on the job's other cells (out of memory, a limit), if it did. */
  stopped: string | null;
}

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const num = (id: string) => Number($<HTMLInputElement>(id).value);

const state = {
  engine: null as Engine | null,
  adapter: null as AdapterInfo | null,
  weights: null as File | null,
  model: null as ModelInfo | null,
  /** Input side and heads the model was loaded for. */
  loadedFor: { size: 0, heads: 0 },
  cells: [] as Cell[],
  nextId: 1,
  job: null as Job | null,
  restarts: 0,
  reference: null as { name: string; ref: Reference; model: EmbeddingModel } | null,
  probe: null as { name: string; probe: Probe } | null,
  predictions: null as Predictions | null,
  differential: null as DifferentialTable | null,
  umap: null as { ids: number[]; points: Float64Array; svg: string } | null,
  pca: null as { id: number; path: string } | null,
  messages: [] as { kind: "error" | "warn" | "info"; text: string }[],
  /** The last embedding job: cells embedded and its wall time (the benchmark reads it). */
  lastJob: null as { cells: number; seconds: number } | null,
  gallery: {
    sort: "path",
    type: "",
    text: "",
    limit: 300,
    selected: null,
  } as GalleryView,
};

// ------------------------------------------------------------------ messages

function say(kind: "error" | "warn" | "info", text: string): void {
  state.messages.push({ kind, text });
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  $("messages").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function setFlag(name: string, value: string): void {
  document.body.dataset[name] = value;
}

// -------------------------------------------------------------------- engine

function engineUrl(): URL {
  return new URL("./worker.js", import.meta.url);
}

async function startEngine(): Promise<boolean> {
  state.engine?.terminate();
  const engine = new Engine(engineUrl());
  state.engine = engine;
  setFlag("engine", "starting");
  const r = await engine.init();
  if ("error" in r) {
    $("adapter").textContent = `No WebGPU: ${r.error}. Open the page in a browser with WebGPU ` +
      `(Chrome or Edge 113+, Firefox 141+, Safari 26) on a computer with a GPU driver, or use ` +
      `bloom from the command line.`;
    setFlag("engine", "no-gpu");
    return false;
  }
  state.adapter = r.adapter;
  $("adapter").textContent = `WebGPU adapter: ${r.adapter.describe}`;
  setFlag("engine", "ready");
  return true;
}

// ------------------------------------------------------------------- weights

function wantedHeads(): number {
  const v = $<HTMLInputElement>("heads").value.trim();
  return v === "" ? 0 : Number(v);
}

function inputSize(): number {
  return num("input-size");
}

function describeModel(m: ModelInfo): string {
  const params = m.params >= 1e6 ? `${(m.params / 1e6).toFixed(1)} M` : `${m.params}`;
  return `${m.file}: ${m.arch} (${m.layout} layout) · ${params} parameters · ` +
    `dim ${m.dim}, depth ${m.depth}, ${m.heads} heads, patch ${m.patch}` +
    `${m.registers ? `, ${m.registers} registers` : ""}, ${m.ffn.toUpperCase()} · ` +
    `loaded and checked in ${m.seconds.toFixed(1)} s`;
}

async function loadWeights(file: File): Promise<boolean> {
  if (!state.engine || !state.adapter) {
    say("error", `${file.name}: no WebGPU device to load it on`);
    return false;
  }
  const size = inputSize();
  if (!Number.isInteger(size) || size < 14) {
    say("error", `input side ${size} px: give a whole number of pixels, a multiple of the patch`);
    return false;
  }
  stopJob();
  setFlag("model", "loading");
  $("model-info").textContent = `Reading ${file.name}…`;
  const heads = wantedHeads();
  const r = await state.engine.load(file, file.name, size, heads || undefined);
  if ("error" in r) {
    say("error", r.error);
    await restoreModel(file, size, heads);
    setFlag("model", "failed");
    return false;
  }
  const changed = state.weights !== file || state.loadedFor.size !== size ||
    state.loadedFor.heads !== heads;
  state.weights = file;
  state.model = r.model;
  state.loadedFor = { size, heads };
  $("model-info").textContent = describeModel(r.model);
  setFlag("model", "loaded");
  if (changed) forgetEmbeddings();
  return true;
}

/**
 * After weights `failed` (at `size`, `heads`) could not be used: the engine let go of the model
 * before (to make room), so the one the page's embeddings came from is
 * loaded again and the session goes on with it.
 */
async function restoreModel(failed: File, size: number, heads: number): Promise<void> {
  const prev = state.model && state.weights ? { file: state.weights, ...state.loadedFor } : null;
  state.model = null;
  $("model-info").textContent = `Could not use ${failed.name}.`;
  const same = prev?.file === failed && prev.size === size && prev.heads === heads;
  if (!prev || same || !state.engine) return;
  $<HTMLInputElement>("input-size").value = String(prev.size);
  $<HTMLInputElement>("heads").value = prev.heads ? String(prev.heads) : "";
  const back = await state.engine.load(
    prev.file,
    prev.file.name,
    prev.size,
    prev.heads || undefined,
  );
  if ("error" in back) {
    say("error", `${prev.file.name} could not be loaded again: ${back.error}`);
    return;
  }
  state.model = back.model;
  $("model-info").textContent = describeModel(back.model);
  say("info", `${failed.name} is not in use; the page goes on with ${prev.file.name}`);
}

/** New weights or input side: earlier embeddings belong to another model. */
function forgetEmbeddings(): void {
  let had = 0;
  for (const c of state.cells) {
    if (c.features) had++;
    c.features = null;
    c.predicted = null;
    c.confidence = null;
    if (c.error?.startsWith("GPU:")) c.error = null;
  }
  if (had) say("info", `${had} embeddings of the previous model were set aside; embedding again`);
  state.predictions = null;
  state.umap = null;
  state.differential = null;
  state.pca = null;
  render();
}

/** Restarts a dead engine and reloads the weights; false when that fails. */
async function recover(): Promise<boolean> {
  if (state.restarts >= 3) {
    say("error", "the GPU device was lost three times; stopping (the results so far are kept)");
    return false;
  }
  state.restarts++;
  say("warn", "restarting the GPU engine and reloading the weights…");
  if (!(await startEngine()) || !state.weights) return false;
  return await loadWeights(state.weights);
}

// --------------------------------------------------------------------- cells

function addFiles(files: PickedFile[]): void {
  const rule = $<HTMLSelectElement>("folder-rule").value as FolderRule;
  const known = new Set(state.cells.map((c) => c.path));
  const fresh = files.filter((f) => !known.has(f.path));
  if (fresh.length < files.length) {
    say("info", `${files.length - fresh.length} files were already on the page`);
  }
  const byPath = new Map(fresh.map((f) => [f.path, f.file]));
  const { cells, refused } = sortDropped(fresh.map((f) => f.path), rule);
  for (const r of refused) say("warn", `${r.path}: skipped, ${r.reason}`);
  for (const src of cells) {
    const file = byPath.get(src.path)!;
    state.cells.push({
      ...src,
      id: state.nextId++,
      file,
      url: URL.createObjectURL(file),
      features: null,
      error: null,
      pending: false,
      predicted: null,
      confidence: null,
    });
  }
  setFlag("analysis", "pending");
  render();
  void embedPending();
}

function regroup(): void {
  const rule = $<HTMLSelectElement>("folder-rule").value as FolderRule;
  for (const c of state.cells) Object.assign(c, placeCell(c.path, rule));
  analyse(false);
}

function summariseCells(): string {
  const n = state.cells.length;
  if (n === 0) return "No cells yet.";
  const samples = new Set(state.cells.map((c) => c.sample)).size;
  const labels = new Set(state.cells.flatMap((c) => (c.label ? [c.label] : []))).size;
  const embedded = state.cells.filter((c) => c.features).length;
  const failed = state.cells.filter((c) => c.error).length;
  return `${n} cells in ${samples} sample${samples === 1 ? "" : "s"}` +
    `${labels ? `, ${labels} labelled cell types` : ", no labels"} · ${embedded} embedded` +
    `${failed ? ` · ${failed} could not be used (see below)` : ""}`;
}

// ----------------------------------------------------------------- embedding

function fmtSeconds(s: number): string {
  if (!Number.isFinite(s)) return "…";
  if (s < 90) return `${Math.max(1, Math.round(s))} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function showProgress(): void {
  const j = state.job;
  const bar = $<HTMLProgressElement>("embed-progress");
  if (!j) return;
  bar.max = Math.max(j.total, 1);
  bar.value = j.done;
  const secs = (performance.now() - j.started) / 1000;
  const rate = j.embedded / Math.max(secs, 1e-9);
  const eta = rate > 0 ? (j.total - j.done) / rate : Infinity;
  $("progress-text").textContent = `${j.done} / ${j.total} cells · ` +
    `${
      j.embedded
        ? `${rate.toFixed(rate < 10 ? 2 : 1)} cells/s · about ${fmtSeconds(eta)} left`
        : "starting…"
    }`;
}

let renderQueued = false;
function renderSoon(): void {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 250);
}

async function embedPending(): Promise<void> {
  if (state.job || !state.engine) return;
  if (!state.model) {
    if (state.cells.some((c) => !c.features && !c.error)) {
      $("progress-text").textContent = "Open weights (step 1) to embed these cells.";
    }
    return;
  }
  const todo = state.cells.filter((c) => !c.features && !c.error && !c.pending);
  if (todo.length === 0) {
    analyse(true);
    return;
  }
  const byId = new Map(state.cells.map((c) => [c.id, c]));
  for (const c of todo) c.pending = true;
  // Set before the engine is asked: a dead engine answers at once.
  const j: Job = {
    id: 0,
    total: todo.length,
    done: 0,
    embedded: 0,
    started: performance.now(),
    lost: false,
    stopped: null,
  };
  state.job = j;
  const { job, done } = state.engine.embed(
    todo.map((c) => ({ id: c.id, file: c.file, path: c.path })),
    Math.max(1, num("batch-size") || 1),
    state.loadedFor.size,
    {
      rows(ids, features, dim) {
        ids.forEach((id, i) => {
          const c = byId.get(id);
          if (!c) return;
          c.features = features.slice(i * dim, (i + 1) * dim);
          c.pending = false;
        });
        j.done += ids.length;
        j.embedded += ids.length;
        showProgress();
        renderSoon();
      },
      bad(id, path, reason) {
        const c = byId.get(id);
        if (c) {
          c.error = reason;
          c.pending = false;
        }
        j.done++;
        say("error", `${path}: ${reason}`);
        showProgress();
      },
      failed(ids, reason, kind: FailureKind) {
        if (kind === "lost") {
          j.lost = true;
          say("error", `GPU device lost: ${reason}`);
        } else {
          j.stopped = reason;
          const paths = ids.map((id) => byId.get(id)?.path ?? `#${id}`);
          const named = paths.slice(0, 3).join(", ") + (paths.length > 3 ? ", …" : "");
          say(
            "error",
            `${ids.length} cell${ids.length === 1 ? "" : "s"} not embedded (${named}): ${reason}`,
          );
          for (const id of ids) {
            const c = byId.get(id);
            if (c) c.error = `GPU: ${reason}`;
          }
          j.done += ids.length;
        }
      },
    },
  );
  j.id = job;
  setFlag("job", "running");
  setFlag("analysis", "pending");
  $<HTMLButtonElement>("cancel").disabled = false;
  $<HTMLButtonElement>("resume").disabled = true;
  showProgress();
  const cancelled = await done;
  state.job = null;
  for (const c of todo) {
    c.pending = false;
    // The engine gave up (the model does not fit): say so on each cell rather than retry forever.
    if (j.stopped && !cancelled && !j.lost && !c.features && !c.error) {
      c.error = `GPU: not embedded, ${j.stopped}`;
    }
  }
  $<HTMLButtonElement>("cancel").disabled = true;
  const secs = (performance.now() - j.started) / 1000;
  state.lastJob = { cells: j.embedded, seconds: secs };
  const left = state.cells.filter((c) => !c.features && !c.error).length;
  $("progress-text").textContent = `${j.embedded} cells embedded in ${fmtSeconds(secs)}` +
    ` (${(j.embedded / Math.max(secs, 1e-9)).toFixed(2)} cells/s)` +
    `${cancelled ? ` · cancelled, ${left} left` : ""}`;
  $<HTMLButtonElement>("resume").disabled = left === 0;
  setFlag("job", "idle");
  if (j.lost && !cancelled) {
    if (await recover()) return embedPending();
  } else if (!cancelled && left > 0) {
    return embedPending(); // cells dropped while this job ran
  }
  analyse(true);
}

function stopJob(): void {
  if (state.job) state.engine?.cancel(state.job.id);
}

// -------------------------------------------------------------- classifying

function pageModel(): EmbeddingModel | null {
  const m = state.model;
  if (!m) return null;
  return {
    arch: m.arch,
    weights: m.file,
    weightsSha256: null,
    pool: "cls",
    inputSize: state.loadedFor.size,
    dim: m.dim,
  };
}

/** Why a reference or probe of `other` does not apply to this page's embeddings, or null. */
function mismatch(what: string, other: EmbeddingModel): string | null {
  const mine = pageModel();
  if (!mine) return null;
  const { differences } = embeddingDifferences(other, mine);
  if (differences.length === 0) return null;
  return `${what} holds embeddings of ${describeEmbeddingModel(other)}, but the page embeds with ` +
    `${describeEmbeddingModel(mine)} (${
      differences.map((d) => `${d.field} ${d.head} ≠ ${d.input}`).join("; ")
    }): embed the reference with the same weights and input side`;
}

async function classify(): Promise<void> {
  const embedded = state.cells.filter((c) => c.features);
  for (const c of state.cells) {
    c.predicted = null;
    c.confidence = null;
  }
  state.predictions = null;
  const summary = $("classify-summary");
  if (embedded.length === 0 || !state.model) {
    summary.textContent = "Classification runs when cells are embedded.";
    return;
  }
  const dim = state.model.dim;
  const q = new Float32Array(embedded.length * dim);
  embedded.forEach((c, i) => q.set(c.features!, i * dim));
  const queries = matrix(q, embedded.length, dim, "page embeddings");
  const method = $<HTMLSelectElement>("method").value;
  let preds: Predictions;
  let from: string;
  try {
    if (method === "probe-file") {
      if (!state.probe) {
        summary.textContent = "Load a probe file written by bloom eval --save.";
        return;
      }
      const bad = mismatch(state.probe.name, state.probe.probe.embedding);
      if (bad) throw new Error(bad);
      const p = state.probe.probe.predict(queries);
      preds = {
        labels: p.labels.map(String),
        confidence: p.confidence,
        classes: p.classes.map(String),
        method: `saved probe ${state.probe.name}`,
      };
      from = `${state.probe.name} (${p.classes.length} types)`;
    } else {
      const useFile = $<HTMLSelectElement>("reference").value === "file";
      let ref: Reference;
      let self: Int32Array | undefined;
      if (useFile) {
        if (!state.reference) {
          summary.textContent = "Load a reference embeddings file (bloom embed, with labels).";
          return;
        }
        const bad = mismatch(state.reference.name, state.reference.model);
        if (bad) throw new Error(bad);
        ref = state.reference.ref;
        from = `${state.reference.name} (${ref.labels.length} cells)`;
      } else {
        const labelled = embedded.filter((c) => c.label !== null);
        if (labelled.length === 0) {
          summary.textContent = "No labelled cells: drop folders with a subfolder per cell type, " +
            "or choose a reference embeddings file.";
          return;
        }
        const f = new Float32Array(labelled.length * dim);
        labelled.forEach((c, i) => f.set(c.features!, i * dim));
        ref = { features: f, dim, labels: labelled.map((c) => c.label!) };
        const row = new Map(labelled.map((c, i) => [c.id, i]));
        self = Int32Array.from(embedded, (c) => row.get(c.id) ?? -1);
        from = `${labelled.length} labelled cells on the page`;
      }
      preds = method === "probe"
        ? probePredict(queries, ref, self)
        : await knnPredict(queries, ref, Math.max(1, num("k") || 1), self);
    }
  } catch (e) {
    summary.textContent = "Not classified.";
    say("error", `classification: ${e instanceof Error ? e.message : String(e)}`);
    return;
  }
  embedded.forEach((c, i) => {
    c.predicted = preds.labels[i];
    c.confidence = preds.confidence[i];
  });
  state.predictions = preds;
  const labelled = embedded.filter((c) => c.label !== null);
  const right = labelled.filter((c) => c.label === c.predicted).length;
  summary.textContent = `${embedded.length} cells classified by ${preds.method}; reference: ` +
    `${from}; ${preds.classes.length} cell types` +
    (labelled.length
      ? ` · agrees with the folder labels for ${right} of ${labelled.length} ` +
        `(${((100 * right) / labelled.length).toFixed(1)} %)`
      : "");
}

function differential(): void {
  const cells = state.cells.filter((c) => c.predicted !== null);
  const root = $("differential");
  if (!state.predictions || cells.length === 0) {
    state.differential = null;
    root.innerHTML = `<p class="info">Appears when cells are classified.</p>`;
    return;
  }
  state.differential = differentialCount(
    cells.map((c) => c.predicted!),
    cells.map((c) => c.sample),
    state.predictions.classes,
  );
  renderDifferential(root, state.differential);
}

// ---------------------------------------------------------------------- maps

function colourLabels(cells: Cell[]): string[] {
  const by = $<HTMLSelectElement>("umap-colour").value;
  if (by === "label") return cells.map((c) => c.label ?? "(no label)");
  if (by === "sample") return cells.map((c) => c.sample);
  return cells.map((c) => c.predicted ?? "(not classified)");
}

function drawUmap(): void {
  const root = $("umap");
  const u = state.umap;
  if (!u) return;
  const byId = new Map(state.cells.map((c) => [c.id, c]));
  const cells = u.ids.map((id) => byId.get(id)!);
  const by = $<HTMLSelectElement>("umap-colour").selectedOptions[0].textContent;
  u.svg = scatterSvg(u.points, colourLabels(cells), {
    title: `UMAP of ${cells.length} cells`,
    subtitle: `${state.model?.arch ?? ""} · ${state.model?.file ?? ""} · coloured by ${by}`,
    width: 760,
    height: 520,
    radius: cells.length <= 300 ? 5 : cells.length <= 3000 ? 3 : 1.5,
    pointIndex: true,
  });
  root.innerHTML = u.svg;
}

function mapCells(): void {
  const embedded = state.cells.filter((c) => c.features);
  const root = $("umap");
  if (embedded.length < 3) {
    state.umap = null;
    root.innerHTML = `<p class="info">Appears when three or more cells are embedded.</p>`;
    return;
  }
  const ids = embedded.map((c) => c.id);
  if (state.umap && state.umap.ids.join() === ids.join()) return drawUmap();
  const dim = state.model!.dim;
  const x = new Float32Array(embedded.length * dim);
  embedded.forEach((c, i) => x.set(c.features!, i * dim));
  const points = umapEmbedding(matrix(x, embedded.length, dim), { seed: 42 });
  state.umap = { ids, points, svg: "" };
  drawUmap();
}

function umapHover(ev: MouseEvent): void {
  const box = $("umap-hover");
  const t = ev.target as Element;
  const i = t instanceof SVGElement ? t.dataset.i : undefined;
  if (i === undefined || !state.umap) {
    box.hidden = true;
    return;
  }
  const cell = state.cells.find((c) => c.id === state.umap!.ids[Number(i)]);
  if (!cell) return;
  box.querySelector("img")!.src = cell.url;
  box.querySelector("span")!.textContent = `${cell.name}: ${cell.predicted ?? "?"}` +
    `${cell.label ? ` (folder: ${cell.label})` : ""}`;
  const panel = $("umap-panel").getBoundingClientRect();
  box.style.left = `${ev.clientX - panel.left + 12}px`;
  box.style.top = `${ev.clientY - panel.top + 12}px`;
  box.hidden = false;
}

async function showPca(id: number): Promise<void> {
  const cell = state.cells.find((c) => c.id === id);
  if (!cell || !state.engine || !state.model) return;
  state.gallery.selected = id;
  renderGalleryNow();
  $("pca-info").textContent = `Patch tokens of ${cell.path}…`;
  const r = await state.engine.patchTokens(id, cell.file, cell.path, state.loadedFor.size);
  if ("error" in r) {
    $("pca-info").textContent = "No patch view.";
    say("error", r.error);
    return;
  }
  const fg = $<HTMLInputElement>("pca-foreground").checked;
  let colours;
  try {
    colours = patchPcaColours(
      { data: r.tokens, images: 1, tokens: r.patches, dim: r.dim },
      fg ? { foregroundThreshold: 0.5 } : {},
    );
  } catch (e) {
    $("pca-info").textContent = "No patch view.";
    say("error", `patch PCA of ${cell.path}: ${(e as Error).message}`);
    return;
  }
  const canvas = $<HTMLCanvasElement>("pca");
  renderPca(canvas, r.pixels, r.size, colours);
  canvas.hidden = false;
  state.pca = { id, path: cell.path };
  $("pca-info").textContent = `${cell.path}: the cell as the model sees it (${r.size} px) and ` +
    `its ${colours.grid}×${colours.grid} patch tokens, first three principal components as RGB`;
  setFlag("pca", "shown");
  enableExports();
}

// --------------------------------------------------------------------- render

function renderGalleryNow(): void {
  const g = state.gallery;
  const n = renderGallery(
    $("gallery"),
    state.cells.filter((c) => c.features).map((c) => ({
      id: c.id,
      path: c.path,
      name: c.name,
      sample: c.sample,
      label: c.label,
      url: c.url,
      predicted: c.predicted,
      confidence: c.confidence,
    })),
    g,
  );
  $("gallery-count").textContent = n ? `${Math.min(n, g.limit)} of ${n} cells shown` : "";
  $<HTMLButtonElement>("gallery-more").hidden = n <= g.limit;
}

function renderTypeFilter(): void {
  const sel = $<HTMLSelectElement>("filter-type");
  const keep = sel.value;
  const types = state.predictions?.classes ?? [];
  sel.replaceChildren(new Option("all", ""), ...types.map((t) => new Option(t, t)));
  sel.value = types.includes(keep) ? keep : "";
  state.gallery.type = sel.value;
}

function enableExports(): void {
  const embedded = state.cells.some((c) => c.features);
  const set = (id: string, on: boolean) => ($<HTMLButtonElement>(id).disabled = !on);
  set("export-emb-st", embedded);
  set("export-emb-csv", embedded);
  set("export-pred-csv", state.predictions !== null);
  set("export-diff-csv", state.differential !== null);
  set("export-umap-svg", state.umap !== null);
  set("export-umap-png", state.umap !== null);
  set("export-pca-png", state.pca !== null);
}

function render(): void {
  $("cells-summary").textContent = summariseCells();
  renderGalleryNow();
  enableExports();
}

/** Classification, differential and map after the embeddings changed (or a setting did). */
function analyse(remap: boolean): void {
  if (state.job) return;
  setFlag("analysis", "running");
  // Let the page paint "running" before the maths holds the thread.
  setTimeout(async () => {
    await classify();
    renderTypeFilter();
    differential();
    try {
      if (remap || !state.umap) mapCells();
      else drawUmap();
    } catch (e) {
      say("error", `UMAP: ${(e as Error).message}`);
    }
    render();
    setFlag("analysis", "done");
  }, 20);
}

// -------------------------------------------------------------------- export

function exportRows(): ExportRows {
  const cells = state.cells.filter((c) => c.features);
  const dim = state.model!.dim;
  const features = new Float32Array(cells.length * dim);
  cells.forEach((c, i) => features.set(c.features!, i * dim));
  const all = cells.every((c) => c.label !== null);
  return {
    features,
    dim,
    paths: cells.map((c) => c.path),
    labels: all ? cells.map((c) => c.label!) : null,
    arch: state.model!.arch,
    weights: state.model!.file,
    inputSize: state.loadedFor.size,
  };
}

function wireExports(): void {
  const on = (id: string, fn: () => void | Promise<void>) =>
    $(id).addEventListener("click", () => void fn());
  on(
    "export-emb-st",
    () =>
      download(
        "embeddings.safetensors",
        embeddingsSafetensors(exportRows()),
        "application/octet-stream",
      ),
  );
  on("export-emb-csv", () => download("embeddings.csv", embeddingsCsv(exportRows()), "text/csv"));
  on("export-pred-csv", () =>
    download(
      "predictions.csv",
      predictionsCsv(
        state.cells.map((c) => ({
          path: c.path,
          sample: c.sample,
          label: c.label,
          predicted: c.predicted,
          confidence: c.confidence,
          error: c.error ?? undefined,
        })),
        state.predictions?.method ?? "",
      ),
      "text/csv",
    ));
  on("export-diff-csv", () => {
    if (state.differential) {
      download("differential.csv", differentialCsv(state.differential), "text/csv");
    }
  });
  on("export-umap-svg", () => {
    if (state.umap) download("umap.svg", state.umap.svg, "image/svg+xml");
  });
  on("export-umap-png", async () => {
    if (state.umap) download("umap.png", await svgToPng(state.umap.svg), "image/png");
  });
  on("export-pca-png", async () => {
    if (state.pca) {
      download("patch_pca.png", await canvasPng($<HTMLCanvasElement>("pca")), "image/png");
    }
  });
}

// --------------------------------------------------------------------- wiring

function dropZone(id: string, onFiles: (files: PickedFile[]) => void): void {
  const zone = $(id);
  zone.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    if (!ev.dataTransfer) return;
    const { files, unreadable } = await droppedFiles(ev.dataTransfer);
    for (const u of unreadable) say("error", `${u.path}: ${u.reason}; skipped`);
    onFiles(files);
  });
}

async function loadReference(file: File): Promise<void> {
  try {
    const e = await readEmbeddings(blobSource(file, file.name));
    if (!e.labels) {
      throw new Error(
        `${file.name} has no labels: embed a labelled folder (a subfolder per cell type) with ` +
          "bloom embed to make a reference",
      );
    }
    state.reference = {
      name: file.name,
      ref: { features: e.features, dim: e.dim, labels: e.labels },
      model: embeddingModelFromMeta(e.meta, e.dim),
    };
    $<HTMLSelectElement>("reference").value = "file";
    say(
      "info",
      `reference ${file.name}: ${e.rows} labelled cells, ${new Set(e.labels).size} types`,
    );
    analyse(false);
  } catch (e) {
    say("error", e instanceof Error ? e.message : String(e));
  }
}

async function loadProbe(file: File): Promise<void> {
  try {
    const probe = await Probe.load(blobSource(file, file.name));
    state.probe = { name: file.name, probe };
    $<HTMLSelectElement>("method").value = "probe-file";
    say("info", `probe ${file.name}: ${probe.classes.length} types (${probe.classes.join(", ")})`);
    analyse(false);
  } catch (e) {
    say("error", e instanceof Error ? e.message : String(e));
  }
}

function wire(): void {
  const weights = async (f: File | undefined) => {
    if (!f) return;
    if (await loadWeights(f)) void embedPending();
  };
  dropZone("weights-drop", (files) => void weights(files[0]?.file));
  $<HTMLInputElement>("weights-input").addEventListener("change", (ev) => {
    const input = ev.target as HTMLInputElement;
    void weights(input.files?.[0]);
    input.value = "";
  });
  for (const id of ["input-size", "heads"]) {
    $(id).addEventListener("change", () => {
      const same = inputSize() === state.loadedFor.size && wantedHeads() === state.loadedFor.heads;
      if (state.weights && !same) void weights(state.weights);
    });
  }
  dropZone("cells-drop", addFiles);
  for (const id of ["folder-input", "files-input"]) {
    $<HTMLInputElement>(id).addEventListener("change", (ev) => {
      const input = ev.target as HTMLInputElement;
      addFiles(inputFiles(input));
      input.value = "";
    });
  }
  $("folder-rule").addEventListener("change", regroup);
  $("clear-cells").addEventListener("click", () => {
    stopJob();
    for (const c of state.cells) URL.revokeObjectURL(c.url);
    state.cells = [];
    state.gallery.selected = null;
    forgetEmbeddings();
    analyse(true);
  });
  $("cancel").addEventListener("click", stopJob);
  $("resume").addEventListener("click", () => void embedPending());
  for (const id of ["method", "k", "reference"]) {
    $(id).addEventListener("change", () => analyse(false));
  }
  $<HTMLInputElement>("reference-input").addEventListener("change", (ev) => {
    const f = (ev.target as HTMLInputElement).files?.[0];
    if (f) void loadReference(f);
  });
  $<HTMLInputElement>("probe-input").addEventListener("change", (ev) => {
    const f = (ev.target as HTMLInputElement).files?.[0];
    if (f) void loadProbe(f);
  });
  const gallerySetting = (id: string, key: "sort" | "type" | "text") =>
    $(id).addEventListener("input", (ev) => {
      (state.gallery as unknown as Record<string, string>)[key] =
        (ev.target as HTMLInputElement).value;
      renderGalleryNow();
    });
  gallerySetting("sort", "sort");
  gallerySetting("filter-type", "type");
  gallerySetting("filter-text", "text");
  $("gallery-more").addEventListener("click", () => {
    state.gallery.limit += 300;
    renderGalleryNow();
  });
  $("gallery").addEventListener("click", (ev) => {
    const fig = (ev.target as Element).closest<HTMLElement>("figure.cell");
    if (fig) void showPca(Number(fig.dataset.id));
  });
  $("pca-foreground").addEventListener("change", () => {
    if (state.pca) void showPca(state.pca.id);
  });
  $("umap-colour").addEventListener("change", drawUmap);
  $("umap").addEventListener("mousemove", umapHover);
  $("umap").addEventListener("mouseleave", () => ($("umap-hover").hidden = true));
  wireExports();
}

/** What the tests (and a curious user, from the console) can read. */
const testApi = {
  snapshot: () => ({
    adapter: state.adapter,
    model: state.model,
    inputSize: state.loadedFor.size,
    cells: state.cells.map((c) => ({
      id: c.id,
      path: c.path,
      sample: c.sample,
      label: c.label,
      embedded: c.features !== null,
      predicted: c.predicted,
      confidence: c.confidence,
      error: c.error,
    })),
    classes: state.predictions?.classes ?? null,
    method: state.predictions?.method ?? null,
    umapPoints: state.umap ? state.umap.ids.length : 0,
    lastJob: state.lastJob,
    messages: state.messages,
  }),
  /** Embeddings by path, for parity checks. */
  embeddings: () =>
    Object.fromEntries(
      state.cells.filter((c) => c.features).map((c) => [c.path, [...c.features!]]),
    ),
  loseDevice: () => state.engine?.loseDevice(),
  simulateMemory: (cells: number | null) => state.engine?.simulateMemory(cells),
};
(globalThis as unknown as { bloom: typeof testApi }).bloom = testApi;

wire();
setFlag("job", "idle");
setFlag("model", "none");
void startEngine();
