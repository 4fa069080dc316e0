/**
 * graph/init.ts: DINOv2's initialisation by parameter name, and the two ways
 * a seed becomes random weights (an arena on the GPU, a state dict on the host).
 */
import { initialValue, randomArena, randomVitWeights } from "../graph/init.ts";
import { mulberry32 } from "../graph/random.ts";
import { vitParamSpecs } from "../graph/vit.ts";
import { assert, assertEquals } from "./assert.ts";
import { TINY_EMBED_VIT } from "./fixtures.ts";
import { gpuTest } from "./helpers.ts";

Deno.test("initialValue: DINOv2's rule for each kind of parameter", () => {
  const rand = mulberry32(1);
  const value = (name: string, shape: number[]) => initialValue({ name, shape }, rand, 0.1);
  assert(value("blocks.0.norm1.weight", [8]).every((v) => v === 1), "norms 1");
  assert(value("head.weight_g", [4, 1]).every((v) => v === 1), "weight-norm gains 1");
  assert(value("blocks.0.ls1.gamma", [8]).every((v) => v === Math.fround(0.1)), "LayerScale");
  assert(value("blocks.0.attn.qkv.bias", [8]).every((v) => v === 0), "biases 0");
  assert(value("mask_token", [1, 8]).every((v) => v === 0), "mask token 0");
  const cls = value("cls_token", [1, 1, 64]);
  assert(cls.every((v) => Math.abs(v) < 1e-5) && cls.some((v) => v !== 0), "CLS N(0, 1e-6²)");
  const last = value("head.last_layer.weight_v", [16, 25]);
  assert(last.every((v) => Math.abs(v) <= 1 / 5), "last layer U(±1/√fan_in)");
  const w = value("blocks.0.mlp.fc1.weight", [32, 16]);
  // trunc_normal(std 0.02) resamples outside ±2 std; f32 rounding may land on the bound.
  assert(w.every((v) => Math.abs(v) <= Math.fround(0.04)), "truncated at ±2 std");
  const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
  // 512 draws of a truncated normal (std 0.88·0.02): the estimate is within ~10 %.
  assert(std > 0.014 && std < 0.022, `std ${std}`);
});

gpuTest("randomArena: each parameter's initialValue, drawn in order from the seed", async (gpu) => {
  const specs = vitParamSpecs(TINY_EMBED_VIT);
  const arena = randomArena(gpu, specs, 7);
  try {
    const rand = mulberry32(7);
    for (const s of specs) assertEquals(await arena.read(s.name), initialValue(s, rand), s.name);
    const other = randomArena(gpu, specs, 8);
    const name = "blocks.0.attn.qkv.weight";
    const [a, b] = [await arena.read(name), await other.read(name)];
    assert(a.some((v, i) => v !== b[i]), "another seed, other weights");
    other.destroy();
  } finally {
    arena.destroy();
  }
});

Deno.test("randomVitWeights: hub-layout f32 tensors for every parameter; jitter adds ±jitter/2", () => {
  const specs = vitParamSpecs(TINY_EMBED_VIT);
  const plain = randomVitWeights(TINY_EMBED_VIT, 5, 0);
  const noisy = randomVitWeights(TINY_EMBED_VIT, 5, 0.1);
  assertEquals(Object.keys(plain), specs.map((s) => s.name));
  for (const s of specs) {
    const [p, n] = [plain[s.name], noisy[s.name]];
    assertEquals([p.dtype, p.shape], ["f32", s.shape], s.name);
    // The same draws (one noise draw per element either way), so only the noise differs.
    const [pv, nv] = [p.data as Float32Array, n.data as Float32Array];
    const d = pv.map((v, i) => nv[i] - v);
    assert(d.every((v) => Math.abs(v) <= 0.05 + 1e-6), `${s.name}: noise within ±0.05`);
  }
  const norm = plain["norm.weight"].data as Float32Array;
  assert(norm.every((v) => v === 1), "jitter 0 keeps the init");
});
