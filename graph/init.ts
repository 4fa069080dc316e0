/**
 * Initial values for fresh parameters: DINOv2's initialisation, drawn from
 * bloom's seeded generator (graph/random.ts), so a seed gives the same
 * weights in training, `embed --random-weights`, the benchmarks and tests.
 */
import type { TensorData } from "../data/record.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { ParamArena, type ParamSpec } from "./arena.ts";
import { mulberry32, normal, type Random } from "./random.ts";
import { type VitConfig, vitParamSpecs } from "./vit.ts";

/**
 * Deterministic initial values for parameter `spec`, chosen by its name as
 * DINOv2 does: norms and weight-norm gains 1, LayerScale `layerScale`,
 * biases and the mask token 0, CLS and register tokens N(0, 1e-6²), the
 * heads' last layer nn.Linear's default U(±1/√fan_in), everything else
 * trunc_normal(std 0.02).
 */
export function initialValue(spec: ParamSpec, rand: Random, layerScale = 1e-5): Float32Array {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const name = spec.name;
  // trunc_normal(std): resample outside ±2 std.
  const trunc = (std: number) => {
    let v = normal(rand);
    while (Math.abs(v) > 2) v = normal(rand);
    return v * std;
  };
  if (/norm\d?\.weight$/.test(name) || name.endsWith("weight_g")) out.fill(1);
  else if (name.endsWith("gamma")) out.fill(layerScale);
  else if (name.endsWith(".bias") || name === "mask_token") out.fill(0);
  else if (name === "cls_token" || name === "register_tokens") {
    for (let i = 0; i < n; i++) out[i] = normal(rand) * 1e-6;
  } else if (name.endsWith("last_layer.weight_v")) {
    // nn.Linear's default init (the head's last layer is made after DINOv2's init pass).
    const bound = 1 / Math.sqrt(spec.shape[1]);
    for (let i = 0; i < n; i++) out[i] = (2 * rand() - 1) * bound;
  } else for (let i = 0; i < n; i++) out[i] = trunc(0.02);
  return out;
}

/**
 * A parameter arena on `gpu` for `specs`, each parameter its `initialValue`
 * drawn in order from mulberry32(`seed`): the random weights of
 * `embed --random-weights`, the benchmarks and the tests.
 */
export function randomArena(gpu: Gpu, specs: readonly ParamSpec[], seed = 0): ParamArena {
  const arena = ParamArena.create(gpu, specs);
  const rand = mulberry32(seed);
  for (const s of specs) arena.set(s.name, initialValue(s, rand));
  return arena;
}

/**
 * A fresh DINOv2-hub-layout state dict for `cfg` (f32, hub key names): each
 * parameter's `initialValue`, drawn in order from mulberry32(`seed`), then
 * uniform noise of ±`jitter`/2 per element, so LayerScale
 * does not mute the blocks and every image gets its own embedding. The
 * random checkpoints of the tests and benchmarks:
 * `writePth(path, randomVitWeights(cfg, seed, 0.05))`.
 */
export function randomVitWeights(
  cfg: VitConfig,
  seed: number,
  jitter = 0,
): Record<string, TensorData> {
  const rand = mulberry32(seed);
  const sd: Record<string, TensorData> = {};
  for (const s of vitParamSpecs(cfg)) {
    const v = initialValue(s, rand);
    // One draw per element even when `jitter` is 0, so a seed's weights do not depend on it.
    for (let i = 0; i < v.length; i++) v[i] += jitter * (rand() - 0.5);
    sd[s.name] = { dtype: "f32", shape: s.shape, data: v };
  }
  return sd;
}
