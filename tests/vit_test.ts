/**
 * The ViT against PyTorch: checkpoints made by torch.save in the DINOv2 hub
 * layout, the DinoBloom layout and as safetensors give PyTorch's features and
 * gradients. The oracle (scripts/oracles/vit_features.py) runs Debian's torch;
 * these tests skip where it is absent.
 *
 * Tolerance: features and gradients within 1e-4 relative in the norm sense
 * (‖ours − torch‖ / ‖torch‖), f32 on both sides; measured ~1e-7 on the small
 * model and ~1e-6 at vit_small size. The f16-weight inference path (`precision:
 * "f16"`, where the adapter offers shader-f16) rounds every block weight to half
 * precision (2⁻¹¹ relative) with f32 sums: within TOL_F16 of torch's f32 forward.
 */
import { writePth } from "../data/pth_writer.ts";
import { CheckpointError, MissingKeyError } from "../data/errors.ts";
import { CheckpointMismatchError, loadCheckpoint, openCheckpoint } from "../graph/checkpoint.ts";
import { Graph } from "../graph/graph.ts";
import { add, mul, sum } from "../graph/ops.ts";
import { Params } from "../graph/params.ts";
import { vitForward, type VitOutputs } from "../graph/vit.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { gpuTest, hasPython } from "./helpers.ts";
import { type OracleArgs, type OracleRun, relErr, runVitOracle } from "./vit_oracle.ts";
import { openTensorFile } from "../data/open.ts";

const TOL = 1e-4;
/**
 * f16 weights: each rounded by ≤ 2⁻¹¹ relative; measured 4e-5–7e-5 at vit_small size (against
 * ~1e-6 in f32), so 1e-3 leaves ~15× headroom while a wrong unpacking (errors of order 1) fails.
 */
const TOL_F16 = 1e-3;
const torch = await hasPython("torch", "numpy");
const OUTPUTS = ["clsNorm", "patchNorm", "cls", "patch"] as const;

/** A GPU test that needs the PyTorch oracle (skipped without it). */
function oracleTest(name: string, fn: (gpu: Gpu) => Promise<void>) {
  gpuTest(name, fn, { ignore: !torch });
}

/** Loads `file` from an oracle run, runs forward (and backward), compares with torch. */
async function compare(
  gpu: Gpu,
  orc: OracleRun,
  file: string,
  opts: {
    heads?: number;
    masks?: boolean;
    grads?: boolean;
    posInterp?: "size";
    precision?: "f16";
  } = {},
) {
  const tol = opts.precision === "f16" ? TOL_F16 : TOL;
  const m = await loadCheckpoint(gpu, `${orc.dir}/${file}`, {
    grads: opts.grads,
    heads: opts.heads,
  });
  if (opts.posInterp) m.config.posInterp = opts.posInterp;
  const g = new Graph(gpu, { training: Boolean(opts.grads) });
  try {
    const ps = new Params(g, m.arena);
    const img = await orc.npy("images");
    const x = g.adopt(gpu.tensor(img.data, img.shape));
    let masks = null;
    if (opts.masks) {
      const mk = await orc.npy("masks");
      masks = g.adopt(gpu.tensor(Uint32Array.from(mk.data), [mk.data.length]));
    }
    const out = vitForward(ps, m.config, x, { masks, precision: opts.precision }) as VitOutputs;
    let loss = null;
    for (const k of OUTPUTS) {
      const ref = await orc.npy(`out_${k}`);
      assertEquals([...out[k].shape], ref.shape, `${file}: ${k} shape`);
      const err = relErr(await gpu.readF32(out[k].value), ref.data);
      assert(err < tol, `${file}: ${k} differs from torch by ${err.toExponential(2)}`);
      if (opts.precision === "f16") {
        // Rounding really happened (the path ran), and stayed within its tolerance.
        assert(err > 1e-5, `${file}: ${k} with f16 weights is as close as f32 (${err})`);
      }
      if (opts.grads) {
        const proj = await orc.npy(`proj_${k}`);
        const term = sum(g, mul(g, out[k], g.adopt(gpu.tensor(proj.data, proj.shape))), "all");
        loss = loss ? add(g, loss, term) : term;
      }
    }
    if (opts.grads && loss) {
      g.backward(loss);
      for (const n of orc.meta.grads) {
        const err = relErr(await m.arena.readGrad(n), (await orc.npy(`grad_${n}`)).data);
        assert(
          err < TOL,
          `${file}: gradient of ${n} differs from torch by ${err.toExponential(2)}`,
        );
      }
    }
    return m;
  } finally {
    g.dispose();
    m.arena.destroy();
  }
}

const small: OracleArgs = { image: 42, posGrid: 4, batch: 2, grads: true, masks: true, head: true };

oracleTest(
  "vit: small model from hub, DinoBloom and safetensors files matches torch",
  async (gpu) => {
    const orc = await runVitOracle(small);
    const layouts = new Map<string, string>();
    for (const f of ["hub.pth", "dinobloom.pth", "model.safetensors"]) {
      const ck = await openCheckpoint(`${orc.dir}/${f}`, { heads: 2 });
      layouts.set(f, ck.layout);
      ck.file.close();
      await compare(gpu, orc, f, { heads: 2, masks: true, grads: f === "hub.pth" });
    }
    assertEquals(Object.fromEntries(layouts), {
      "hub.pth": "dinov2-hub",
      "dinobloom.pth": "dinobloom",
      "model.safetensors": "timm",
    });
  },
);

oracleTest("vit: registers, SwiGLU and exact-size position resampling match torch", async (gpu) => {
  const a = await runVitOracle({ ...small, registers: 4, ffn: "swiglu" });
  await compare(gpu, a, "hub.pth", { heads: 2, masks: true, grads: true });
  const b = await runVitOracle({ ...small, masks: false, interp: "size", image: 56 });
  await compare(gpu, b, "hub.pth", { heads: 2, grads: true, posInterp: "size" });
});

oracleTest(
  "vit: real-size vit_small (224 px) in three layouts gives torch's features",
  async (gpu) => {
    const orc = await runVitOracle({ arch: "vit_small", image: 224, batch: 2, posGrid: 37 });
    for (const f of ["hub.pth", "dinobloom.pth", "model.safetensors"]) {
      const ck = await openCheckpoint(`${orc.dir}/${f}`);
      assertEquals(ck.config.arch, "vit_small");
      assertEquals(ck.config.posGrid, 37);
      ck.file.close();
      await compare(gpu, orc, f);
    }
    // The f16-weight inference path, where this adapter offers shader-f16.
    if (gpu.features.f16) await compare(gpu, orc, "hub.pth", { precision: "f16" });
    else console.warn("vit_test: the adapter offers no shader-f16; the f16 path is not checked");
    await Deno.remove(orc.dir, { recursive: true });
  },
);

oracleTest("vit: bad checkpoints name the file, the key and expected vs found", async () => {
  const orc = await runVitOracle({ image: 28, posGrid: 2, batch: 1 });
  const src = await openTensorFile(`${orc.dir}/hub.pth`);
  const tensors: Record<string, { dtype: "f32"; shape: readonly number[]; data: Float32Array }> =
    {};
  for (const [k, t] of src.tensors) {
    tensors[k] = { dtype: "f32", shape: t.shape, data: await t.f32() };
  }
  src.close();
  const dir = orc.dir;
  const write = async (name: string, edit: (t: typeof tensors) => void) => {
    const copy = { ...tensors };
    edit(copy);
    await writePth(`${dir}/${name}`, copy);
    return `${dir}/${name}`;
  };
  const missing = await write("missing.pth", (t) => delete t["blocks.1.norm1.bias"]);
  const e1 = await assertRejects(() => openCheckpoint(missing), MissingKeyError);
  assert(
    e1.message.includes("missing.pth") && e1.message.includes("blocks.1.norm1.bias"),
    e1.message,
  );
  const extra = await write("extra.pth", (t) => {
    t["blocks.0.attn.rope.freqs"] = { dtype: "f32", shape: [4], data: new Float32Array(4) };
  });
  const e2 = await assertRejects(
    () => openCheckpoint(extra),
    CheckpointMismatchError,
    "unexpected key",
  );
  assert(e2.message.includes("blocks.0.attn.rope.freqs"), e2.message);
  const shape = await write("shape.pth", (t) => {
    t["blocks.0.attn.proj.weight"] = { dtype: "f32", shape: [32, 16], data: new Float32Array(512) };
  });
  const e3 = await assertRejects(() => openCheckpoint(shape), CheckpointMismatchError, "[32,32]");
  assert(
    e3.message.includes("blocks.0.attn.proj.weight") && e3.message.includes("[32,16]"),
    e3.message,
  );
  const e4 = await assertRejects(
    () => openCheckpoint(`${dir}/hub.pth`, { arch: "vit_base" }),
    CheckpointMismatchError,
    "vit_base",
  );
  assert(e4.message.includes("dim 768") && e4.message.includes("dim 32"), e4.message);
  await Deno.writeFile(`${dir}/junk.pth`, new TextEncoder().encode("not a checkpoint at all"));
  await assertRejects(() => openCheckpoint(`${dir}/junk.pth`), CheckpointError, "junk.pth");
  await Deno.remove(dir, { recursive: true });
});

oracleTest("vit: the library's Model.load and embed give torch's embeddings", async (gpu) => {
  const { Model } = await import("../mod.ts");
  const orc = await runVitOracle({ image: 42, posGrid: 4, batch: 2 });
  const model = await Model.load(`${orc.dir}/dinobloom.pth`, { heads: 2, gpu });
  assertEquals(model.layout, "dinobloom");
  const img = await orc.npy("images");
  const e = await model.embed(img.data, [2, 3, 42, 42], { patchTokens: true });
  assertEquals([e.count, e.dim, e.patches, e.pool], [2, 32, 9, "cls"]);
  assert(relErr(e.features, (await orc.npy("out_clsNorm")).data) < TOL);
  assert(relErr(e.patchTokens!, (await orc.npy("out_patchNorm")).data) < TOL);
  model.dispose();
  await Deno.remove(orc.dir, { recursive: true });
});
