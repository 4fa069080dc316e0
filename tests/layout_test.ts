/**
 * Layout kernels against their CPU references: permute/transpose, slice and
 * its backward, concat, row gather/scatter, mask-token rows, the strided-map
 * engine's windows over the binding limit. Layout ops move bits, so most
 * checks are exact; the sums of scatter-accumulate and maskRowsBackward are
 * f32 sums of a few terms checked against float64 (rtol 1e-6).
 */
import { GpuLimitError } from "../kernels/errors.ts";
import { broadcastShapes } from "../kernels/common/shape.ts";
import {
  concat,
  concatRef,
  gatherRows,
  gatherRowsRef,
  maskRows,
  maskRowsBackward,
  maskRowsBackwardRef,
  maskRowsRef,
  permute,
  permuteRef,
  scatterRows,
  scatterRowsRef,
  slice,
  sliceBackward,
  sliceBackwardRef,
  sliceRef,
  transpose,
  transposeRef,
} from "../kernels/layout/mod.ts";
import { collapseDims, stridedMap } from "../kernels/strided_map.ts";
import { numel } from "../kernels/tensor.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { finiteDifference, gpuTest, Rng } from "./helpers.ts";

const rng = new Rng(7);

gpuTest("layout: shape helpers broadcast and collapse", () => {
  assertEquals(broadcastShapes("t", [3, 1, 5], [4, 1], [5]), [3, 4, 5]);
  assertEquals(broadcastShapes("t", [], [2]), [2]);
  assertThrows(() => broadcastShapes("add", [3, 2], [4, 2]), RangeError, /add: shapes \[3, 2\]/);
  // [2,3,4] contiguous collapses to one dim; a broadcast operand splits it.
  assertEquals(collapseDims([2, 3, 4], [[12, 4, 1]]).dims, [24]);
  assertEquals(collapseDims([2, 3, 4], [[12, 4, 1], [0, 4, 1]]).dims, [2, 12]);
  assertEquals(collapseDims([1, 1], [[1, 1]]).dims, [1]);
});

gpuTest(
  "layout: permute matches the reference (vec rows, blocked transpose, gather)",
  async (gpu) => {
    const cases: [number[], number[]][] = [
      [[8, 12], [1, 0]], // blocked 4x4 transpose
      [[5, 7], [1, 0]], // odd: element gather
      [[2, 3, 8], [1, 0, 2]], // keeps the inner dim: vec4 rows
      [[2, 3, 4, 8], [0, 2, 1, 3]], // attention-style head split
      [[2, 5, 3, 2, 64], [2, 0, 3, 1, 4]], // qkv head split: one 16-vec4 row per invocation
      [[2, 3, 72], [1, 0, 2]], // rows longer than one chunk (18 vec4s: 16 + 2)
      [[3, 2, 4], [1, 0, 2]], // one-vec4 rows
      [[3, 4, 8], [2, 0, 1]], // moves the inner dim outwards, blocked
      [[2, 1, 3, 1, 5, 2], [5, 4, 3, 2, 1, 0]], // 6-D with size-1 dims
      [[4, 8, 1], [2, 1, 0]],
      [[1], [0]],
      [[6], [0]],
      [[3, 0, 2], [2, 1, 0]],
    ];
    for (const [shape, perm] of cases) {
      const x = rng.floats(numel(shape));
      const t = gpu.tensor(x, shape);
      const y = permute(gpu, t, perm);
      assertEquals(y.shape, perm.map((p) => shape[p]));
      // Exact: permute moves bits.
      assertEquals(
        [...await gpu.readF32(y)],
        [...permuteRef(x, shape, perm)],
        `[${shape}] ${perm}`,
      );
      gpu.release(t, y);
    }
    assertThrows(() => permute(gpu, gpu.zeros([2, 2]), [0, 0]), RangeError, "not a permutation");
  },
);

gpuTest("layout: permute and transpose copy bits of any dtype exactly", async (gpu) => {
  // NaN payloads and subnormals survive (words are copied as u32).
  const words = new Uint32Array(8 * 16);
  for (let i = 0; i < words.length; i++) words[i] = (rng.next() * 2 ** 32) >>> 0;
  words[0] = 0x7fc01234; // NaN with payload
  words[1] = 0x00000001; // smallest subnormal
  const t = gpu.tensor(words, [8, 16]);
  const y = transpose(gpu, t);
  assertEquals(y.dtype, "u32");
  assertEquals([...(await gpu.read(y))], [...transposeRef(words, [8, 16])]);
  const f = gpu.tensor(new Float32Array(words.buffer), [2, 4, 16]);
  const yf = permute(gpu, f, [2, 1, 0]);
  const got = new Uint32Array((await gpu.readF32(yf)).slice().buffer);
  assertEquals([...got], [...permuteRef(words, [2, 4, 16], [2, 1, 0])]);
  gpu.release(t, y, f, yf);
});

gpuTest("layout: slice, sliceBackward and concat match the references", async (gpu) => {
  const shape = [3, 5, 6];
  const x = rng.floats(numel(shape));
  const t = gpu.tensor(x, shape);
  for (const [axis, start, len] of [[0, 1, 2], [1, 2, 3], [2, 1, 5], [-1, 0, 6], [1, 5, 0]]) {
    const y = slice(gpu, t, axis, start, len);
    assertEquals([...await gpu.readF32(y)], [...sliceRef(x, shape, axis, start, len)]);
    const back = sliceBackward(gpu, y, shape, axis, start);
    assertEquals([...await gpu.readF32(back)], [
      ...sliceBackwardRef(await gpu.readF32(y), shape, axis, start),
    ]);
    gpu.release(y, back);
  }
  assertThrows(() => slice(gpu, t, 1, 4, 2), RangeError, /runs past axis 1 of size 5/);
  assertThrows(() => slice(gpu, t, 3, 0, 1), RangeError, /axis 3 is out of range/);

  const parts = [[3, 2, 6], [3, 0, 6], [3, 4, 6]];
  const xs = parts.map((s) => rng.floats(numel(s)));
  const ts = parts.map((s, i) => gpu.tensor(xs[i], s));
  const c = concat(gpu, ts, 1);
  assertEquals(c.shape, [3, 6, 6]);
  assertEquals([...await gpu.readF32(c)], [...concatRef(xs, parts, 1)]);
  const c0 = concat(gpu, [t, t], 0);
  assertEquals([...await gpu.readF32(c0)], [...concatRef([x, x], [shape, shape], 0)]);
  const odd = [gpu.tensor(rng.floats(6), [2, 3]), gpu.tensor(rng.floats(2), [2, 1])];
  const c2 = concat(gpu, odd, -1);
  assertEquals(
    [...await gpu.readF32(c2)],
    [...concatRef([await gpu.readF32(odd[0]), await gpu.readF32(odd[1])], [[2, 3], [2, 1]], -1)],
  );
  assertThrows(() => concat(gpu, [t, ts[0]], 0), RangeError, /does not match xs\[0\]/);
  gpu.release(t, c, c0, c2, ...ts, ...odd);
});

gpuTest("layout: sliceBackward is the gradient of slice (finite differences)", async (gpu) => {
  const shape = [2, 5, 3];
  const x = rng.floats(numel(shape));
  const w = rng.floats(2 * 2 * 3);
  // L(x) = Σ w · slice(x, 1, 2, 2); dL/dx = sliceBackward(w).
  const fd = finiteDifference((v) => {
    const s = sliceRef(Float32Array.from(v), shape, 1, 2, 2);
    return s.reduce((a, b, i) => a + b * w[i], 0);
  }, x);
  const dy = gpu.tensor(w, [2, 2, 3]);
  const dx = sliceBackward(gpu, dy, shape, 1, 2);
  // FD with h = 1e-3 on a linear function: only f32 rounding of x ± h remains.
  assertClose(await gpu.readF32(dx), fd, { rtol: 1e-3, atol: 1e-4 });
  gpu.release(dy, dx);
});

gpuTest("layout: gatherRows and scatterRows match the references", async (gpu) => {
  for (const d of [8, 5, 1, 72, 37]) { // 72, 37: rows of several 16-wide chunks
    const n = 9;
    const x = rng.floats(n * d);
    const idx = new Uint32Array([3, 0, 8, 3, 12, 5, 3]); // duplicates and one out of range
    const tx = gpu.tensor(x, [n, d]);
    const ti = gpu.tensor(idx);
    const g = gatherRows(gpu, tx, ti);
    assertEquals(g.shape, [idx.length, d]);
    assertEquals([...await gpu.readF32(g)], [...gatherRowsRef(x, d, idx)]);
    // Accumulate: duplicates summed (3 sources for row 3); float64 reference, 3-term f32 sum.
    const s = scatterRows(gpu, g, ti, n, { accumulate: true });
    const want = scatterRowsRef(await gpu.readF32(g), d, idx, n, { accumulate: true });
    assertClose(await gpu.readF32(s), want, { rtol: 1e-6, atol: 1e-7 });
    // Unique indices without accumulate: a plain scatter.
    const uniq = gpu.tensor(new Uint32Array([4, 1, 7]));
    const src = gpu.tensor(rng.floats(3 * d), [3, d]);
    const s2 = scatterRows(gpu, src, uniq, n);
    assertEquals(
      [...await gpu.readF32(s2)],
      [...scatterRowsRef(await gpu.readF32(src), d, [4, 1, 7], n)],
    );
    gpu.release(tx, ti, g, s, uniq, src, s2);
  }
});

gpuTest(
  "layout: scatterRows accumulate is deterministic and the gradient of gather",
  async (gpu) => {
    const n = 40;
    const d = 12;
    const m = 300; // many duplicates per row, non-power-of-two count
    const idx = new Uint32Array(m);
    for (let i = 0; i < m; i++) idx[i] = rng.int(n);
    const src = rng.normals(m * d, 10);
    const ts = gpu.tensor(src, [m, d]);
    const ti = gpu.tensor(idx);
    const a = await gpu.readF32(scatterRows(gpu, ts, ti, n, { accumulate: true }));
    const b = await gpu.readF32(scatterRows(gpu, ts, ti, n, { accumulate: true }));
    assertEquals([...a], [...b], "bit-identical on repeat");
    // Sums of ~8 terms of size 10 in f32: within 8 ulps of the float64 sum.
    assertClose(a, scatterRowsRef(src, d, idx, n, { accumulate: true }), {
      rtol: 1e-5,
      atol: 1e-5,
    });
    // FD: L(x) = Σ w · gather(x, idx) ⇒ dL/dx = scatterRows(w, idx, accumulate).
    const x = rng.floats(n * d);
    const fd = finiteDifference(
      (v) => {
        const g = gatherRowsRef(Float32Array.from(v), d, idx);
        return g.reduce((s, val, i) => s + val * src[i], 0);
      },
      x,
      1e-2,
      [0, 5, 13, 100, 479],
    );
    for (const i of [0, 5, 13, 100, 479]) {
      assertClose([a[i]], [fd[i]], { rtol: 1e-3, atol: 1e-2 }, `dx[${i}]`);
    }
    gpu.release(ts, ti);
  },
);

gpuTest("layout: maskRows and its backward (reference, NaN isolation, FD)", async (gpu) => {
  for (const d of [8, 3]) {
    const n = 7;
    const x = rng.floats(n * d);
    x[2 * d] = NaN; // row 2 is masked: its NaN must not leak
    const mask = new Uint32Array([0, 1, 1, 0, 0, 1, 0]);
    const token = rng.floats(d);
    const tx = gpu.tensor(x, [n, d]);
    const tm = gpu.tensor(mask);
    const tt = gpu.tensor(token);
    const y = maskRows(gpu, tx, tm, tt);
    const got = await gpu.readF32(y);
    assertEquals([...got], [...maskRowsRef(x, d, mask, token)]);
    assert(got.every((v) => !Number.isNaN(v)), "masked NaN replaced");
    const dy = rng.floats(n * d);
    const tdy = gpu.tensor(dy, [n, d]);
    const { dx, dtoken } = maskRowsBackward(gpu, tdy, tm);
    const ref = maskRowsBackwardRef(dy, d, mask);
    assertEquals([...await gpu.readF32(dx)], [...ref.dx]);
    // Three f32 terms vs a float64 sum.
    assertClose(await gpu.readF32(dtoken), ref.dtoken, { rtol: 1e-6, atol: 1e-7 });
    // FD on the token: L = Σ dy · maskRows(x, mask, token).
    const fd = finiteDifference((v) => {
      const out = maskRowsRef(Float32Array.from(x), d, mask, Float32Array.from(v));
      let s = 0;
      for (let i = 0; i < out.length; i++) if (!Number.isNaN(out[i])) s += out[i] * dy[i];
      return s;
    }, token);
    assertClose(await gpu.readF32(dtoken), fd, { rtol: 1e-3, atol: 1e-4 });
    gpu.release(tx, tm, tt, y, tdy, dx, dtoken);
  }
  // Many rows: dtoken takes several column-sum stages.
  const n = 3000;
  const d = 4;
  const dy = rng.floats(n * d);
  const mask = new Uint32Array(n).map(() => (rng.next() < 0.4 ? 1 : 0));
  const tdy = gpu.tensor(dy, [n, d]);
  const tm = gpu.tensor(mask);
  const { dx, dtoken } = maskRowsBackward(gpu, tdy, tm);
  // ~1200 terms of size 1 summed blockwise in f32: error well under 1e-5 absolute.
  assertClose(await gpu.readF32(dtoken), maskRowsBackwardRef(dy, d, mask).dtoken, {
    rtol: 1e-5,
    atol: 1e-5,
  });
  gpu.release(tdy, tm, dx, dtoken);
});

gpuTest("layout: the strided map splits work over the binding limit", async (gpu) => {
  // Shrink the limit so a small map needs several windows; the runtime validates every binding
  // against the same limit, so a window that overflowed it would throw.
  const limits = gpu.limits;
  const saved = limits.maxStorageBufferBindingSize;
  const x = rng.floats(3 * 1000);
  const tx = gpu.tensor(x, [3, 1000]);
  const b = rng.floats(1000);
  const tb = gpu.tensor(b, [1000]);
  const y = gpu.empty([3, 1000]);
  const big = gpu.tensor(rng.floats(4 * 2048), [4, 2048]);
  try {
    limits.maxStorageBufferBindingSize = 8192; // 2048 floats: one [1000] row per window
    const before = gpu.stats().dispatches;
    stridedMap(gpu, {
      name: "test_add",
      body: "return x0 + x1;",
      shape: [3, 1000],
      inputs: [{ t: tx, strides: [1000, 1] }, { t: tb, strides: [0, 1] }],
      out: { t: y, strides: [1000, 1] },
    });
    assertEquals(gpu.stats().dispatches - before, 3, "one window per [1000] row");
    // Rank-1 (flat) case; a transpose whose every slice is too wide cannot be split.
    const flat = permute(gpu, tx.reshape([3000]), [0]);
    assertThrows(() => transpose(gpu, big), GpuLimitError, /maxStorageBufferBindingSize/);
    await gpu.sync();
    limits.maxStorageBufferBindingSize = saved;
    const want = x.map((v, i) => Math.fround(v + b[i % 1000]));
    assertEquals([...await gpu.readF32(y)], [...want]);
    assertEquals([...await gpu.readF32(flat)], [...x]);
    gpu.release(flat);
  } finally {
    limits.maxStorageBufferBindingSize = saved;
  }
  gpu.release(tx, tb, y, big);
});
