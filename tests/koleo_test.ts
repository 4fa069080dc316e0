/** KoLeo: reference, ties, finite differences and PyTorch golden values. */
import {
  koleo,
  koleoBackward,
  koleoBackwardRef,
  koleoRef,
  type KoleoSaved,
} from "../kernels/koleo.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { finiteDifference, gpuTest, Rng } from "./helpers.ts";

interface KoleoCase {
  shape: [number, number];
  eps: number;
  pdistEps: number;
  x: number[];
  loss: number;
  nn: number[];
  dloss: number;
  dx: number[];
}
const fixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/norms.json", import.meta.url)),
) as { koleo: KoleoCase[] };

function release(gpu: Gpu, s: KoleoSaved, ...more: GpuTensor[]) {
  gpu.release(s.xn, s.norm, s.nn, s.dist, ...more);
}

/** Runs forward (and backward for `dloss`) and reads everything back. */
async function run(gpu: Gpu, x: Float32Array, cols: number, dloss = 1) {
  const xT = gpu.tensor(x, [x.length / cols, cols]);
  const dl = gpu.tensor(new Float32Array([dloss]));
  const f = koleo(gpu, xT);
  const dxT = koleoBackward(gpu, dl, xT, f.saved);
  const [loss, dist, dx] = await Promise.all(
    [f.loss, f.saved.dist, dxT].map((t) => gpu.readF32(t)),
  );
  const nn = await gpu.read(f.nn);
  release(gpu, f.saved, xT, dl, f.loss, dxT);
  return { loss: loss[0], nn: [...nn], dist, dx };
}

gpuTest("koleo: loss, neighbours and distances match the float64 reference", async (gpu) => {
  const rng = new Rng(1);
  for (const [rows, cols] of [[1, 8], [2, 4], [5, 7], [12, 32], [33, 64], [70, 384]]) {
    const x = rng.normals(rows * cols);
    const r = await run(gpu, x, cols);
    const ref = koleoRef(x, cols);
    const what = `[${rows}, ${cols}]`;
    assertEquals(r.nn, [...ref.nn], `neighbours ${what}`);
    // d is a norm of differences of unit rows (each ~√D/2 ulp off): absolute error ~1e-7·√D.
    assertClose(r.dist, ref.dist, { rtol: 1e-5, atol: 1e-7 * Math.sqrt(cols) }, `dist ${what}`);
    assertClose([r.loss], [ref.loss], { rtol: 1e-5, atol: 1e-6 }, `loss ${what}`);
  }
});

gpuTest(
  "koleo: ties go to the first maximum; duplicates and zero rows stay finite",
  async (gpu) => {
    const rng = new Rng(2);
    const cols = 6;
    const row = rng.normals(cols);
    const x = new Float32Array(6 * cols);
    for (let i = 0; i < 3; i++) x.set(row, i * cols); // rows 0, 1, 2 identical
    x.set(rng.normals(2 * cols), 3 * cols); // rows 3, 4 random, row 5 zero
    const r = await run(gpu, x, cols);
    const ref = koleoRef(x, cols);
    assertEquals(r.nn.slice(0, 3), [1, 0, 0], "torch.max picks the first of equal dots");
    assertEquals(r.nn, [...ref.nn]);
    // Duplicates sit ‖1e-8·1‖ = 1e-8·√6 apart: the loss is dominated by −log(eps).
    assertClose(r.dist.subarray(0, 3), ref.dist.subarray(0, 3), { rtol: 1e-3, atol: 0 });
    assertClose([r.loss], [ref.loss], { rtol: 1e-5, atol: 0 }, "loss");
    assert(r.dx.every(Number.isFinite), "finite gradient");
    assertClose(r.dx, koleoBackwardRef(1, x, cols), { rtol: 1e-3, atol: 1e-3 }, "dx");
  },
);

gpuTest("koleo backward matches finite differences and the float64 rule", async (gpu) => {
  const rng = new Rng(3);
  for (const [rows, cols, dloss] of [[2, 3, 1], [6, 5, 0.7], [9, 8, -2]]) {
    const x = rng.normals(rows * cols);
    const r = await run(gpu, x, cols, dloss);
    const f = (v: Float64Array) => dloss * koleoRef(v, cols).loss;
    // h = 1e-4 is far below the gap to the second-nearest neighbour, so I stays fixed.
    const fd = finiteDifference(f, x, 1e-4);
    const what = `[${rows}, ${cols}]`;
    assertClose(r.dx, fd, { rtol: 1e-3, atol: 1e-4 }, `dx vs FD ${what}`);
    assertClose(r.dx, koleoBackwardRef(dloss, x, cols), { rtol: 1e-4, atol: 1e-6 }, `dx ${what}`);
  }
  // A larger batch against the rule only (finite differences would take N·D loss evaluations).
  const x = rng.normals(40 * 384);
  const r = await run(gpu, x, 384, 0.1);
  assertClose(r.dx, koleoBackwardRef(0.1, x, 384), { rtol: 1e-4, atol: 1e-7 }, "dx [40, 384]");
});

gpuTest("koleo matches PyTorch 1.13 (DINOv2 KoLeoLoss, eps 1e-4; fixture)", async (gpu) => {
  for (const c of fixture.koleo) {
    const [, cols] = c.shape;
    const x = Float32Array.from(c.x);
    const r = await run(gpu, x, cols, c.dloss);
    const what = `[${c.shape}]`;
    assertEquals(r.nn, c.nn, `neighbours ${what}`);
    // Both f32, different summation orders.
    assertClose([r.loss], [c.loss], { rtol: 1e-5, atol: 1e-6 }, `loss ${what}`);
    assertClose(r.dx, c.dx, { rtol: 1e-4, atol: 1e-6 }, `dx ${what}`);
  }
});

gpuTest("koleo: bad shapes get clear errors", (gpu) => {
  const x1 = gpu.zeros([8]);
  const x = gpu.zeros([4, 8]);
  assertThrows(() => koleo(gpu, x1), RangeError, "koleo: x must be [N, D]");
  assertThrows(() => koleo(gpu, x, { eps: -1 }), RangeError, "eps");
  const f = koleo(gpu, x);
  const dl2 = gpu.zeros([2]);
  assertThrows(() => koleoBackward(gpu, dl2, x, f.saved), RangeError, "koleoBackward: dloss");
  const other = gpu.zeros([3, 8]);
  const dl = gpu.zeros([1]);
  assertThrows(() => koleoBackward(gpu, dl, other, f.saved), RangeError, "saved tensors");
  release(gpu, f.saved, x1, x, f.loss, dl2, other, dl);
});
