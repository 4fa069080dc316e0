/**
 * Binds an arena's parameters into one graph: the same parameter is the same
 * Tensor everywhere in a step (so gradients from every use add up), and it
 * requires grad only when the model is being trained.
 */
import type { ParamArena } from "./arena.ts";
import type { Graph } from "./graph.ts";
import { Tensor } from "./tensor.ts";

/** Parameters of one arena as tensors of one graph. */
export class Params {
  readonly g: Graph;
  readonly arena: ParamArena;
  readonly trainable: boolean;
  #cache = new Map<string, Tensor>();

  constructor(g: Graph, arena: ParamArena, opts: { trainable?: boolean } = {}) {
    this.g = g;
    this.arena = arena;
    this.trainable = (opts.trainable ?? true) && g.recording && arena.hasGrads;
  }

  /** The parameter `name` as a leaf tensor. */
  get(name: string): Tensor {
    let t = this.#cache.get(name);
    if (!t) {
      const p = this.arena.get(name);
      t = new Tensor(p.value, {
        requiresGrad: this.trainable && p.trainable,
        param: p,
        owned: false,
      });
      this.#cache.set(name, t);
    }
    return t;
  }

  /** The parameter if the arena has it, else null. */
  maybe(name: string): Tensor | null {
    return this.arena.params.has(name) ? this.get(name) : null;
  }
}
