/**
 * The autodiff graph: a tape of ops, scopes that free intermediates, and
 * reverse-mode `backward`.
 *
 * Lifetimes (the part that leaks when done by hand): every tensor an op makes
 * is held once by the scope it was made in, and once more by each tape node
 * that saved it for backward. Leaving a `tidy` scope drops the scope's holds
 * (except on what the scope returns, which moves to the parent); running a
 * node's backward drops its saved holds. At zero the buffer returns to the
 * pool at once, which is safe mid-encoder (see kernels/pool.ts). Parameters
 * and external inputs are never freed by the graph.
 */
import { addInPlace, fill } from "../kernels/elementwise.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import type { Param } from "./arena.ts";
import { ACCUMULATED, type BackwardContext } from "./rule.ts";
import { type Attrs, type Prim, RULES } from "./rules.ts";
import { Tensor } from "./tensor.ts";

/** One recorded op. */
interface TapeNode {
  readonly index: number;
  readonly prim: Prim;
  readonly attrs: unknown;
  readonly inputs: Tensor[];
  readonly output: Tensor;
  /** Inputs kept for backward (by position), held by this node. */
  readonly savedInputs: readonly number[];
  readonly savedOutput: boolean;
  /** Extra tensors the forward made for backward (owned by this node). */
  aux: GpuTensor[];
  done: boolean;
}

/** Any value a scope may return: tensors, arrays and plain objects of them. */
type Returnable = unknown;

/** A tape plus scopes on one GPU. Make one per step. */
export class Graph {
  readonly gpu: Gpu;
  #nodes: TapeNode[] = [];
  #scopes: Tensor[][] = [[]];
  #recording: boolean;
  #leafGrads = new Map<Tensor, GpuTensor>();
  #disposed = false;

  /** `training` false: nothing is recorded (inference, the teacher). */
  constructor(gpu: Gpu, opts: { training?: boolean } = {}) {
    this.gpu = gpu;
    this.#recording = opts.training ?? true;
  }

  /** Whether ops are being recorded for backward. */
  get recording(): boolean {
    return this.#recording;
  }

  /** Number of recorded ops not yet differentiated. */
  get tapeLength(): number {
    return this.#nodes.length;
  }

  /** Runs `fn` with recording off (no tape, nothing saved). */
  noGrad<T>(fn: () => T): T {
    const was = this.#recording;
    this.#recording = false;
    try {
      return fn();
    } finally {
      this.#recording = was;
    }
  }

  /**
   * Runs `fn` in a scope: tensors it makes and does not return are released
   * when it ends (or kept alive only by tape nodes that saved them).
   */
  tidy<T extends Returnable>(fn: () => T): T {
    this.#scopes.push([]);
    let result: T;
    try {
      result = fn();
    } catch (e) {
      for (const t of this.#scopes.pop()!) this.#drop(t);
      throw e;
    }
    const scope = this.#scopes.pop()!;
    const keep = new Set<Tensor>();
    collectTensors(result, keep);
    const parent = this.#scopes[this.#scopes.length - 1];
    for (const t of scope) {
      if (keep.has(t)) parent.push(t);
      else this.#drop(t);
    }
    return result;
  }

  /** Wraps an external GPU tensor (not owned, no gradient unless asked for). */
  input(value: GpuTensor, opts: { requiresGrad?: boolean } = {}): Tensor {
    return new Tensor(value, { requiresGrad: opts.requiresGrad ?? false, owned: false });
  }

  /** Wraps a GPU tensor the graph now owns (released with its scope). */
  adopt(value: GpuTensor): Tensor {
    const t = new Tensor(value);
    this.#scopes[this.#scopes.length - 1].push(t);
    return t;
  }

  /** Records (or just runs) one op and returns its output. */
  apply<P extends Prim>(prim: P, inputs: Tensor[], attrs: Attrs[P]): Tensor {
    this.#alive();
    const rule = RULES[prim];
    const record = this.#recording && inputs.some((t) => t.requiresGrad);
    const res = rule.forward(this.gpu, inputs.map((t) => t.value), attrs, record);
    let output: Tensor;
    if (!record) {
      for (const a of res.aux ?? []) this.gpu.release(a);
      output = new Tensor(res.y, { owned: !res.view });
      if (res.view) this.#retainBase(output, inputs[0]);
    } else {
      const node: TapeNode = {
        index: this.#nodes.length,
        prim,
        attrs,
        inputs,
        output: undefined as unknown as Tensor,
        savedInputs: res.saveInputs ?? [],
        savedOutput: res.saveOutput ?? false,
        aux: res.aux ?? [],
        done: false,
      };
      output = new Tensor(res.y, { requiresGrad: true, producer: node, owned: !res.view });
      (node as { output: Tensor }).output = output;
      if (res.view) this.#retainBase(output, inputs[0]);
      for (const i of node.savedInputs) inputs[i].refs++;
      if (node.savedOutput) output.refs++;
      this.#nodes.push(node);
    }
    this.#scopes[this.#scopes.length - 1].push(output);
    return output;
  }

  /** A view keeps its base alive: the base is dropped when the view is. */
  #views = new Map<Tensor, Tensor>();
  #retainBase(view: Tensor, base: Tensor) {
    base.refs++;
    this.#views.set(view, base);
  }

  #drop(t: Tensor): void {
    if (--t.refs > 0) return;
    if (t.refs < 0) throw new Error(`tensor ${t.id} [${t.shape}] released too often`);
    const base = this.#views.get(t);
    if (base) {
      this.#views.delete(t);
      this.#drop(base);
    } else if (t.owned && t.value.pooled && !t.value.released) {
      this.gpu.release(t.value);
    }
  }

  /**
   * Back-propagates from `loss` (any shape; the seed is ones unless given).
   * Parameter gradients are added into the arena's gradient buffers, so
   * calling backward on several micro-batches accumulates. Gradients of
   * leaves made with `input(…, {requiresGrad: true})` are kept for `grad()`.
   * The tape is consumed: saved tensors are freed as soon as their node ran.
   * `onParamReady` is told, while backward is being recorded, of each
   * parameter whose gradient this backward will not touch again (a
   * data-parallel run starts reducing those gradients early).
   */
  backward(
    loss: Tensor,
    seed?: GpuTensor,
    opts: { onParamReady?: (p: Param) => void } = {},
  ): void {
    this.#alive();
    if (!loss.requiresGrad) {
      throw new Error("backward() on a tensor that does not require grad (made under noGrad?)");
    }
    const gpu = this.gpu;
    // A parameter's gradient is final once backward passes the first node that used it.
    const readyAt = new Map<number, Param[]>();
    if (opts.onParamReady) {
      const seen = new Set<Param>();
      for (const node of this.#nodes) {
        for (const t of node.inputs) {
          if (!t.param || !t.requiresGrad || seen.has(t.param)) continue;
          seen.add(t.param);
          readyAt.set(node.index, [...(readyAt.get(node.index) ?? []), t.param]);
        }
      }
    }
    const grads = new Map<Tensor, GpuTensor>();
    grads.set(loss, seed ?? fill(gpu, [...loss.shape], 1));
    for (let i = this.#nodes.length - 1; i >= 0; i--) {
      const node = this.#nodes[i];
      if (node.done) continue;
      const dy = grads.get(node.output);
      if (dy) {
        grads.delete(node.output);
        const needs = node.inputs.map((t) => t.requiresGrad);
        const targets = node.inputs.map((t) => t.param && t.requiresGrad ? t.param.grad : null);
        const xs: (GpuTensor | undefined)[] = node.inputs.map(() => undefined);
        for (const j of node.savedInputs) xs[j] = node.inputs[j].value;
        const ctx: BackwardContext<unknown> = {
          gpu,
          attrs: node.attrs,
          xs,
          y: node.savedOutput ? node.output.value : undefined,
          aux: node.aux,
          inShapes: node.inputs.map((t) => t.shape),
          needs,
          targets,
        };
        // deno-lint-ignore no-explicit-any
        const dxs = (RULES[node.prim].backward as any)(ctx, dy) as (
          | GpuTensor
          | null
          | typeof ACCUMULATED
        )[];
        // A rule may hand dy itself on as an input's gradient (reshape, add).
        const passed = dxs.some((d) => d && d !== ACCUMULATED && d.buffer === dy.buffer);
        if (!passed && dy !== seed) gpu.release(dy);
        for (let j = 0; j < node.inputs.length; j++) {
          const dx = dxs[j];
          const x = node.inputs[j];
          if (!needs[j] || dx === null || dx === undefined || dx === ACCUMULATED) continue;
          if (x.param) {
            addInPlace(gpu, x.param.grad, dx);
            gpu.release(dx);
          } else {
            const prev = grads.get(x);
            if (prev) {
              addInPlace(gpu, prev, dx);
              gpu.release(dx);
            } else {
              grads.set(x, dx);
            }
          }
        }
      }
      this.#finish(node);
      for (const p of readyAt.get(i) ?? []) opts.onParamReady!(p);
    }
    // What is left are gradients of leaves that are not parameters.
    for (const [t, g] of grads) {
      if (!t.producer && !t.param) {
        const prev = this.#leafGrads.get(t);
        if (prev) {
          addInPlace(gpu, prev, g);
          gpu.release(g);
        } else this.#leafGrads.set(t, g);
      } else gpu.release(g);
    }
    this.#nodes = [];
  }

  #finish(node: TapeNode) {
    node.done = true;
    for (const j of node.savedInputs) this.#drop(node.inputs[j]);
    if (node.savedOutput) this.#drop(node.output);
    for (const a of node.aux) this.gpu.release(a);
    node.aux = [];
  }

  /** The gradient accumulated for a non-parameter leaf, or null. */
  grad(t: Tensor): GpuTensor | null {
    return this.#leafGrads.get(t) ?? null;
  }

  /**
   * Keeps `t` alive past `dispose()`: its value is handed to the caller, who
   * must `gpu.release` it when done.
   */
  keep(t: Tensor): GpuTensor {
    if (this.#views.has(t)) {
      throw new Error("keep() of a view (reshape): keep its base tensor or copy it first");
    }
    t.owned = false;
    return t.value;
  }

  /** Frees every tensor the graph still holds (tape, scopes, leaf gradients). */
  dispose(): void {
    if (this.#disposed) return;
    for (const node of this.#nodes) if (!node.done) this.#finish(node);
    this.#nodes = [];
    while (this.#scopes.length) for (const t of this.#scopes.pop()!) this.#drop(t);
    for (const g of this.#leafGrads.values()) this.gpu.release(g);
    this.#leafGrads.clear();
    this.#disposed = true;
  }

  #alive() {
    if (this.#disposed) throw new Error("this Graph was disposed");
  }
}

function collectTensors(v: unknown, out: Set<Tensor>, depth = 0): void {
  if (depth > 4 || v === null || typeof v !== "object") return;
  if (v instanceof Tensor) {
    out.add(v);
    return;
  }
  if (Array.isArray(v)) {
    for (const x of v) collectTensors(x, out, depth + 1);
    return;
  }
  if (Object.getPrototypeOf(v) === Object.prototype) {
    for (const x of Object.values(v)) collectTensors(x, out, depth + 1);
  }
}
