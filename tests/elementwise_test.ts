/**
 * Elementwise kernels against float64 references, finite differences and
 * PyTorch golden values (tests/fixtures/pointwise.json, made by
 * scripts/fixtures/pointwise.py).
 *
 * Tolerances, by what limits each op:
 * - add/sub/mul/max/min/neg/abs/square/copies: IEEE-exact in f32, compared exactly.
 * - div, sqrt, rsqrt: WGSL allows ≤ 2.5 ulp: rtol 3e-7.
 * - exp and things built on it (sigmoid, silu, tanh's outer branch): WGSL allows 3 + 2|x|
 *   ulp; llvmpipe measures ~1–8 ulp: rtol 2e-6 for |x| ≤ 20.
 * - log: absolute 2^-21 near 1, 3 ulp elsewhere: rtol 4e-7, atol 5e-7.
 * - GELU (kernels/gelu.ts, tested there): ≤ 6e-7 relative; rtol 1e-6 here, atol 2e-7·(1 + |x|/2)
 *   where it crosses zero.
 * - finite differences (h = 1e-3, float64 maths): rtol 1e-3, atol 1e-4 (truncation h²).
 * - PyTorch's float32 results: atol 1e-6, rtol 1e-5 (both sides round differently).
 */
import {
  add,
  addInPlace,
  addInPlaceRef,
  affine,
  affineRef,
  binary,
  binaryBackward,
  binaryBackwardRef,
  type BinaryOp,
  binaryRef,
  div,
  fill,
  gelu,
  geluBackward,
  geluBackwardRef,
  mul,
  silu,
  siluBackward,
  siluBackwardRef,
  siluRef,
  sub,
  swiglu,
  swigluBackward,
  swigluBackwardRef,
  swigluRef,
  unary,
  unaryBackward,
  unaryBackwardRef,
  type UnaryOp,
  unaryRef,
} from "../kernels/elementwise.ts";
import { erfRef, geluRef } from "../kernels/gelu.ts";
import { type GpuTensor, numel } from "../kernels/tensor.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { finiteDifference, gpuTest, Rng } from "./helpers.ts";

const rng = new Rng(3);

type Json = Record<string, unknown>;
const fixture: Json = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/pointwise.json", import.meta.url)),
);

/** A fixture array (non-finite values are stored as strings). */
function arr(v: unknown): Float32Array {
  return Float32Array.from(
    v as (number | string)[],
    (x) => typeof x === "number" ? x : x === "nan" ? NaN : x === "inf" ? Infinity : -Infinity,
  );
}
function sect(name: string): Json {
  return fixture[name] as Json;
}

// ----------------------------------------------------------------- binary

const SHAPE_PAIRS: [number[], number[]][] = [
  [[5, 7], [5, 7]], // same shape, odd
  [[4, 8], [4, 8]], // same shape, vec4
  [[6, 8], [8]], // bias on rows
  [[8], [6, 8]], // bias on the left
  [[6, 1], [6, 8]], // per-row scale
  [[3, 1, 4], [2, 1]], // both stretch
  [[2, 1, 3], [1, 4, 1]],
  [[1], [5]],
  [[], [3, 4]], // scalar tensor
  [[3, 5], [5]], // odd bias
  [[1], [1]], // one element
  [[2, 3, 4, 5], [3, 1, 5]],
  [[2, 0, 3], [3]], // empty
];

gpuTest("elementwise: binary ops broadcast like numpy in every position", async (gpu) => {
  for (const [as, bs] of SHAPE_PAIRS) {
    const a = rng.floats(numel(as), -3, 3);
    const b = rng.floats(numel(bs), 0.5, 3).map((v, i) => (i % 2 ? -v : v)); // away from 0
    const ta = gpu.tensor(a, as);
    const tb = gpu.tensor(b, bs);
    const ops = ["add", "sub", "mul", "div", "max", "min"] as BinaryOp[];
    const ys = ops.map((op) => binary(gpu, op, ta, tb));
    const got = await gpu.readMany(ys);
    ops.forEach((op, k) => {
      const tol = op === "div" ? { rtol: 3e-7, atol: 0 } : { rtol: 0, atol: 0 };
      assertEquals(ys[k].shape, broadcastShape(as, bs), `${op} shape`);
      assertClose(got[k], binaryRef(op, a, as, b, bs), tol, `${op} [${as}]·[${bs}]`);
    });
    gpu.release(...ys);
    gpu.release(ta, tb);
  }
  const t = gpu.tensor(rng.floats(6), [2, 3]);
  assertThrows(() => add(gpu, t, gpu.zeros([2])), RangeError, /add: shapes \[2, 3\] and \[2\]/);
  assertThrows(() => mul(gpu, t, gpu.tensor(new Uint32Array(3))), TypeError, /b must be f32/);
  const r = gpu.tensor(rng.floats(3));
  gpu.release(r);
  assertThrows(() => sub(gpu, t, r), Error, /was released/);
  gpu.release(t);
});

function broadcastShape(a: number[], b: number[]): number[] {
  const r = Math.max(a.length, b.length);
  return Array.from({ length: r }, (_, i) => {
    const x = a[a.length - r + i] ?? 1;
    const y = b[b.length - r + i] ?? 1;
    return x === 1 ? y : x;
  });
}

gpuTest("elementwise: NaN and Inf propagate through binary ops like torch", async (gpu) => {
  const a = new Float32Array([NaN, 1, Infinity, Infinity, 0, -1, 5, 1e30, 1e-30, -0]);
  const b = new Float32Array([1, NaN, -Infinity, 2, 0, 0, 0, 1e30, 1e30, 3]);
  const ta = gpu.tensor(a);
  const tb = gpu.tensor(b);
  for (const op of ["add", "sub", "mul", "div", "max", "min"] as BinaryOp[]) {
    const got = await gpu.readF32(binary(gpu, op, ta, tb));
    // Runtime division by 0 gives ±Inf or NaN, as IEEE says.
    assertClose(got, binaryRef(op, a, [10], b, [10]), { rtol: 3e-7, atol: 0 }, op);
  }
  gpu.release(ta, tb);
});

gpuTest("elementwise: binaryBackward matches the reference and finite differences", async (gpu) => {
  for (
    const [as, bs] of [
      SHAPE_PAIRS[1],
      SHAPE_PAIRS[2],
      SHAPE_PAIRS[4],
      SHAPE_PAIRS[5],
      SHAPE_PAIRS[8],
    ]
  ) {
    const a = rng.floats(numel(as), -2, 2);
    const b = rng.floats(numel(bs), 0.5, 2);
    a[0] = b[0]; // a tie for max/min (when both have an element 0 at the same place)
    const shape = broadcastShape(as, bs);
    const dy = rng.floats(numel(shape));
    const ta = gpu.tensor(a, as);
    const tb = gpu.tensor(b, bs);
    const tdy = gpu.tensor(dy, shape);
    const ops = ["add", "sub", "mul", "div", "max", "min"] as BinaryOp[];
    const grads = ops.map((op) => binaryBackward(gpu, op, tdy, ta, tb));
    const got = await gpu.readMany(grads.flatMap((g) => [g.da!, g.db!]));
    ops.forEach((op, k) => {
      const ref = binaryBackwardRef(op, dy, a, as, b, bs);
      assertEquals(grads[k].da!.shape, as);
      assertEquals(grads[k].db!.shape, bs);
      // Sums over ≤ 24 broadcast terms: rtol 1e-5, atol 1e-5.
      assertClose(got[2 * k], ref.da, { rtol: 1e-5, atol: 1e-5 }, `${op} da`);
      assertClose(got[2 * k + 1], ref.db, { rtol: 1e-5, atol: 1e-5 }, `${op} db`);
      gpu.release(grads[k].da!, grads[k].db!);
    });
    gpu.release(ta, tb, tdy);
  }
  // FD on the broadcasting case [3,1,4]·[2,1] for every smooth op (max/min: away from ties).
  const as = [3, 1, 4];
  const bs = [2, 1];
  const a = rng.floats(12, -2, 2);
  const b = rng.floats(2, 0.5, 2);
  const dy = rng.floats(24);
  const ta = gpu.tensor(a, as);
  const tb = gpu.tensor(b, bs);
  const tdy = gpu.tensor(dy, [3, 2, 4]);
  const ops = ["add", "sub", "mul", "div", "max", "min"] as BinaryOp[];
  const grads = ops.map((op) => binaryBackward(gpu, op, tdy, ta, tb));
  const got = await gpu.readMany(grads.flatMap((g) => [g.da!, g.db!]));
  ops.forEach((op, k) => {
    const loss = (av: ArrayLike<number>, bv: ArrayLike<number>) =>
      binaryRef64(op, av, as, bv, bs).reduce((s, v, i) => s + v * dy[i], 0);
    const fa = finiteDifference((v) => loss(v, b), a);
    const fb = finiteDifference((v) => loss(a, v), b);
    assertClose(got[2 * k], fa, { rtol: 1e-3, atol: 1e-4 }, `${op} da vs FD`);
    assertClose(got[2 * k + 1], fb, { rtol: 1e-3, atol: 1e-4 }, `${op} db vs FD`);
    gpu.release(grads[k].da!, grads[k].db!);
  });
  // need: only the requested side is computed.
  const only = binaryBackward(gpu, "mul", tdy, ta, tb, { b: true });
  assert(only.da === undefined && only.db !== undefined, "need.b only");
  gpu.release(ta, tb, tdy, only.db!);
});

/** binaryRef without the f32 rounding, for finite differences. */
function binaryRef64(
  op: BinaryOp,
  a: ArrayLike<number>,
  as: number[],
  b: ArrayLike<number>,
  bs: number[],
): number[] {
  const shape = broadcastShape(as, bs);
  const n = numel(shape);
  const idx = (s: number[], i: number) => {
    let at = 0;
    let rem = i;
    let stride = 1;
    const lead = shape.length - s.length;
    for (let d = shape.length - 1; d >= 0; d--) {
      const c = rem % shape[d];
      rem = Math.floor(rem / shape[d]);
      if (d >= lead && s[d - lead] !== 1) at += c * stride;
      if (d >= lead) stride *= s[d - lead];
    }
    return at;
  };
  const f: Record<BinaryOp, (x: number, y: number) => number> = {
    add: (x, y) => x + y,
    sub: (x, y) => x - y,
    mul: (x, y) => x * y,
    div: (x, y) => x / y,
    max: Math.max,
    min: Math.min,
  };
  return Array.from({ length: n }, (_, i) => f[op](a[idx(as, i)], b[idx(bs, i)]));
}

// ------------------------------------------------------------------ unary

const UNARY_CASES: { op: UnaryOp; lo: number; hi: number; tol: { rtol: number; atol: number } }[] =
  [
    { op: "neg", lo: -1e30, hi: 1e30, tol: { rtol: 0, atol: 0 } },
    { op: "exp", lo: -20, hi: 20, tol: { rtol: 2e-6, atol: 0 } },
    { op: "log", lo: 1e-30, hi: 1e30, tol: { rtol: 4e-7, atol: 5e-7 } },
    { op: "sqrt", lo: 0, hi: 1e30, tol: { rtol: 3e-7, atol: 0 } },
    { op: "rsqrt", lo: 1e-30, hi: 1e30, tol: { rtol: 3e-7, atol: 0 } },
    { op: "tanh", lo: -12, hi: 12, tol: { rtol: 3e-7, atol: 1e-7 } },
    { op: "sigmoid", lo: -30, hi: 30, tol: { rtol: 2e-6, atol: 0 } },
    { op: "relu", lo: -5, hi: 5, tol: { rtol: 0, atol: 0 } },
    { op: "abs", lo: -1e30, hi: 1e30, tol: { rtol: 0, atol: 0 } },
    { op: "square", lo: -1e20, hi: 1e20, tol: { rtol: 0, atol: 0 } },
  ];

/** Random values spread over orders of magnitude inside [lo, hi] (log-uniform for wide ranges). */
function spread(n: number, lo: number, hi: number): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    if (hi - lo > 1e6) {
      const mag = Math.exp(rng.uniform(Math.log(1e-30), Math.log(Math.max(Math.abs(lo), hi))));
      x[i] = lo < 0 && i % 2 ? -mag : mag;
      x[i] = Math.min(hi, Math.max(lo, x[i]));
    } else x[i] = rng.uniform(lo, hi);
  }
  return x;
}

gpuTest("elementwise: unary ops match the reference over wide ranges", async (gpu) => {
  for (const { op, lo, hi, tol } of UNARY_CASES) {
    const xs = [1, 7, 1000].map((n) => spread(n, lo, hi));
    const ts = xs.map((x) => gpu.tensor(x));
    const ys = ts.map((t) => unary(gpu, op, t));
    const got = await gpu.readMany(ys);
    xs.forEach((x, k) => assertClose(got[k], unaryRef(op, x), tol, `${op} n=${x.length}`));
    gpu.release(...ts, ...ys);
  }
  // tanh near 0 keeps relative accuracy (llvmpipe's builtin tanh does not).
  const small = new Float32Array([1e-8, -1e-6, 1e-4, 3e-3, 0.1, 0.62, 0.63]);
  const ts = gpu.tensor(small);
  assertClose(await gpu.readF32(unary(gpu, "tanh", ts)), unaryRef("tanh", small), {
    rtol: 3e-7,
    atol: 0,
  }, "tanh small");
  gpu.release(ts);
});

gpuTest("elementwise: unary edge values (NaN, ±Inf, 0, negatives)", async (gpu) => {
  // ±80, not ±88: exp(-88) is subnormal, which GPUs (and llvmpipe) flush to 0.
  const x = new Float32Array([NaN, Infinity, -Infinity, 0, -0, -1, 1e-30, 80, -80]);
  const t = gpu.tensor(x);
  for (const { op } of UNARY_CASES) {
    const got = await gpu.readF32(unary(gpu, op, t));
    // Only the classes matter here: NaN, ±Inf and exact zeros must agree with IEEE/torch.
    const want = unaryRef(op, x);
    for (let i = 0; i < x.length; i++) {
      const g = got[i];
      const w = want[i];
      const same = Number.isNaN(w)
        ? Number.isNaN(g)
        : !Number.isFinite(w) || w === 0
        ? g === w
        : Math.abs(g - w) <= 2e-5 * Math.abs(w);
      assert(same, `${op}(${x[i]}) = ${g}, expected ${w}`);
    }
  }
  gpu.release(t);
});

/** Float64 versions of the unary ops for finite differences. */
const F64: Record<UnaryOp, (x: number) => number> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  tanh: Math.tanh,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  relu: (x) => Math.max(x, 0),
  abs: Math.abs,
  square: (x) => x * x,
};

gpuTest("elementwise: unaryBackward matches the reference and finite differences", async (gpu) => {
  for (const { op } of UNARY_CASES) {
    const positive = op === "log" || op === "sqrt" || op === "rsqrt";
    // Keep |x| > 0.05 so relu/abs are not probed at their kink.
    const x = rng.floats(33, 0.05, 3).map((v, i) => (positive || i % 2 ? v : -v));
    const dy = rng.floats(33);
    const tx = gpu.tensor(x);
    const ty = unary(gpu, op, tx);
    const tdy = gpu.tensor(dy);
    const dx = await gpu.readF32(unaryBackward(gpu, op, tdy, tx, ty));
    assertClose(dx, unaryBackwardRef(op, dy, x), { rtol: 3e-6, atol: 1e-7 }, `${op} vs ref`);
    const fd = finiteDifference((v) => v.reduce((s, xi, i) => s + dy[i] * F64[op](xi), 0), x);
    assertClose(dx, fd, { rtol: 1e-3, atol: 1e-4 }, `${op} vs FD`);
    gpu.release(tx, ty, tdy);
  }
});

gpuTest("elementwise: affine, fill and addInPlace", async (gpu) => {
  const x = rng.floats(37, -10, 10);
  const t = gpu.tensor(x);
  // One multiply and one add, possibly fused: within 1 ulp.
  assertClose(await gpu.readF32(affine(gpu, t, 0.37, -2)), affineRef(x, 0.37, -2), {
    rtol: 2e-7,
    atol: 1e-6,
  });
  assertEquals([...await gpu.readF32(affine(gpu, t, -1))], [...x.map((v) => -v)]);
  for (const v of [0, 1.5, NaN, -Infinity]) {
    const f = fill(gpu, [2, 3], v);
    assertEquals([...await gpu.readF32(f)], new Array(6).fill(v));
    gpu.release(f);
  }
  assertEquals([...await gpu.readF32(fill(gpu, [], 7))], [7]);
  assertEquals(fill(gpu, [0, 4], 1).shape, [0, 4]);

  const acc0 = rng.floats(37);
  const acc = gpu.tensor(acc0);
  addInPlace(gpu, acc, t);
  addInPlace(gpu, acc, t, -0.5);
  const want = addInPlaceRef(addInPlaceRef(acc0, x), x, -0.5);
  assertClose(await gpu.readF32(acc), want, { rtol: 2e-7, atol: 1e-6 });
  addInPlace(gpu, acc, acc, 1); // acc += acc: the same buffer, bound once
  assertClose(await gpu.readF32(acc), want.map((v) => 2 * v), { rtol: 2e-7, atol: 1e-6 });
  const big = gpu.tensor(rng.floats(64));
  assertThrows(
    () => addInPlace(gpu, big.view(0, [32]), big.view(16, [32])),
    RangeError,
    /overlaps/,
  );
  assertThrows(() => addInPlace(gpu, acc, gpu.zeros([36])), RangeError, /must have the shape/);
  gpu.release(t, acc, big);
});

// ------------------------------------------------------------ activations

gpuTest("elementwise: gelu, silu and their backward vs references over [-12, 12]", async (gpu) => {
  const x = Float32Array.from(rng.floats(997, -12, 12));
  x.set([0, -1e-6, 1e-6, -1.41421, -1.4143, 1e-3], 0); // both sides of the erf branch point
  const dy = rng.floats(997);
  const tx = gpu.tensor(x);
  const tdy = gpu.tensor(dy);
  const absGelu = Float32Array.from(x, (v) => 2e-7 * (1 + Math.abs(v) / 2));
  const g = await gpu.readF32(gelu(gpu, tx));
  const gr = Float32Array.from(x, geluRef);
  for (let i = 0; i < x.length; i++) {
    assertClose([g[i]], [gr[i]], { rtol: 1e-6, atol: absGelu[i] }, `gelu(${x[i]})`);
  }
  // Far negative: relative accuracy survives (erfc branch), unlike 1 + erf cancelling to 0.
  const tail = gpu.tensor(new Float32Array([-6, -8, -10]));
  assertClose(await gpu.readF32(gelu(gpu, tail)), [-6, -8, -10].map(geluRef), {
    rtol: 1e-6,
    atol: 0,
  });
  assertClose(await gpu.readF32(geluBackward(gpu, tdy, tx)), geluBackwardRef(dy, x), {
    rtol: 2e-6,
    atol: 5e-7,
  }, "gelu backward");
  assertClose(await gpu.readF32(silu(gpu, tx)), siluRef(x), { rtol: 2e-6, atol: 1e-7 }, "silu");
  assertClose(await gpu.readF32(siluBackward(gpu, tdy, tx)), siluBackwardRef(dy, x), {
    rtol: 2e-6,
    atol: 2e-7,
  }, "silu backward");
  gpu.release(tx, tdy, tail);
});

gpuTest("elementwise: activation gradients vs finite differences", async (gpu) => {
  const x = rng.floats(25, -4, 4);
  const dy = rng.floats(25);
  const tx = gpu.tensor(x);
  const tdy = gpu.tensor(dy);
  const phi = (v: number) => 0.5 * (1 + erfRef(v / Math.SQRT2));
  const fdGelu = finiteDifference((v) => v.reduce((s, xi, i) => s + dy[i] * xi * phi(xi), 0), x);
  assertClose(await gpu.readF32(geluBackward(gpu, tdy, tx)), fdGelu, { rtol: 1e-3, atol: 1e-4 });
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  const fdSilu = finiteDifference((v) => v.reduce((s, xi, i) => s + dy[i] * xi * sig(xi), 0), x);
  assertClose(await gpu.readF32(siluBackward(gpu, tdy, tx)), fdSilu, { rtol: 1e-3, atol: 1e-4 });
  // SwiGLU on [3, 2·4].
  const h = 4;
  const x12 = rng.floats(3 * 2 * h, -3, 3);
  const dys = rng.floats(3 * h);
  const t12 = gpu.tensor(x12, [3, 2 * h]);
  const tds = gpu.tensor(dys, [3, h]);
  const fdSw = finiteDifference((v) => {
    let s = 0;
    for (let r = 0; r < 3; r++) {
      for (let j = 0; j < h; j++) {
        const a = v[r * 2 * h + j];
        s += dys[r * h + j] * a * sig(a) * v[r * 2 * h + h + j];
      }
    }
    return s;
  }, x12);
  assertClose(await gpu.readF32(swigluBackward(gpu, tds, t12)), fdSw, { rtol: 1e-3, atol: 1e-4 });
  gpu.release(tx, tdy, t12, tds);
});

gpuTest("elementwise: swiglu on vec4 and odd widths, views and errors", async (gpu) => {
  for (const [rows, hh] of [[5, 8], [3, 5], [1, 1], [2, 4]]) {
    const shape = [rows, 2 * hh];
    const x12 = rng.floats(numel(shape), -5, 5);
    const dy = rng.floats(numel(shape) / 2);
    const t = gpu.tensor(x12, shape);
    const tdy = gpu.tensor(dy, [shape[0], hh]);
    const y = swiglu(gpu, t);
    assertEquals(y.shape, [shape[0], hh]);
    assertClose(await gpu.readF32(y), swigluRef(x12, hh), { rtol: 2e-6, atol: 1e-7 }, "swiglu");
    assertClose(await gpu.readF32(swigluBackward(gpu, tdy, t)), swigluBackwardRef(dy, x12, hh), {
      rtol: 2e-6,
      atol: 2e-7,
    }, "swiglu backward");
    gpu.release(t, tdy, y);
  }
  // Leading dims are kept: [2, 3, 2H] → [2, 3, H].
  const t3 = gpu.tensor(rng.floats(2 * 3 * 8), [2, 3, 8]);
  assertEquals(swiglu(gpu, t3).shape, [2, 3, 4]);
  assertThrows(() => swiglu(gpu, gpu.zeros([2, 5])), RangeError, /even dimension 2H/);
  gpu.release(t3);
});

gpuTest("elementwise: PyTorch golden values (gelu, silu, swiglu, broadcasting)", async (gpu) => {
  for (
    const [name, fwd, bwd] of [["gelu", gelu, geluBackward], ["silu", silu, siluBackward]] as const
  ) {
    const s = sect(name);
    const x = arr(s.x);
    const tx = gpu.tensor(x);
    const tdy = gpu.tensor(arr(s.dy));
    assertClose(await gpu.readF32(fwd(gpu, tx)), arr(s.y), { rtol: 1e-5, atol: 1e-6 }, `${name}`);
    assertClose(
      await gpu.readF32(bwd(gpu, tdy, tx)),
      arr(s.dx),
      { rtol: 1e-5, atol: 1e-6 },
      `${name} dx`,
    );
    gpu.release(tx, tdy);
  }
  const sw = sect("swiglu");
  const shape = sw.shape as number[];
  const t12 = gpu.tensor(arr(sw.x12), shape);
  const tdy = gpu.tensor(arr(sw.dy), [shape[0], shape[1] / 2]);
  assertClose(await gpu.readF32(swiglu(gpu, t12)), arr(sw.y), { rtol: 1e-5, atol: 1e-6 }, "swiglu");
  assertClose(await gpu.readF32(swigluBackward(gpu, tdy, t12)), arr(sw.dx12), {
    rtol: 1e-5,
    atol: 1e-6,
  }, "swiglu dx12");
  const bc = sect("broadcast");
  const as = bc.aShape as number[];
  const bs = bc.bShape as number[];
  const ta = gpu.tensor(arr(bc.a), as);
  const tb = gpu.tensor(arr(bc.b), bs);
  for (const op of ["add", "sub", "mul", "div", "max"] as BinaryOp[]) {
    const g = bc[op] as Json;
    const y = binary(gpu, op, ta, tb);
    assertClose(await gpu.readF32(y), arr(g.y), { rtol: 1e-6, atol: 1e-7 }, `${op} forward`);
    const tdy = gpu.tensor(arr(g.dy), y.shape);
    const { da, db } = binaryBackward(gpu, op, tdy, ta, tb);
    assertClose(await gpu.readF32(da!), arr(g.da), { rtol: 1e-5, atol: 1e-6 }, `${op} da`);
    assertClose(await gpu.readF32(db!), arr(g.db), { rtol: 1e-5, atol: 1e-6 }, `${op} db`);
    gpu.release(y, tdy, da!, db!);
  }
  gpu.release(t12, tdy, ta, tb);
});

gpuTest("elementwise: maps split over the binding limit give the same results", async (gpu) => {
  const x = rng.floats(6000, -4, 4);
  const b = rng.floats(500);
  const tx = gpu.tensor(x, [12, 500]);
  const tb = gpu.tensor(b, [500]);
  const limits = gpu.limits;
  const saved = limits.maxStorageBufferBindingSize;
  let outs: GpuTensor[] = [];
  const before = gpu.stats().dispatches;
  try {
    limits.maxStorageBufferBindingSize = 8192; // 2048 floats: 4 rows of 500 per window
    outs = [gelu(gpu, tx), add(gpu, tx, tb), div(gpu, tx, tb)];
    await gpu.sync();
  } finally {
    limits.maxStorageBufferBindingSize = saved;
  }
  assert(gpu.stats().dispatches - before >= 9, "each map ran in several windows");
  assertClose(await gpu.readF32(outs[0]), Float32Array.from(x, geluRef), {
    rtol: 1e-6,
    atol: 1e-6,
  });
  assertEquals([...await gpu.readF32(outs[1])], [...binaryRef("add", x, [12, 500], b, [500])]);
  assertClose(await gpu.readF32(outs[2]), binaryRef("div", x, [12, 500], b, [500]), {
    rtol: 3e-7,
    atol: 0,
  });
  gpu.release(tx, tb, ...outs);
});

gpuTest("elementwise: activations at ±Inf, NaN and saturation agree with torch", async (gpu) => {
  const e = sect("edges");
  const x = arr(e.x);
  const tx = gpu.tensor(x);
  const ones = gpu.tensor(new Float32Array(x.length).fill(1));
  for (
    const [name, fwd, bwd] of [["gelu", gelu, geluBackward], ["silu", silu, siluBackward]] as const
  ) {
    const g = e[name] as Json;
    const [y, dx] = await gpu.readMany([fwd(gpu, tx), bwd(gpu, ones, tx)]);
    // NaN and ±Inf must match exactly; finite values to f32 rounding.
    assertClose(y, arr(g.y), { rtol: 1e-6, atol: 0 }, `${name}(x)`);
    assertClose(dx, arr(g.dx), { rtol: 1e-6, atol: 0 }, `${name}'(x)`);
  }
  gpu.release(tx, ones);
});
