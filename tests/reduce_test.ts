/**
 * Reductions against float64 references. Tolerances follow the summation
 * scheme (no sequential run longer than ~64 terms, then trees/blocks): each
 * check allows rtol 1e-5 plus an absolute 2e-6·Σ|x| of the reduced slice
 * (sums of mixed signs can cancel to near 0, where only an absolute bound
 * means anything). max/argmax/broadcastTo move values and are exact.
 */
import { GpuLimitError } from "../kernels/errors.ts";
import {
  argmax,
  argmaxRef,
  broadcastTo,
  broadcastToRef,
  max,
  maxRef,
  mean,
  meanRef,
  type ReduceOptions,
  sqNorm,
  sqNormRef,
  sum,
  sumRef,
  sumToShape,
  sumToShapeRef,
} from "../kernels/reduce.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { type GpuTensor, numel } from "../kernels/tensor.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { finiteDifference, gpuTest, Rng } from "./helpers.ts";

const rng = new Rng(11);

/** The absolute part of the tolerance: 2e-6 × the largest Σ|x| over the reduced slices. */
function absTol(x: Float32Array, shape: number[], opts: ReduceOptions): number {
  const abs = sumRef(x.map(Math.abs), shape, opts);
  return 2e-6 * Math.max(1, ...abs);
}

async function check(
  gpu: Gpu,
  x: Float32Array,
  shape: number[],
  opts: ReduceOptions,
): Promise<void> {
  const t = gpu.tensor(x, shape);
  const what = `[${shape}] ${JSON.stringify(opts)}`;
  const atol = absTol(x, shape, opts);
  const s = sum(gpu, t, opts);
  const m = mean(gpu, t, opts);
  const q = sqNorm(gpu, t, opts);
  const mx = max(gpu, t, opts);
  assertClose(await gpu.readF32(s), sumRef(x, shape, opts), { rtol: 1e-5, atol }, `sum ${what}`);
  const len = numel(shape) / Math.max(1, s.numel);
  assertClose(await gpu.readF32(m), meanRef(x, shape, opts), {
    rtol: 1e-5,
    atol: atol / len,
  }, `mean ${what}`);
  const sq = x.map((v) => v * v);
  assertClose(await gpu.readF32(q), sqNormRef(x, shape, opts), {
    rtol: 1e-5,
    atol: absTol(sq, shape, opts),
  }, `sqNorm ${what}`);
  assertEquals([...await gpu.readF32(mx)], [...maxRef(x, shape, opts)], `max ${what}`);
  gpu.release(t, s, m, q, mx);
}

gpuTest("reduce: sum/mean/sqNorm/max on every axis of small and odd shapes", async (gpu) => {
  const cases: [number[], ReduceOptions][] = [
    [[5, 7], {}],
    [[5, 7], { axis: 0 }],
    [[5, 8], { axis: 0 }], // vec4 columns
    [[5, 7], { axis: "all" }],
    [[3, 4, 8], { axis: 1 }],
    [[2, 3, 5], { axis: 1, keepDims: true }],
    [[2, 3, 5], { axis: -3 }],
    [[1], {}],
    [[1, 1], { axis: 0 }],
    [[4, 1, 3], { axis: 1 }], // reducing a size-1 axis
    [[6], { axis: 0 }],
    [[3, 130], {}], // rows longer than one 64-wide sweep
    [[2, 9001], {}], // odd long rows: several segments, scalar loads
    [[2, 8192 * 4 + 4], {}], // vec4 rows over several segments
    [[300, 384], {}], // many DINOv2-width rows
    [[3001, 12], { axis: 0 }], // tall columns: chunked, two stages
    [[2, 700, 4], { axis: 1 }],
  ];
  for (const [shape, opts] of cases) await check(gpu, rng.floats(numel(shape)), shape, opts);
});

gpuTest("reduce: output shapes, keepDims, empty axes", async (gpu) => {
  const t = gpu.tensor(rng.floats(24), [2, 3, 4]);
  assertEquals(sum(gpu, t).shape, [2, 3]);
  assertEquals(sum(gpu, t, { axis: 1, keepDims: true }).shape, [2, 1, 4]);
  assertEquals(sum(gpu, t, { axis: "all" }).shape, []);
  assertEquals(sum(gpu, t, { axis: "all", keepDims: true }).shape, [1, 1, 1]);
  assertThrows(() => sum(gpu, t, { axis: 3 }), RangeError, /sum: axis 3 is out of range/);
  const e = gpu.zeros([3, 0]);
  assertEquals([...await gpu.readF32(sum(gpu, e))], [0, 0, 0]);
  assert((await gpu.readF32(mean(gpu, e))).every(Number.isNaN), "mean of nothing is NaN");
  assertThrows(() => max(gpu, e), RangeError, /empty axis/);
  assertEquals(sum(gpu, e, { axis: 0 }).shape, [0]);
  const u = gpu.tensor(new Uint32Array(4));
  assertThrows(() => sum(gpu, u), TypeError, /sum: x must be f32/);
});

gpuTest("reduce: a sum of 1e7 values keeps ~1e-6 relative accuracy", async (gpu) => {
  const n = 10_000_000;
  const x = new Float32Array(n);
  let exact = 0;
  for (let i = 0; i < n; i++) {
    x[i] = 0.5 + rng.next(); // all positive: a naive f32 running sum drifts by ~1e-3 here
    exact += x[i];
  }
  const t = gpu.tensor(x);
  const got = (await gpu.readF32(sum(gpu, t, { axis: "all" })))[0];
  assert(Math.abs(got - exact) / exact < 1e-6, `sum ${got} vs ${exact}`);
  const got2 = (await gpu.readF32(sum(gpu, t, { axis: "all" })))[0];
  assertEquals(got2, got, "deterministic");
  // The same values as [10000, 1000] summed over axis 0 (column path, two stages).
  const cols = sum(gpu, t.reshape([10000, 1000]), { axis: 0 });
  const ref = sumRef(x, [10000, 1000], { axis: 0 });
  assertClose(await gpu.readF32(cols), ref, { rtol: 1e-6, atol: 0 });
  gpu.release(t, cols);
});

gpuTest("reduce: max and argmax with ties, NaN and infinities", async (gpu) => {
  const x = new Float32Array([
    1,
    3,
    3,
    -1, //
    -Infinity,
    -Infinity,
    -Infinity,
    -Infinity, //
    2,
    NaN,
    5,
    NaN, //
    Infinity,
    0,
    Infinity,
    1e38, //
  ]);
  const t = gpu.tensor(x, [4, 4]);
  // torch: max propagates NaN; argmax takes the first max, and a NaN is the max.
  assertEquals([...await gpu.readF32(max(gpu, t))], [3, -Infinity, NaN, Infinity]);
  assertEquals([...await gpu.read(argmax(gpu, t))], [1, 0, 1, 0]);
  assertEquals([...await gpu.read(argmax(gpu, t, 0))], [...argmaxRef(x, [4, 4], 0)]);
  assertEquals([...await gpu.readF32(max(gpu, t, { axis: 0 }))], [
    ...maxRef(x, [4, 4], { axis: 0 }),
  ]);
  for (const [shape, axis] of [[[7, 300], -1], [[5, 6, 3], 1], [[9], 0], [[2, 5000], 1]] as const) {
    const v = rng.floats(numel(shape));
    for (let i = 0; i < v.length; i += 7) v[i] = 0.25; // plant ties
    const tv = gpu.tensor(v, [...shape]);
    const a = argmax(gpu, tv, axis);
    assertEquals(a.dtype, "u32");
    assertEquals([...await gpu.read(a)], [...argmaxRef(v, shape, axis)], `argmax [${shape}]`);
    gpu.release(tv, a);
  }
  // Sums carry NaN and Inf through as IEEE arithmetic does.
  const s = await gpu.readF32(sum(gpu, t));
  assertEquals([...s], [6, -Infinity, NaN, Infinity]);
  gpu.release(t);
});

gpuTest("reduce: sumToShape and broadcastTo match references", async (gpu) => {
  const cases: [number[], number[]][] = [
    [[4, 5], [5]],
    [[4, 5], [4, 1]],
    [[2, 3, 4], [1, 3, 1]],
    [[2, 3, 4], [3, 4]],
    [[2, 3, 4], [2, 1, 4]],
    [[2, 3, 4], []],
    [[2, 3, 4], [2, 3, 4]],
    [[300, 8], [8]], // bias gradient
    [[2, 1, 3], [1, 3]],
  ];
  for (const [xs, target] of cases) {
    const x = rng.floats(numel(xs));
    const t = gpu.tensor(x, xs);
    const y = sumToShape(gpu, t, target);
    assertEquals(y.shape, target);
    assertClose(await gpu.readF32(y), sumToShapeRef(x, xs, target), {
      rtol: 1e-5,
      atol: 1e-5,
    }, `sumToShape [${xs}]→[${target}]`);
    // broadcastTo goes the other way: exact copies.
    const b = broadcastTo(gpu, y, xs);
    assertEquals([...await gpu.readF32(b)], [...broadcastToRef(await gpu.readF32(y), target, xs)]);
    gpu.release(t, y, b);
  }
  const t = gpu.tensor(rng.floats(6), [2, 3]);
  assertThrows(() => sumToShape(gpu, t, [2]), RangeError, /does not broadcast to x \[2, 3\]/);
  assertThrows(() => broadcastTo(gpu, t, [3, 3]), RangeError, /cannot be broadcast/);
  const u = gpu.tensor(new Uint32Array([7, 0xffffffff]), [2, 1]);
  assertEquals([...await gpu.read(broadcastTo(gpu, u, [2, 3]))], [
    7,
    7,
    7,
    2 ** 32 - 1,
    2 ** 32 - 1,
    2 ** 32 - 1,
  ]);
  gpu.release(t, u);
});

gpuTest("reduce: sumToShape is the gradient of broadcastTo (finite differences)", async (gpu) => {
  const xs = [1, 3, 1];
  const target = [2, 3, 4];
  const x = rng.floats(3);
  const w = rng.floats(24);
  const fd = finiteDifference((v) => {
    const b = broadcastToRef(Float32Array.from(v), xs, target);
    return b.reduce((s, val, i) => s + val * w[i], 0);
  }, x);
  const tw = gpu.tensor(w, target);
  const g = sumToShape(gpu, tw, xs);
  // Linear in x: FD error is f32 rounding of x ± h only.
  assertClose(await gpu.readF32(g), fd, { rtol: 1e-3, atol: 1e-4 });
  gpu.release(tw, g);
});

gpuTest("reduce: splits rows and columns over the binding limit", async (gpu) => {
  const limits = gpu.limits;
  const saved = limits.maxStorageBufferBindingSize;
  const rowsX = rng.floats(40 * 1000);
  const colsX = rng.floats(2000 * 12);
  const tr = gpu.tensor(rowsX, [40, 1000]);
  const tc = gpu.tensor(colsX, [2000, 12]);
  const long = gpu.tensor(rng.floats(20000), [20000]);
  let outs: GpuTensor[] = [];
  try {
    limits.maxStorageBufferBindingSize = 16384; // 4096 floats per binding
    const before = gpu.stats().dispatches;
    outs = [
      sum(gpu, tr),
      sum(gpu, tc, { axis: 0 }),
      argmax(gpu, tr),
      max(gpu, tc, { axis: 0 }),
    ];
    assert(gpu.stats().dispatches - before > 8, "work was split into windows");
    assertThrows(() => sum(gpu, gpu.zeros([2, 5000]), { axis: 0 }), GpuLimitError, /maxStorage/);
    await gpu.sync();
  } finally {
    limits.maxStorageBufferBindingSize = saved;
  }
  const [s, c, a, m] = outs;
  assertClose(await gpu.readF32(s), sumRef(rowsX, [40, 1000]), { rtol: 1e-5, atol: 1e-4 });
  assertClose(await gpu.readF32(c), sumRef(colsX, [2000, 12], { axis: 0 }), {
    rtol: 1e-5,
    atol: 1e-4,
  });
  assertEquals([...await gpu.read(a)], [...argmaxRef(rowsX, [40, 1000])]);
  assertEquals([...await gpu.readF32(m)], [...maxRef(colsX, [2000, 12], { axis: 0 })]);
  gpu.release(tr, tc, long, ...outs);
});

gpuTest("reduce: PyTorch golden values (sum, mean, max, argmax with ties, sqNorm)", async (gpu) => {
  const r = JSON.parse(
    await Deno.readTextFile(new URL("./fixtures/pointwise.json", import.meta.url)),
  ).reduce;
  const shape = r.shape as number[];
  const t = gpu.tensor(Float32Array.from(r.x as number[]), shape);
  // torch sums f32 in its own order: 30 terms of size ~1 agree to a few ulp.
  const tol = { rtol: 1e-6, atol: 1e-6 };
  assertClose(await gpu.readF32(sum(gpu, t, { axis: 0 })), r.sum_axis0, tol, "sum(0)");
  assertClose(await gpu.readF32(sum(gpu, t, { axis: "all" })), r.sum_all, tol, "sum()");
  assertClose(await gpu.readF32(mean(gpu, t, { axis: 1 })), r.mean_axis1, tol, "mean(1)");
  assertClose(await gpu.readF32(sqNorm(gpu, t, { axis: "all" })), r.sqnorm_all, tol, "sq");
  assertEquals([...await gpu.readF32(max(gpu, t, { axis: 1 }))], [
    ...Float32Array.from(r.max_axis1),
  ]);
  assertEquals([...await gpu.read(argmax(gpu, t, 1))], r.argmax_axis1);
  assertEquals([...await gpu.read(argmax(gpu, t, 0))], r.argmax_axis0);
  gpu.release(t);
});

gpuTest(
  "reduce: very large and very small magnitudes (scale-free; overflow as IEEE)",
  async (gpu) => {
    const base = rng.floats(4 * 300);
    for (const scale of [1e30, 1e-30]) {
      const x = base.map((v) => v * scale);
      const t = gpu.tensor(x, [4, 300]);
      const [s, c] = await gpu.readMany([sum(gpu, t), sum(gpu, t, { axis: 0 })]);
      // Relative accuracy does not depend on the scale (no overflow or underflow in between).
      assertClose(
        s,
        sumRef(x, [4, 300]),
        { rtol: 1e-5, atol: 2e-6 * 300 * scale },
        `rows ×${scale}`,
      );
      assertClose(
        c,
        sumRef(x, [4, 300], { axis: 0 }),
        { rtol: 1e-5, atol: 8e-6 * scale },
        `cols ×${scale}`,
      );
      gpu.release(t);
    }
    // Squares overflow to +Inf (1e20² > f32 max) and underflow to 0, as torch does in f32.
    const big = gpu.tensor(new Float32Array([1e20, 1, -1e20, 2]), [2, 2]);
    assertEquals([...await gpu.readF32(sqNorm(gpu, big))], [Infinity, Infinity]);
    const tiny = gpu.tensor(new Float32Array([1e-30, -1e-30]));
    assertEquals([...await gpu.readF32(sqNorm(gpu, tiny))], [0]);
    gpu.release(big, tiny);
  },
);
