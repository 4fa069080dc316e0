/**
 * The autodiff graph: lifetimes (scopes, saved tensors, dispose), gradient
 * accumulation, no-grad mode, and every module's gradients against central
 * finite differences of the GPU forward.
 *
 * Finite-difference tolerance: the forward runs in f32, so a central
 * difference with h = 1e-2 carries ~1e-4 relative truncation error and
 * ~eps·|loss|/h ≈ 1e-4 absolute rounding error; we accept
 * |fd − analytic| ≤ 3e-2·|analytic| + 3e-3. (Whole-model gradients are
 * checked against PyTorch at 1e-4 in vit_test.ts.)
 */
import { ParamArena, type ParamSpec } from "../graph/arena.ts";
import { fusedLinear } from "../graph/fused.ts";
import { Graph } from "../graph/graph.ts";
import { headForward, headParamSpecs } from "../graph/heads.ts";
import {
  add,
  attention,
  broadcastTo,
  concat,
  crossEntropySoft,
  gatherRows,
  gelu,
  im2col,
  koleo,
  l2Normalize,
  layerNorm,
  linear,
  logSoftmax,
  maskRows,
  mean,
  mul,
  permute,
  reshape,
  slice,
  sum,
  swiglu,
} from "../graph/ops.ts";
import { Params } from "../graph/params.ts";
import type { Tensor } from "../graph/tensor.ts";
import { positionEmbedding, vitBlock, vitForward, vitParamSpecs } from "../graph/vit.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, Rng } from "./helpers.ts";
import { tinyVit } from "./fixtures.ts";

const RTOL = 3e-2;
const ATOL = 3e-3;

/** Random initial values: norms and gains near 1, everything else N(0, 0.5²). */
function initValues(spec: ParamSpec, rng: Rng): Float32Array {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const gain = /norm\d?\.weight$|weight_g$/.test(spec.name);
  const a = rng.normals(n, gain ? 0.1 : 0.5);
  if (gain) { for (let i = 0; i < n; i++) a[i] += 1; }
  return a;
}

/**
 * Checks d loss / d param for every parameter (a few coordinates each) and
 * for the inputs made with `input(…, true)`, against central differences.
 */
async function gradcheck(
  gpu: Gpu,
  specs: ParamSpec[],
  build: (
    g: Graph,
    ps: Params,
    input: (data: Float32Array, shape: number[], grad?: boolean) => Tensor,
  ) => Tensor,
  opts: { coords?: number; h?: number; seed?: number; what: string },
) {
  const rng = new Rng(opts.seed ?? 7);
  const arena = ParamArena.create(gpu, specs, { grads: true });
  const values = new Map(specs.map((s) => [s.name, initValues(s, rng)]));
  for (const [n, v] of values) arena.set(n, v);
  const inputs: { data: Float32Array; shape: number[]; grad: boolean }[] = [];
  let inputSeed = 0;
  const run = async (training: boolean, record?: (g: Graph, ins: Tensor[]) => Promise<void>) => {
    const g = new Graph(gpu, { training });
    let k = 0;
    const ins: Tensor[] = [];
    const input = (data: Float32Array, shape: number[], grad = false) => {
      if (inputSeed === 0 || k >= inputs.length) inputs.push({ data, shape, grad });
      const spec = inputs[k++];
      const t = g.input(gpu.tensor(spec.data, spec.shape), { requiresGrad: training && spec.grad });
      ins.push(t);
      return t;
    };
    try {
      const loss = build(g, new Params(g, arena), input);
      const value = (await gpu.readF32(loss.value))[0];
      if (record) {
        g.backward(loss);
        await record(g, ins);
      }
      inputSeed = 1;
      return value;
    } finally {
      g.dispose();
      for (const t of ins) gpu.release(t.value);
    }
  };
  arena.zeroGrads();
  const analytic = new Map<string, Float32Array>();
  await run(true, async (g, ins) => {
    for (const s of specs) analytic.set(s.name, await arena.readGrad(s.name));
    for (let i = 0; i < ins.length; i++) {
      const gr = g.grad(ins[i]);
      if (inputs[i].grad) {
        assert(gr, `${opts.what}: input ${i} got no gradient`);
        analytic.set(`input${i}`, await gpu.readF32(gr));
      }
    }
  });
  const h = opts.h ?? 1e-2;
  const coords = opts.coords ?? 3;
  const check = async (name: string, data: Float32Array, set: (d: Float32Array) => void) => {
    const an = analytic.get(name)!;
    for (let c = 0; c < coords; c++) {
      const i = rng.int(data.length);
      const v = data[i];
      data[i] = v + h;
      set(data);
      const fp = await run(false);
      data[i] = v - h;
      set(data);
      const fm = await run(false);
      data[i] = v;
      set(data);
      const fd = (fp - fm) / (2 * h);
      assert(
        Math.abs(fd - an[i]) <= RTOL * Math.abs(an[i]) + ATOL,
        `${opts.what}: d/d ${name}[${i}] analytic ${an[i]} vs finite difference ${fd}`,
      );
    }
  };
  for (const s of specs) {
    await check(s.name, values.get(s.name)!, (d) => arena.set(s.name, d));
  }
  for (let i = 0; i < inputs.length; i++) {
    if (inputs[i].grad) await check(`input${i}`, inputs[i].data, () => {});
  }
  arena.destroy();
}

/** Σ proj ⊙ y with a fixed random projection: a scalar that depends on every output. */
function project(g: Graph, y: Tensor, rng: Rng): Tensor {
  const proj = g.adopt(g.gpu.tensor(rng.normals(y.numel), [...y.shape]));
  return sum(g, mul(g, y, proj), "all");
}

const tiny = tinyVit({ dim: 8, mlpHidden: 12, posGrid: 3 });

gpuTest("graph: scopes, backward and dispose return every intermediate buffer", async (gpu) => {
  await gpu.sync();
  const arena = ParamArena.create(
    gpu,
    [{ name: "w", shape: [16, 8] }, { name: "b", shape: [16] }],
    {
      grads: true,
    },
  );
  arena.set("w", new Rng(1).normals(128));
  const base = gpu.pool.stats().liveBytes;
  const g = new Graph(gpu);
  const ps = new Params(g, arena);
  const x = g.adopt(gpu.tensor(new Rng(2).normals(40), [5, 8]));
  const loss = g.tidy(() => {
    const y = gelu(g, linear(g, x, ps.get("w"), ps.get("b")));
    return sum(g, mul(g, y, y), "all");
  });
  assert(g.tapeLength > 0);
  g.backward(loss);
  assertEquals(g.tapeLength, 0, "backward consumes the tape");
  g.dispose();
  assertEquals(gpu.pool.stats().liveBytes, base, "all graph buffers returned");
  const grad = await arena.readGrad("w");
  assert(grad.some((v) => v !== 0));
  arena.destroy();
});

gpuTest(
  "graph: parameter gradients accumulate over backward calls; zeroGrads resets",
  async (gpu) => {
    const arena = ParamArena.create(gpu, [{ name: "w", shape: [4, 3] }], { grads: true });
    arena.set("w", new Rng(3).normals(12));
    const x = gpu.tensor(new Rng(4).normals(6), [2, 3]);
    const once = async () => {
      const g = new Graph(gpu);
      g.backward(sum(g, linear(g, g.input(x), new Params(g, arena).get("w")), "all"));
      g.dispose();
      return await arena.readGrad("w");
    };
    const g1 = await once();
    const g2 = await once();
    for (let i = 0; i < 12; i++) assert(Math.abs(g2[i] - 2 * g1[i]) < 1e-5);
    arena.zeroGrads();
    assert((await arena.readGrad("w")).every((v) => v === 0));
    gpu.release(x);
    arena.destroy();
  },
);

gpuTest("graph: no-grad mode records nothing; backward without grad is an error", (gpu) => {
  const arena = ParamArena.create(gpu, [{ name: "w", shape: [4, 3] }], { grads: true });
  const g = new Graph(gpu, { training: false });
  const ps = new Params(g, arena);
  const y = linear(g, g.adopt(gpu.tensor(new Float32Array(6), [2, 3])), ps.get("w"));
  assertEquals(g.tapeLength, 0);
  assert(!ps.get("w").requiresGrad);
  assertThrows(() => g.backward(y), Error, "does not require grad");
  const g2 = new Graph(gpu);
  const z = g2.noGrad(() =>
    linear(g2, g2.adopt(gpu.tensor(new Float32Array(6), [2, 3])), new Params(g2, arena).get("w"))
  );
  assertEquals(g2.tapeLength, 0);
  assert(!z.requiresGrad);
  g.dispose();
  g2.dispose();
  arena.destroy();
});

gpuTest("gradients: Linear (weight, bias and input)", async (gpu) => {
  const rng = new Rng(10);
  await gradcheck(
    gpu,
    [{ name: "w", shape: [6, 5] }, { name: "b", shape: [6] }],
    (g, ps, input) => {
      const x = input(rng.normals(15), [3, 5], true);
      return project(g, linear(g, x, ps.get("w"), ps.get("b")), new Rng(11));
    },
    { what: "linear" },
  );
});

gpuTest("gradients: LayerNorm and LayerScale", async (gpu) => {
  await gradcheck(gpu, [
    { name: "norm.weight", shape: [7] },
    { name: "norm.bias", shape: [7] },
    { name: "gamma", shape: [7] },
  ], (g, ps, input) => {
    const x = input(new Rng(12).normals(21, 2), [3, 7], true);
    const y = layerNorm(g, x, ps.get("norm.weight"), ps.get("norm.bias"), 1e-6);
    return project(g, mul(g, y, ps.get("gamma")), new Rng(13));
  }, { what: "layernorm+layerscale" });
});

gpuTest("gradients: multi-head self-attention module (qkv, attention, proj)", async (gpu) => {
  await gradcheck(gpu, [
    { name: "qkv.weight", shape: [24, 8] },
    { name: "qkv.bias", shape: [24] },
    { name: "proj.weight", shape: [8, 8] },
    { name: "proj.bias", shape: [8] },
  ], (g, ps, input) => {
    const x = input(new Rng(14).normals(2 * 5 * 8), [2, 5, 8], true);
    const a = attention(g, linear(g, x, ps.get("qkv.weight"), ps.get("qkv.bias")), 2);
    return project(g, linear(g, a, ps.get("proj.weight"), ps.get("proj.bias")), new Rng(15));
  }, { what: "attention" });
});

gpuTest("gradients: MLP (GELU) and SwiGLU feed-forward", async (gpu) => {
  await gradcheck(gpu, [
    { name: "fc1.weight", shape: [12, 6] },
    { name: "fc1.bias", shape: [12] },
    { name: "fc2.weight", shape: [6, 12] },
    { name: "fc2.bias", shape: [6] },
    { name: "w12.weight", shape: [16, 6] },
    { name: "w12.bias", shape: [16] },
    { name: "w3.weight", shape: [6, 8] },
    { name: "w3.bias", shape: [6] },
  ], (g, ps, input) => {
    const x = input(new Rng(16).normals(18), [3, 6], true);
    const h = gelu(g, linear(g, x, ps.get("fc1.weight"), ps.get("fc1.bias")));
    const mlp = linear(g, h, ps.get("fc2.weight"), ps.get("fc2.bias"));
    const s = swiglu(g, linear(g, x, ps.get("w12.weight"), ps.get("w12.bias")));
    const glu = linear(g, s, ps.get("w3.weight"), ps.get("w3.bias"));
    return add(g, project(g, mlp, new Rng(17)), project(g, glu, new Rng(18)));
  }, { what: "mlp+swiglu" });
});

gpuTest("gradients: transformer block (training path of fusedLinear)", async (gpu) => {
  const specs = vitParamSpecs(tiny).filter((s) => s.name.startsWith("blocks.0."));
  await gradcheck(gpu, specs, (g, ps, input) => {
    const x = input(new Rng(19).normals(2 * 4 * 8), [2, 4, 8], true);
    return project(g, vitBlock(ps, tiny, 0, x), new Rng(20));
  }, { what: "block", coords: 2 });
});

gpuTest("gradients: patch embedding, mask token, CLS and position resampling", async (gpu) => {
  const specs = vitParamSpecs(tiny).filter((s) =>
    !s.name.startsWith("blocks.") && !s.name.startsWith("norm.")
  );
  await gradcheck(gpu, specs, (g, ps, input) => {
    // 2 images of 28×28: a 2×2 patch grid, resampled from the stored 3×3 position grid.
    const img = input(new Rng(21).normals(2 * 3 * 28 * 28), [2, 3, 28, 28], true);
    const mask = g.adopt(gpu.tensor(new Uint32Array([1, 0, 0, 1, 0, 1, 1, 0]), [8]));
    const cols = im2col(g, img, 14);
    const w = reshape(g, ps.get("patch_embed.proj.weight"), [8, 3 * 14 * 14]);
    let x = linear(g, cols, w, ps.get("patch_embed.proj.bias"));
    x = maskRows(g, x, mask, reshape(g, ps.get("mask_token"), [8]));
    x = reshape(g, x, [2, 4, 8]);
    x = concat(g, [broadcastTo(g, ps.get("cls_token"), [2, 1, 8]), x], 1);
    x = add(g, x, positionEmbedding(ps, tiny, 2, 2));
    return project(g, x, new Rng(22));
  }, { what: "tokens", coords: 2 });
});

gpuTest(
  "gradients: DINO head (MLP, L2 normalisation, weight-normalised prototypes)",
  async (gpu) => {
    const specs = headParamSpecs("dino_head", {
      inDim: 6,
      hidden: 10,
      bottleneck: 4,
      prototypes: 9,
    });
    await gradcheck(gpu, specs, (g, ps, input) => {
      const x = input(new Rng(23).normals(18), [3, 6], true);
      return project(g, headForward(ps, "dino_head", x), new Rng(24));
    }, { what: "dino head", coords: 2 });
  },
);

gpuTest("gradients: losses (soft cross-entropy, log-softmax, KoLeo, L2 norm)", async (gpu) => {
  await gradcheck(gpu, [{ name: "w", shape: [5, 4] }], (g, ps, input) => {
    const x = input(new Rng(25).normals(24), [6, 4], true);
    const logits = linear(g, x, ps.get("w"));
    const t = g.adopt(gpu.tensor(new Rng(26).floats(30, 0, 1), [6, 5]));
    const ce = mean(g, crossEntropySoft(g, logits, t, 0.5), "all");
    const ls = project(g, logSoftmax(g, logits, 2), new Rng(27));
    const ko = koleo(g, x, 1e-4);
    const l2 = project(g, l2Normalize(g, logits), new Rng(28));
    return add(g, add(g, ce, ls), add(g, ko, l2));
  }, { what: "losses" });
});

gpuTest("gradients: layout ops (slice, concat, permute, gather, broadcast)", async (gpu) => {
  await gradcheck(gpu, [{ name: "p", shape: [1, 3] }], (g, ps, input) => {
    const x = input(new Rng(29).normals(24), [2, 4, 3], true);
    const idx = g.adopt(gpu.tensor(new Uint32Array([0, 2, 2, 7]), [4]));
    const rows = gatherRows(g, reshape(g, x, [8, 3]), idx);
    const p = permute(g, slice(g, x, 1, 1, 2), [2, 0, 1]);
    const c = concat(g, [rows, broadcastTo(g, ps.get("p"), [2, 3])], 0);
    return add(g, project(g, p, new Rng(30)), project(g, c, new Rng(31)));
  }, { what: "layout" });
});

gpuTest("fusedLinear: inference fusion equals the unfused ops", async (gpu) => {
  const rng = new Rng(32);
  const arena = ParamArena.create(gpu, [
    { name: "w", shape: [6, 5] },
    { name: "b", shape: [6] },
    { name: "s", shape: [6] },
  ]);
  for (const n of ["w", "b", "s"]) arena.set(n, rng.normals(arena.get(n).numel));
  const x = gpu.tensor(rng.normals(15), [3, 5]);
  const r = gpu.tensor(rng.normals(18), [3, 6]);
  const g = new Graph(gpu, { training: false });
  const ps = new Params(g, arena);
  const fused = fusedLinear(g, g.input(x), ps.get("w"), ps.get("b"), {
    activation: "gelu",
    scale: ps.get("s"),
    residual: g.input(r),
  });
  const plain = add(
    g,
    g.input(r),
    mul(g, gelu(g, linear(g, g.input(x), ps.get("w"), ps.get("b"))), ps.get("s")),
  );
  const a = await gpu.readF32(fused.value);
  const b = await gpu.readF32(plain.value);
  for (let i = 0; i < a.length; i++) assert(Math.abs(a[i] - b[i]) < 1e-5, `element ${i}`);
  g.dispose();
  gpu.release(x, r);
  arena.destroy();
});

gpuTest(
  "graph: a fixed-shape forward+backward is recorded once and replayed with one submit",
  async (gpu) => {
    const rng = new Rng(40);
    const cfg = { ...tiny, posGrid: 2 };
    const arena = ParamArena.create(gpu, vitParamSpecs(cfg), { grads: true });
    for (const p of arena.order) arena.set(p.name, initValues(p, rng));
    const images = gpu.tensor(rng.normals(2 * 3 * 28 * 28), [2, 3, 28, 28]);
    const proj = gpu.tensor(rng.normals(16), [2, 8]);
    const step = () => {
      arena.zeroGrads();
      const g = new Graph(gpu);
      const out = vitForward(new Params(g, arena), cfg, g.input(images), { outputs: ["clsNorm"] });
      const loss = sum(g, mul(g, out.clsNorm!, g.input(proj)), "all");
      g.backward(loss);
      const value = g.keep(loss);
      g.dispose();
      return value;
    };
    const { recording, result: loss } = await gpu.capture(step);
    const first = await arena.readGrad("blocks.0.attn.qkv.weight");
    gpu.write(images, rng.normals(2 * 3 * 28 * 28));
    const submits = gpu.stats().submits;
    gpu.replay(recording);
    assertEquals(gpu.stats().submits, submits + 1, "the whole step in one submit");
    const replayed = await arena.readGrad("blocks.0.attn.qkv.weight");
    const replayedLoss = (await gpu.readF32(loss))[0];
    const fresh = step();
    const freshGrad = await arena.readGrad("blocks.0.attn.qkv.weight");
    assertEquals([...replayed], [...freshGrad], "replay equals a fresh run on the new inputs");
    assertEquals(replayedLoss, (await gpu.readF32(fresh))[0]);
    assert(replayed.some((v, i) => v !== first[i]), "the new inputs changed the gradients");
    gpu.disposeRecording(recording);
    gpu.release(images, proj, loss, fresh);
    arena.destroy();
  },
);

gpuTest(
  "graph: Linear's weight gradient is summed over row blocks past the binding limit",
  async (gpu) => {
    const rng = new Rng(50);
    const arena = ParamArena.create(gpu, [{ name: "w", shape: [24, 8] }], { grads: true });
    arena.set("w", rng.normals(24 * 8));
    const x = gpu.tensor(rng.normals(512 * 8), [512, 8]);
    const proj = gpu.tensor(rng.normals(512 * 24), [512, 24]);
    const grad = async () => {
      arena.zeroGrads();
      const g = new Graph(gpu);
      const y = linear(g, g.input(x), new Params(g, arena).get("w"));
      g.backward(sum(g, mul(g, y, g.input(proj)), "all"));
      g.dispose();
      return await arena.readGrad("w");
    };
    const whole = await grad();
    const limit = gpu.limits.maxStorageBufferBindingSize;
    // x is 16 KiB but y and dy [512, 24] are 48 KiB: with a 24 KiB limit the forward splits its
    // output rows and dW is summed over aligned row blocks.
    gpu.limits.maxStorageBufferBindingSize = 24576;
    try {
      const blocked = await grad();
      for (let i = 0; i < whole.length; i++) {
        assert(Math.abs(blocked[i] - whole[i]) <= 1e-5 * (1 + Math.abs(whole[i])), `element ${i}`);
      }
    } finally {
      gpu.limits.maxStorageBufferBindingSize = limit;
    }
    gpu.release(x, proj);
    arena.destroy();
  },
);
