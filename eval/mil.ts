/**
 * Multiple-instance learning for patient-level AML subtyping (docs/evaluation.md):
 * a bag is every cell embedding of one patient, the patient's label is its
 * cells' label, and an attention head pools the bag into class logits.
 *
 * Two heads, built from bloom's autodiff ops (graph/ops.ts) and trained on
 * the GPU:
 *
 * - **multi-column attention** (the reference, Hehr et al.): per class c,
 *   `a_c = softmax_cells(Linear(A→C)(tanh(Linear(D→A)(H))))[:, c]`,
 *   `z_c = a_cᵀ H`, `logit_c = Linear(Hc→1)(relu(Linear(D→Hc)(z_c)))` with
 *   one such classifier per class (the reference's ModuleList), A = 128,
 *   Hc = 64. The C classifiers are stored stacked ([C, Hc, D], [C, Hc],
 *   [C, 1, Hc], [C, 1]) and run as one batched matmul.
 * - **gated ABMIL** (Ilse et al. 2018): `a = softmax(wᵀ(tanh(V h) ⊙ sigmoid(U h)))`
 *   with A = 128 hidden, `z = aᵀ H`, then one linear classifier D→C (Ilse's
 *   single sigmoid output widened to C softmax logits for C classes).
 *
 * Loss: cross-entropy of the bag's logits against its one-hot class.
 * Training as the reference: SGD (lr 1e-3, momentum 0.9, Nesterov, no weight
 * decay; torch.optim.SGD's update), cosine annealing of the lr over 150
 * epochs (CosineAnnealingLR, η_min 0, stepped per epoch), one bag per step in
 * a seeded shuffled order (numpy's legacy shuffle; torch's DataLoader order
 * cannot be reproduced), and early stopping with patience 20 on the
 * validation loss: 20% of the training patients, split stratified by class
 * (`valFraction`), held out; the weights of the best validation epoch are
 * restored at the end. Initial weights follow nn.Linear's default
 * distribution, U(±1/√fan_in), drawn from a seeded numpy RandomState.
 *
 * GPU residency: every cell embedding is uploaded once (bags packed at
 * aligned offsets so each bag binds as a view); a training step records its
 * forward, backward and SGD dispatches and submits them without waiting; the
 * only read-backs are one per epoch (summed train and validation losses, for
 * early stopping and progress) and one per prediction run.
 */
import { ParamArena, type ParamSpec } from "../graph/arena.ts";
import { Graph } from "../graph/graph.ts";
import {
  add,
  crossEntropySoft,
  linear,
  matmul,
  mul,
  permute,
  reshape,
  softmax,
  unary,
} from "../graph/ops.ts";
import { Params } from "../graph/params.ts";
import type { Tensor } from "../graph/tensor.ts";
import { addInPlace } from "../kernels/elementwise.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { stratifiedKFold, trainTestSplit } from "./split.ts";
import { encodeLabels, uniqueSorted } from "./labels.ts";
import { type ClassificationMetrics, classificationMetrics } from "./metrics.ts";
import { NumpyRandomState } from "./numpy_random.ts";
import { type ReportRow, reportRow } from "./report.ts";

// -------------------------------------------------------------------- bags

/** One patient's cells. */
export interface Bag {
  patient: string;
  label: string;
  /** Row indices of the patient's cells in the features, ascending. */
  rows: number[];
}

/**
 * Groups cells into one bag per patient (patients in sorted order, as
 * `np.unique`). Every cell of a patient must carry the same label; `what`
 * (a file name) is named in the error otherwise.
 */
export function patientBags(
  labels: readonly string[],
  patients: readonly string[],
  what = "embeddings",
): Bag[] {
  if (labels.length !== patients.length) {
    throw new RangeError(
      `${what}: ${labels.length} labels but ${patients.length} patient ids; give one per cell`,
    );
  }
  if (labels.length === 0) throw new RangeError(`${what}: no cells, so no patients to bag`);
  const byPatient = new Map<string, Bag>();
  for (let i = 0; i < labels.length; i++) {
    const p = patients[i];
    const bag = byPatient.get(p);
    if (!bag) byPatient.set(p, { patient: p, label: labels[i], rows: [i] });
    else {
      if (bag.label !== labels[i]) {
        throw new RangeError(
          `${what}: patient '${p}' has cells labelled '${bag.label}' (row ${bag.rows[0]}) and ` +
            `'${labels[i]}' (row ${i}); MIL needs one label per patient: fix the labels or ` +
            `split the patient`,
        );
      }
      bag.rows.push(i);
    }
  }
  const ids = uniqueSorted([...byPatient.keys()], `${what}: patients`) as string[];
  return ids.map((p) => byPatient.get(p)!);
}

// ------------------------------------------------------------------- heads

/** The two MIL heads. */
export type MilHeadKind = "multicolumn" | "gated";

/** Both heads, in report order. */
export const MIL_HEADS: readonly MilHeadKind[] = ["multicolumn", "gated"];

/** Report protocol name of a head. */
export function milProtocolName(kind: MilHeadKind): string {
  return kind === "multicolumn" ? "ABMIL (multi-column)" : "ABMIL (gated)";
}

/** Sizes of a head. */
export interface MilHeadShape {
  kind: MilHeadKind;
  /** Embedding width D. */
  dim: number;
  /** Number of classes C. */
  classes: number;
  /** Attention hidden width A (default 128). */
  attentionHidden?: number;
  /** Multi-column classifier hidden width Hc (default 64). */
  classifierHidden?: number;
}

function sizes(s: MilHeadShape): { D: number; C: number; A: number; Hc: number } {
  const A = s.attentionHidden ?? 128;
  const Hc = s.classifierHidden ?? 64;
  for (
    const [n, v] of [["dim", s.dim], ["classes", s.classes], ["attentionHidden", A], [
      "classifierHidden",
      Hc,
    ]] as const
  ) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`MIL head: ${n}=${v} must be ≥ 1`);
  }
  if (s.classes < 2) {
    throw new RangeError(`MIL head: ${s.classes} class; a classifier needs at least 2 classes`);
  }
  return { D: s.dim, C: s.classes, A, Hc };
}

/**
 * Parameter specs of a head, named like the PyTorch reference's state dict
 * (the multi-column classifiers stacked over classes: `classifier.0.weight`
 * [C, Hc, D] is the reference's `classifier[c][0].weight` for every c).
 */
export function milParamSpecs(shape: MilHeadShape): ParamSpec[] {
  const { D, C, A, Hc } = sizes(shape);
  if (shape.kind === "multicolumn") {
    return [
      { name: "attention.0.weight", shape: [A, D] },
      { name: "attention.0.bias", shape: [A] },
      { name: "attention.2.weight", shape: [C, A] },
      { name: "attention.2.bias", shape: [C] },
      { name: "classifier.0.weight", shape: [C, Hc, D] },
      { name: "classifier.0.bias", shape: [C, Hc] },
      { name: "classifier.2.weight", shape: [C, 1, Hc] },
      { name: "classifier.2.bias", shape: [C, 1] },
    ];
  }
  return [
    { name: "attention_V.weight", shape: [A, D] },
    { name: "attention_V.bias", shape: [A] },
    { name: "attention_U.weight", shape: [A, D] },
    { name: "attention_U.bias", shape: [A] },
    { name: "attention_w.weight", shape: [1, A] },
    { name: "attention_w.bias", shape: [1] },
    { name: "classifier.weight", shape: [C, D] },
    { name: "classifier.bias", shape: [C] },
  ];
}

/** Fan-in of each parameter (nn.Linear's init bound is 1/√fan_in for weight and bias). */
function fanIn(shape: MilHeadShape, name: string): number {
  const { D, A, Hc } = sizes(shape);
  if (name.startsWith("attention.2") || name.startsWith("attention_w")) return A;
  if (name.startsWith("classifier.2")) return Hc;
  return D;
}

/**
 * Initial values as nn.Linear's default init draws them (weights and biases
 * U(−1/√fan_in, 1/√fan_in)), from numpy's RandomState(seed) in spec order.
 */
export function milInit(shape: MilHeadShape, seed: number): Map<string, Float32Array> {
  const rng = new NumpyRandomState(seed >>> 0);
  const out = new Map<string, Float32Array>();
  for (const spec of milParamSpecs(shape)) {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const bound = 1 / Math.sqrt(fanIn(shape, spec.name));
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) v[i] = (2 * rng.random() - 1) * bound;
    out.set(spec.name, v);
  }
  return out;
}

/** Class logits [1, C] of one bag `h` [n, D] (see the module comment for the maths). */
export function milForward(ps: Params, shape: MilHeadShape, h: Tensor): Tensor {
  const { D, C, Hc } = sizes(shape);
  if (h.shape.length !== 2 || h.shape[1] !== D || h.shape[0] < 1) {
    throw new RangeError(`MIL head: bag [${h.shape}] is not [cells ≥ 1, ${D}]`);
  }
  const g = ps.g;
  const p = (n: string) => ps.get(n);
  return g.tidy(() => {
    if (shape.kind === "multicolumn") {
      const hid = unary(g, "tanh", linear(g, h, p("attention.0.weight"), p("attention.0.bias")));
      const scores = linear(g, hid, p("attention.2.weight"), p("attention.2.bias")); // [n, C]
      const att = softmax(g, permute(g, scores, [1, 0])); // [C, n]: softmax over cells
      const z = reshape(g, matmul(g, att, h), [C, 1, D]); // z_c = a_cᵀ H
      let u = matmul(g, z, p("classifier.0.weight"), { transB: true }); // [C, 1, Hc]
      u = unary(g, "relu", add(g, u, reshape(g, p("classifier.0.bias"), [C, 1, Hc])));
      const v = matmul(g, u, p("classifier.2.weight"), { transB: true }); // [C, 1, 1]
      return reshape(g, add(g, v, reshape(g, p("classifier.2.bias"), [C, 1, 1])), [1, C]);
    }
    const av = unary(g, "tanh", linear(g, h, p("attention_V.weight"), p("attention_V.bias")));
    const au = unary(g, "sigmoid", linear(g, h, p("attention_U.weight"), p("attention_U.bias")));
    const s = linear(g, mul(g, av, au), p("attention_w.weight"), p("attention_w.bias")); // [n, 1]
    const a = softmax(g, reshape(g, s, [1, h.shape[0]])); // [1, n]
    const z = matmul(g, a, h); // [1, D]
    return linear(g, z, p("classifier.weight"), p("classifier.bias"));
  });
}

// ------------------------------------------------------------ optimisation

/**
 * SGD with Nesterov momentum on a whole parameter arena, with
 * torch.optim.SGD's update (dampening 0):
 * `g ← g + wd·p; b ← μ·b + g; p ← p − lr·(g + μ·b)`, `b` starting at 0
 * (which equals torch's `b ← g` on the first step). Runs as in-place
 * elementwise passes over each arena chunk (`addInPlace`), so one step is a
 * few dispatches whatever the number of parameters; the learning rate is a
 * per-dispatch uniform, so changing it costs nothing.
 */
export class NesterovSgd {
  readonly arena: ParamArena;
  readonly momentum: number;
  readonly weightDecay: number;
  readonly #buffers: GpuTensor[];

  constructor(arena: ParamArena, opts: { momentum?: number; weightDecay?: number } = {}) {
    if (!arena.hasGrads) throw new Error("NesterovSgd: the arena has no gradient buffers");
    this.arena = arena;
    this.momentum = opts.momentum ?? 0.9;
    this.weightDecay = opts.weightDecay ?? 0;
    if (!(this.momentum > 0 && this.momentum < 1)) {
      throw new RangeError(`NesterovSgd: momentum ${this.momentum} must be in (0, 1)`);
    }
    this.#buffers = arena.chunks.map((c) => arena.gpu.zeros([c.elements], "f32", "sgd-momentum"));
  }

  /** One update with learning rate `lr` from the gradients in the arena (left as they are). */
  step(lr: number): void {
    const gpu = this.arena.gpu;
    const mu = this.momentum;
    this.arena.chunks.forEach((c, i) => {
      const p = c.value;
      const g = c.grad!;
      const b = this.#buffers[i];
      if (this.weightDecay !== 0) addInPlace(gpu, g, p, this.weightDecay);
      addInPlace(gpu, b, b, mu - 1); // b ← μ·b
      addInPlace(gpu, b, g); // b ← μ·b + g
      addInPlace(gpu, p, g, -lr); // p ← p − lr·g
      addInPlace(gpu, p, b, -lr * mu); // p ← p − lr·μ·b
    });
  }

  /** Clears the momentum (a fresh optimiser). */
  reset(): void {
    for (const b of this.#buffers) this.arena.gpu.clear(b);
  }

  /** Frees the momentum buffers. */
  destroy(): void {
    this.arena.gpu.release(...this.#buffers);
  }
}

/**
 * The learning rate of epoch `epoch` (0-based) under CosineAnnealingLR with
 * T_max = `epochs` and η_min = `min`, stepped once per epoch:
 * `min + (base − min)·(1 + cos(π·epoch/epochs))/2`.
 */
export function cosineLr(epoch: number, base: number, epochs: number, min = 0): number {
  return min + (base - min) * (1 + Math.cos((Math.PI * epoch) / epochs)) / 2;
}

/** What `EarlyStopping.update` decided. */
export type StopDecision = "improved" | "wait" | "stop";

/**
 * Early stopping on a loss: an epoch improves when its loss is strictly
 * below the best so far (non-finite losses never improve); after `patience`
 * epochs in a row without improvement, stop. The caller keeps the weights of
 * the last "improved" epoch and restores them.
 */
export class EarlyStopping {
  readonly patience: number;
  best = Infinity;
  bestEpoch = -1;
  /** Epochs since the last improvement. */
  waited = 0;

  constructor(patience: number) {
    if (!Number.isInteger(patience) || patience < 1) {
      throw new RangeError(`EarlyStopping: patience=${patience} must be an integer ≥ 1`);
    }
    this.patience = patience;
  }

  /** Records epoch `epoch`'s loss. */
  update(epoch: number, loss: number): StopDecision {
    if (Number.isFinite(loss) && loss < this.best) {
      this.best = loss;
      this.bestEpoch = epoch;
      this.waited = 0;
      return "improved";
    }
    this.waited++;
    return this.waited >= this.patience ? "stop" : "wait";
  }
}

// ----------------------------------------------------------------- storage

/**
 * Every bag's cells on the GPU, packed into a few buffers with each bag
 * starting at an aligned offset, so a bag binds as a plain view
 * (`minStorageBufferOffsetAlignment`) and no step uploads anything.
 */
export class BagStore {
  readonly gpu: Gpu;
  readonly dim: number;
  readonly #chunks: GpuTensor[];
  readonly #views: GpuTensor[];

  private constructor(gpu: Gpu, dim: number, chunks: GpuTensor[], views: GpuTensor[]) {
    this.gpu = gpu;
    this.dim = dim;
    this.#chunks = chunks;
    this.#views = views;
  }

  /** Uploads the rows of each bag from `features` ([rows, dim] row-major). */
  static upload(gpu: Gpu, features: Float32Array, dim: number, bags: readonly Bag[]): BagStore {
    const align = Math.max(64, gpu.limits.minStorageBufferOffsetAlignment / 4);
    const limit = Math.floor(
      Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize, 2 ** 28) / 4,
    );
    // Plan: bag → (chunk, element offset).
    const place: { chunk: number; offset: number }[] = [];
    const chunkSizes: number[] = [];
    let used = Infinity;
    for (const bag of bags) {
      const n = bag.rows.length * dim;
      if (n === 0) throw new RangeError(`MIL: patient '${bag.patient}' has no cells`);
      if (n > limit) {
        throw new RangeError(
          `MIL: patient '${bag.patient}' has ${bag.rows.length} cells × ${dim} features, more than ` +
            `one GPU binding holds (${limit} values); subsample that patient's cells`,
        );
      }
      const at = Math.ceil(used / align) * align;
      if (!(at + n <= limit)) {
        chunkSizes.push(0);
        used = 0;
      }
      const offset = Math.ceil(used / align) * align;
      place.push({ chunk: chunkSizes.length - 1, offset });
      used = offset + n;
      chunkSizes[chunkSizes.length - 1] = used;
    }
    const chunks = chunkSizes.map((size, c) => {
      const host = new Float32Array(size);
      bags.forEach((bag, b) => {
        if (place[b].chunk !== c) return;
        bag.rows.forEach((r, k) => {
          host.set(features.subarray(r * dim, (r + 1) * dim), place[b].offset + k * dim);
        });
      });
      return gpu.tensor(host, [size], `mil-bags#${c}`);
    });
    const views = bags.map((bag, b) =>
      chunks[place[b].chunk].view(place[b].offset, [bag.rows.length, dim])
    );
    return new BagStore(gpu, dim, chunks, views);
  }

  /** Bag `i` as an [cells, dim] view. */
  view(i: number): GpuTensor {
    return this.#views[i];
  }

  /** Number of bags. */
  get size(): number {
    return this.#views.length;
  }

  /** Frees the buffers. */
  destroy(): void {
    this.gpu.release(...this.#chunks);
  }
}

// ---------------------------------------------------------------- training

/** Training options (defaults: the reference's). */
export interface MilTrainOptions {
  /** Epochs of the cosine schedule and the most that run. Default 150. */
  epochs?: number;
  /** Base learning rate. Default 1e-3. */
  lr?: number;
  /** Nesterov momentum. Default 0.9. */
  momentum?: number;
  /** Early-stopping patience, in epochs. Default 20. */
  patience?: number;
  /**
   * Fraction of the training patients held out (stratified) for early
   * stopping. Default 0.2; 0 trains every epoch on all patients, no stopping.
   */
  valFraction?: number;
  /** Seed of the initial weights, the validation split and the bag order. Default 42. */
  seed?: number;
  /** Attention hidden width (default 128). */
  attentionHidden?: number;
  /** Multi-column classifier hidden width (default 64). */
  classifierHidden?: number;
  /** Called after every epoch. */
  onEpoch?: (info: EpochInfo) => void;
}

/** One epoch's record. */
export interface EpochInfo {
  epoch: number;
  lr: number;
  /** Mean cross-entropy over the training bags during the epoch. */
  trainLoss: number;
  /** Mean cross-entropy over the validation bags after the epoch (NaN without validation). */
  valLoss: number;
}

/** A trained head. */
export interface TrainedMil {
  shape: MilHeadShape;
  arena: ParamArena;
  history: EpochInfo[];
  /** Epoch whose weights were kept (the last one without validation). */
  bestEpoch: number;
  /** Whether early stopping ended the run before `epochs`. */
  stoppedEarly: boolean;
}

/** The bags of one task on the GPU with their class codes. */
export interface MilTask {
  store: BagStore;
  /** Class code of each bag of the store. */
  codes: Int32Array;
  /** Class names, code order. */
  classes: string[];
}

function resolveTrain(opts: MilTrainOptions) {
  const o = {
    epochs: opts.epochs ?? 150,
    lr: opts.lr ?? 1e-3,
    momentum: opts.momentum ?? 0.9,
    patience: opts.patience ?? 20,
    valFraction: opts.valFraction ?? 0.2,
    seed: opts.seed ?? 42,
  };
  if (!Number.isInteger(o.epochs) || o.epochs < 1) {
    throw new RangeError(`MIL: epochs=${o.epochs} must be an integer ≥ 1`);
  }
  if (!(o.lr > 0)) throw new RangeError(`MIL: lr=${o.lr} must be positive`);
  if (!(o.valFraction >= 0 && o.valFraction < 1)) {
    throw new RangeError(`MIL: valFraction=${o.valFraction} must be in [0, 1)`);
  }
  return o;
}

/**
 * Splits training bags into (train, validation) for early stopping:
 * stratified by class at the patient level, `valFraction` held out.
 */
export function validationSplit(
  bags: readonly number[],
  codes: Int32Array,
  valFraction: number,
  seed: number,
): { train: number[]; val: number[] } {
  if (valFraction === 0) return { train: [...bags], val: [] };
  const labels = bags.map((b) => codes[b]);
  let split;
  try {
    split = trainTestSplit(labels, { trainSize: 1 - valFraction, seed });
  } catch (e) {
    throw new RangeError(
      `MIL: cannot hold out a stratified validation set of ${
        Math.round(100 * valFraction)
      }% of ${bags.length} training patients (${(e as Error).message}); add patients, ` +
        `or train without early stopping (valFraction 0)`,
    );
  }
  return { train: split.train.map((i) => bags[i]), val: split.test.map((i) => bags[i]) };
}

/**
 * Trains one head on bags `trainBags` of the task, holding out a validation
 * split for early stopping (see MilTrainOptions). `initSeed` seeds the
 * weights; the returned arena is the caller's to destroy.
 */
export async function trainMil(
  gpu: Gpu,
  task: MilTask,
  kind: MilHeadKind,
  trainBags: readonly number[],
  opts: MilTrainOptions = {},
): Promise<TrainedMil> {
  const o = resolveTrain(opts);
  const shape: MilHeadShape = {
    kind,
    dim: task.store.dim,
    classes: task.classes.length,
    attentionHidden: opts.attentionHidden,
    classifierHidden: opts.classifierHidden,
  };
  if (trainBags.length === 0) throw new RangeError("MIL: no training patients");
  const { train, val } = validationSplit(trainBags, task.codes, o.valFraction, o.seed);
  const arena = ParamArena.create(gpu, milParamSpecs(shape), { grads: true });
  const sgd = new NesterovSgd(arena, { momentum: o.momentum });
  const temps: GpuTensor[] = [];
  try {
    for (const [name, v] of milInit(shape, o.seed)) arena.set(name, v);
    const targets = oneHots(gpu, task.classes.length);
    // Train and validation loss sums in one buffer, 256 bytes apart (aligned views).
    const sums = gpu.zeros([128], "f32", "mil-loss-sums");
    const best = arena.chunks.map((c) => gpu.empty([c.elements], "f32", "mil-best"));
    temps.push(...targets, sums, ...best);
    const trainSum = sums.view(0, [1]);
    const valSum = sums.view(64, [1]);
    const stopper = new EarlyStopping(o.patience);
    const rng = new NumpyRandomState((o.seed + 1) >>> 0);
    const order = [...train];
    const history: EpochInfo[] = [];
    let stoppedEarly = false;
    for (let epoch = 0; epoch < o.epochs; epoch++) {
      const lr = cosineLr(epoch, o.lr, o.epochs);
      gpu.clear(sums);
      rng.shuffle(order);
      for (const b of order) {
        const g = new Graph(gpu);
        try {
          const ps = new Params(g, arena);
          const logits = milForward(ps, shape, g.input(task.store.view(b)));
          const loss = crossEntropySoft(g, logits, g.input(targets[task.codes[b]]));
          addInPlace(gpu, trainSum, loss.value);
          g.backward(loss);
        } finally {
          g.dispose();
        }
        sgd.step(lr);
        arena.zeroGrads();
        gpu.flush();
      }
      if (val.length) bagLosses(gpu, task, shape, arena, val, targets, valSum);
      const s = await gpu.readF32(sums);
      const info: EpochInfo = {
        epoch,
        lr,
        trainLoss: s[0] / train.length,
        valLoss: val.length ? s[64] / val.length : NaN,
      };
      history.push(info);
      opts.onEpoch?.(info);
      if (!Number.isFinite(info.trainLoss)) {
        throw new RangeError(
          `MIL (${milProtocolName(kind)}): training diverged (mean loss ${info.trainLoss} in ` +
            `epoch ${epoch + 1}); lower the learning rate (lr=${o.lr})`,
        );
      }
      if (val.length) {
        const d = stopper.update(epoch, info.valLoss);
        if (d === "improved") arena.chunks.forEach((c, i) => gpu.copy(c.value, best[i]));
        if (d === "stop") {
          stoppedEarly = epoch + 1 < o.epochs;
          break;
        }
      }
    }
    if (val.length && stopper.bestEpoch >= 0) {
      arena.chunks.forEach((c, i) => gpu.copy(best[i], c.value));
    }
    return {
      shape,
      arena,
      history,
      bestEpoch: val.length ? stopper.bestEpoch : history.length - 1,
      stoppedEarly,
    };
  } catch (e) {
    arena.destroy();
    throw e;
  } finally {
    sgd.destroy();
    gpu.release(...temps);
  }
}

function oneHots(gpu: Gpu, c: number): GpuTensor[] {
  return Array.from({ length: c }, (_, k) => {
    const t = new Float32Array(c);
    t[k] = 1;
    return gpu.tensor(t, [1, c], "mil-onehot");
  });
}

/** Adds the cross-entropy of each bag in `bags` into `acc` [1] (no gradients). */
function bagLosses(
  gpu: Gpu,
  task: MilTask,
  shape: MilHeadShape,
  arena: ParamArena,
  bags: readonly number[],
  targets: GpuTensor[],
  acc: GpuTensor,
): void {
  const g = new Graph(gpu, { training: false });
  try {
    const ps = new Params(g, arena);
    for (const b of bags) {
      g.tidy(() => {
        const logits = milForward(ps, shape, g.input(task.store.view(b)));
        const loss = crossEntropySoft(g, logits, g.input(targets[task.codes[b]]));
        addInPlace(gpu, acc, loss.value);
      });
    }
  } finally {
    g.dispose();
  }
  gpu.flush();
}

/** Class logits [bags, C] of a trained head for `bags`, with one read-back. */
export async function milLogits(
  gpu: Gpu,
  task: MilTask,
  model: TrainedMil,
  bags: readonly number[],
): Promise<Float32Array> {
  const c = model.shape.classes;
  if (bags.length === 0) return new Float32Array(0);
  const out = gpu.empty([bags.length, c], "f32", "mil-logits");
  const g = new Graph(gpu, { training: false });
  try {
    const ps = new Params(g, model.arena);
    bags.forEach((b, i) => {
      g.tidy(() => {
        const logits = milForward(ps, model.shape, g.input(task.store.view(b)));
        gpu.copy(logits.value, out.view(i * c, [c]), c * 4);
      });
    });
  } finally {
    g.dispose();
  }
  try {
    return (await gpu.readF32(out)).slice();
  } finally {
    gpu.release(out);
  }
}

/** Argmax per row (ties to the smallest class index, as np.argmax). */
export function argmaxRows(logits: Float32Array, c: number): Int32Array {
  const n = logits.length / c;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let k = 1; k < c; k++) if (logits[i * c + k] > logits[i * c + best]) best = k;
    out[i] = best;
  }
  return out;
}

// ---------------------------------------------------------------- protocol

/** Cell embeddings with their labels and patients. */
export interface MilData {
  /** [rows, dim] row-major. */
  features: Float32Array;
  dim: number;
  labels: readonly string[];
  patients: readonly string[];
  /** Named in errors (a file path). */
  what?: string;
}

/** Options of `evaluateMil` / `crossValidateMil`. */
export interface MilEvalOptions extends MilTrainOptions {
  /** Row name, e.g. "DinoBloom-S". */
  method: string;
  /** Heads to run. Default both. */
  heads?: readonly MilHeadKind[];
  /** Progress lines ("ABMIL (gated), fold 2/5"). */
  onStage?: (stage: string) => void;
  /** Called with each trained head before its weights are freed (`eval --save` keeps them). */
  onTrained?: (
    t: { head: MilHeadKind; fold: number; model: TrainedMil; classes: string[] },
  ) => Promise<void> | void;
}

/** One head's outcome: one run per fold (one run without folds). */
export interface MilResult {
  head: MilHeadKind;
  protocol: string;
  runs: {
    patients: string[];
    truth: string[];
    predictions: string[];
    metrics: ClassificationMetrics;
    epochs: number;
    bestEpoch: number;
  }[];
}

/**
 * Trains each head on the training patients and scores it on the test
 * patients (patient-level accuracy, balanced accuracy, weighted F1).
 * Patients must not appear in both sets.
 */
export async function evaluateMil(
  gpu: Gpu,
  train: MilData,
  test: MilData,
  opts: MilEvalOptions,
): Promise<{ results: MilResult[]; rows: ReportRow[] }> {
  if (train.dim !== test.dim) {
    throw new RangeError(
      `MIL: ${test.what ?? "test"} has ${test.dim} features per cell but ${
        train.what ?? "train"
      } has ${train.dim}; embed both with the same model`,
    );
  }
  const trBags = patientBags(train.labels, train.patients, train.what ?? "train");
  const teBags = patientBags(test.labels, test.patients, test.what ?? "test");
  const trIds = new Set(trBags.map((b) => b.patient));
  const shared = teBags.find((b) => trIds.has(b.patient));
  if (shared) {
    throw new RangeError(
      `MIL: patient '${shared.patient}' is in both ${train.what ?? "train"} and ${
        test.what ?? "test"
      }; patient-level evaluation needs disjoint patients`,
    );
  }
  const features = new Float32Array(train.features.length + test.features.length);
  features.set(train.features);
  features.set(test.features, train.features.length);
  const offset = train.features.length / train.dim;
  const bags = [
    ...trBags,
    ...teBags.map((b) => ({ ...b, rows: b.rows.map((r) => r + offset) })),
  ];
  const splits = [{
    train: trBags.map((_, i) => i),
    test: teBags.map((_, i) => trBags.length + i),
  }];
  return await runMil(gpu, features, train.dim, bags, splits, opts);
}

/**
 * Patient-level stratified k-fold cross-validation (`stratifiedKFold` with
 * the patients as groups, shuffled with `seed`): each fold trains every
 * head on the other folds' patients and scores it on its own; rows report
 * mean ± std over folds.
 */
export async function crossValidateMil(
  gpu: Gpu,
  data: MilData,
  opts: MilEvalOptions & { folds: number },
): Promise<{ results: MilResult[]; rows: ReportRow[] }> {
  const bags = patientBags(data.labels, data.patients, data.what ?? "embeddings");
  const cellBag = new Int32Array(data.labels.length);
  bags.forEach((b, i) => b.rows.forEach((r) => (cellBag[r] = i)));
  const folds = stratifiedKFold(data.labels, {
    folds: opts.folds,
    shuffle: true,
    seed: opts.seed ?? 42,
    groups: data.patients,
  });
  // Cells of a patient are all on one side; map each side back to its bags.
  const toBags = (cells: number[]) =>
    [...new Set(cells.map((r) => cellBag[r]))].sort((a, b) => a - b);
  const splits = folds.map((f) => ({ train: toBags(f.train), test: toBags(f.test) }));
  return await runMil(gpu, data.features, data.dim, bags, splits, opts);
}

async function runMil(
  gpu: Gpu,
  features: Float32Array,
  dim: number,
  bags: Bag[],
  splits: { train: number[]; test: number[] }[],
  opts: MilEvalOptions,
): Promise<{ results: MilResult[]; rows: ReportRow[] }> {
  const heads = opts.heads ?? MIL_HEADS;
  const { classes, codes } = encodeLabels(bags.map((b) => b.label), undefined, "MIL: labels");
  if (classes.length < 2) {
    throw new RangeError(
      `MIL: every patient has the class ${JSON.stringify(classes[0])}; patient-level ` +
        `classification needs at least 2 classes`,
    );
  }
  const store = BagStore.upload(gpu, features, dim, bags);
  const task: MilTask = { store, codes, classes: classes as string[] };
  const seed = opts.seed ?? 42;
  const results: MilResult[] = [];
  try {
    for (const head of heads) {
      const result: MilResult = { head, protocol: milProtocolName(head), runs: [] };
      for (const [f, split] of splits.entries()) {
        if (split.test.length === 0) {
          throw new RangeError(`MIL: fold ${f + 1} has no test patients; use fewer folds`);
        }
        opts.onStage?.(
          `${result.protocol}${splits.length > 1 ? `, fold ${f + 1}/${splits.length}` : ""}: ` +
            `${split.train.length} training, ${split.test.length} test patients`,
        );
        const model = await trainMil(gpu, task, head, split.train, {
          ...opts,
          // Both heads of a fold see the same validation split and bag order.
          seed: (seed + 1000 * f) >>> 0,
        });
        try {
          const logits = await milLogits(gpu, task, model, split.test);
          const pred = argmaxRows(logits, classes.length);
          const truth = split.test.map((b) => bags[b].label);
          const predictions = Array.from(pred, (k) => classes[k] as string);
          result.runs.push({
            patients: split.test.map((b) => bags[b].patient),
            truth,
            predictions,
            metrics: classificationMetrics(truth, predictions),
            epochs: model.history.length,
            bestEpoch: model.bestEpoch,
          });
          await opts.onTrained?.({ head, fold: f, model, classes: classes as string[] });
        } finally {
          model.arena.destroy();
        }
      }
      results.push(result);
    }
  } finally {
    store.destroy();
  }
  return {
    results,
    rows: results.map((r) => reportRow(opts.method, r.protocol, r.runs.map((x) => x.metrics))),
  };
}
