/**
 * A saved MIL head (eval/mil.ts: multi-column attention or gated ABMIL) and
 * its forward pass on the CPU in float64, which also returns the attention
 * each cell got, so `predict` can name the cells a patient-level call rests on.
 *
 * The maths is milForward's (eval/mil.ts), per bag H [n, D]:
 * - multi-column: `a_c = softmax_cells(W2 tanh(W0 H + b0) + b2)[:, c]`,
 *   `z_c = a_cᵀ H`, `logit_c = w2_c · relu(W0_c z_c + b0_c) + b2_c`;
 *   the attention reported for a cell is that of the predicted class's column.
 * - gated: `a = softmax(w · (tanh(V H + bv) ⊙ σ(U H + bu)) + bw)`, `z = aᵀ H`,
 *   `logits = Wc z + bc`.
 * Probabilities are the softmax of the logits.
 *
 * File contents (kind `mil`): the head's parameters under milParamSpecs'
 * names, F32; metadata `mil.kind` (multicolumn | gated),
 * `mil.attention_hidden`, `mil.classifier_hidden`, `mil.training` (JSON:
 * epochs run, best epoch).
 */
import type { ParamArena } from "../graph/arena.ts";
import {
  type EmbeddingModel,
  type HeadCommon,
  HeadFileError,
  metaNumber,
  openHeadFile,
  readF32,
  writeHeadFile,
} from "./head_file.ts";
import type { Label } from "./labels.ts";
import { type MilHeadKind, type MilHeadShape, milParamSpecs } from "./mil.ts";

/** What `MilHead.predictBag` returns for one patient. */
export interface MilBagPrediction {
  /** Index into `classes` of the predicted class (ties to the smallest index). */
  code: number;
  label: Label;
  logits: Float64Array;
  proba: Float64Array;
  /** Attention of each cell (sums to 1 over the bag): the predicted class's column for multi-column. */
  attention: Float64Array;
}

/** A trained MIL head held on the host. */
export class MilHead {
  readonly shape: MilHeadShape;
  readonly classes: Label[];
  readonly embedding: EmbeddingModel;
  readonly params: ReadonlyMap<string, Float32Array>;
  readonly trainedOn: Record<string, unknown>;
  readonly training: Record<string, unknown>;

  constructor(init: {
    shape: MilHeadShape;
    classes: Label[];
    embedding: EmbeddingModel;
    params: Map<string, Float32Array>;
    trainedOn?: Record<string, unknown>;
    training?: Record<string, unknown>;
  }) {
    const { shape, classes, embedding, params } = init;
    if (classes.length !== shape.classes) {
      throw new RangeError(`MilHead: ${classes.length} class names for ${shape.classes} classes`);
    }
    if (embedding.dim !== shape.dim) {
      throw new RangeError(`MilHead: head is ${shape.dim}-d, embedding model ${embedding.dim}-d`);
    }
    for (const s of milParamSpecs(shape)) {
      const v = params.get(s.name);
      const n = s.shape.reduce((a, b) => a * b, 1);
      if (!v || v.length !== n) {
        throw new RangeError(`MilHead: parameter ${s.name} needs ${n} values, got ${v?.length}`);
      }
    }
    this.shape = shape;
    this.classes = classes;
    this.embedding = embedding;
    this.params = params;
    this.trainedOn = init.trainedOn ?? {};
    this.training = init.training ?? {};
  }

  /** Reads a trained head's weights off the GPU (the arena stays the caller's). */
  static async fromArena(
    arena: ParamArena,
    shape: MilHeadShape,
    classes: Label[],
    embedding: EmbeddingModel,
    extra: { trainedOn?: Record<string, unknown>; training?: Record<string, unknown> } = {},
  ): Promise<MilHead> {
    const all = await arena.readAll();
    const params = new Map<string, Float32Array>();
    for (const s of milParamSpecs(shape)) params.set(s.name, all.get(s.name)!.slice());
    return new MilHead({ shape, classes, embedding, params, ...extra });
  }

  /** Forward pass on one bag `h` ([cells, dim] row-major). */
  predictBag(h: Float32Array | Float64Array, cells: number): MilBagPrediction {
    const { dim: D, classes: C } = this.shape;
    if (cells < 1 || h.length !== cells * D) {
      throw new RangeError(`MilHead: bag of ${h.length} values is not [cells ≥ 1, ${D}]`);
    }
    const A = this.shape.attentionHidden ?? 128;
    const Hc = this.shape.classifierHidden ?? 64;
    const p = (name: string) => this.params.get(name)!;
    const logits = new Float64Array(C);
    let attention: Float64Array;
    if (this.shape.kind === "multicolumn") {
      const hid = affine(h, cells, D, p("attention.0.weight"), p("attention.0.bias"), A, Math.tanh);
      const scores = affine(hid, cells, A, p("attention.2.weight"), p("attention.2.bias"), C);
      // att [C, n]: softmax over cells of each class column.
      const att = new Float64Array(C * cells);
      for (let c = 0; c < C; c++) {
        const col = Float64Array.from({ length: cells }, (_, i) => scores[i * C + c]);
        att.set(softmax(col), c * cells);
      }
      const W0 = p("classifier.0.weight"), b0 = p("classifier.0.bias");
      const w2 = p("classifier.2.weight"), b2 = p("classifier.2.bias");
      const z = new Float64Array(D);
      for (let c = 0; c < C; c++) {
        z.fill(0);
        for (let i = 0; i < cells; i++) {
          const a = att[c * cells + i];
          for (let j = 0; j < D; j++) z[j] += a * h[i * D + j];
        }
        let logit = b2[c];
        for (let u = 0; u < Hc; u++) {
          let s = b0[c * Hc + u];
          const o = (c * Hc + u) * D;
          for (let j = 0; j < D; j++) s += W0[o + j] * z[j];
          logit += w2[c * Hc + u] * Math.max(s, 0);
        }
        logits[c] = logit;
      }
      const code = argmax(logits);
      attention = att.slice(code * cells, (code + 1) * cells);
    } else {
      const av = affine(h, cells, D, p("attention_V.weight"), p("attention_V.bias"), A, Math.tanh);
      const au = affine(h, cells, D, p("attention_U.weight"), p("attention_U.bias"), A, sigmoid);
      const w = p("attention_w.weight"), bw = p("attention_w.bias")[0];
      const s = new Float64Array(cells);
      for (let i = 0; i < cells; i++) {
        let v = bw;
        for (let a = 0; a < A; a++) v += w[a] * av[i * A + a] * au[i * A + a];
        s[i] = v;
      }
      attention = softmax(s);
      const z = new Float64Array(D);
      for (let i = 0; i < cells; i++) {
        for (let j = 0; j < D; j++) z[j] += attention[i] * h[i * D + j];
      }
      const Wc = p("classifier.weight"), bc = p("classifier.bias");
      for (let c = 0; c < C; c++) {
        let v = bc[c];
        for (let j = 0; j < D; j++) v += Wc[c * D + j] * z[j];
        logits[c] = v;
      }
    }
    const code = argmax(logits);
    return { code, label: this.classes[code], logits, proba: softmax(logits), attention };
  }

  /** Writes the head as a head file (atomically). */
  async save(path: string): Promise<void> {
    const tensors: Record<string, { dtype: "f32"; shape: number[]; data: Float32Array }> = {};
    for (const s of milParamSpecs(this.shape)) {
      tensors[s.name] = { dtype: "f32", shape: [...s.shape], data: this.params.get(s.name)! };
    }
    const common: HeadCommon = {
      embedding: this.embedding,
      classes: this.classes,
      trainedOn: this.trainedOn,
    };
    await writeHeadFile(path, "mil", common, tensors, {
      "mil.kind": this.shape.kind,
      "mil.attention_hidden": String(this.shape.attentionHidden ?? 128),
      "mil.classifier_hidden": String(this.shape.classifierHidden ?? 64),
      "mil.training": JSON.stringify(this.training),
    });
  }

  /** Reads a MIL head file. */
  static async load(path: string): Promise<MilHead> {
    const h = await openHeadFile(path, "mil");
    try {
      const kind = h.meta["mil.kind"];
      if (kind !== "multicolumn" && kind !== "gated") {
        throw new HeadFileError(path, "mil.kind", `'${kind}' is not multicolumn|gated`);
      }
      const pos = (v: number) => Number.isInteger(v) && v >= 1;
      const shape: MilHeadShape = {
        kind: kind as MilHeadKind,
        dim: h.embedding.dim,
        classes: h.classes.length,
        attentionHidden: metaNumber(path, h.meta, "mil.attention_hidden", pos),
        classifierHidden: metaNumber(path, h.meta, "mil.classifier_hidden", pos),
      };
      let specs;
      try {
        specs = milParamSpecs(shape);
      } catch (e) {
        throw new HeadFileError(path, "classes", (e as Error).message);
      }
      const params = new Map<string, Float32Array>();
      for (const s of specs) {
        const v = await readF32(h, s.name, [...s.shape]);
        const bad = v.findIndex((x) => !Number.isFinite(x));
        if (bad >= 0) throw new HeadFileError(path, s.name, `value ${bad} is ${v[bad]}`);
        params.set(s.name, v);
      }
      let training: Record<string, unknown> = {};
      try {
        training = JSON.parse(h.meta["mil.training"] ?? "{}");
      } catch {
        throw new HeadFileError(path, "mil.training", "is not JSON");
      }
      return new MilHead({
        shape,
        classes: h.classes,
        embedding: h.embedding,
        params,
        trainedOn: h.trainedOn,
        training,
      });
    } finally {
      h.file.close();
    }
  }
}

/** `f(x Wᵀ + b)` for x [n, inDim], W [outDim, inDim]: [n, outDim] in float64. */
function affine(
  x: ArrayLike<number>,
  n: number,
  inDim: number,
  W: Float32Array,
  b: Float32Array,
  outDim: number,
  f: (v: number) => number = (v) => v,
): Float64Array {
  const out = new Float64Array(n * outDim);
  for (let i = 0; i < n; i++) {
    for (let o = 0; o < outDim; o++) {
      let s = b[o];
      const wo = o * inDim;
      const xo = i * inDim;
      for (let j = 0; j < inDim; j++) s += W[wo + j] * x[xo + j];
      out[i * outDim + o] = f(s);
    }
  }
  return out;
}

function sigmoid(v: number): number {
  return 1 / (1 + Math.exp(-v));
}

/** Softmax with the max shifted out. */
function softmax(v: Float64Array): Float64Array {
  let m = -Infinity;
  for (const x of v) m = Math.max(m, x);
  const out = Float64Array.from(v, (x) => Math.exp(x - m));
  let s = 0;
  for (const x of out) s += x;
  for (let i = 0; i < out.length; i++) out[i] /= s;
  return out;
}

/** First index of the largest value (np.argmax). */
function argmax(v: Float64Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}
