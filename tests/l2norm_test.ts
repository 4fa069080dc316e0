/** L2 normalisation and weight normalisation: references, finite differences, PyTorch. */
import {
  l2Normalize,
  l2NormalizeBackward,
  l2NormalizeBackwardRef,
  l2NormalizeRef,
  weightNorm,
  weightNormBackward,
  weightNormBackwardRef,
  weightNormRef,
} from "../kernels/l2norm.ts";
import { assertClose, assertEquals, assertThrows } from "./assert.ts";
import { dot, finiteDifference, gpuTest, Rng, take } from "./helpers.ts";
import { readFixture } from "./fixtures.ts";

interface NormalizeCase {
  shape: [number, number];
  eps: number;
  x: number[];
  y: number[];
  dy: number[];
  dx: number[];
}
interface WeightNormCase {
  shape: [number, number];
  v: number[];
  g: number[];
  w: number[];
  dw: number[];
  dv: number[];
  dg: number[];
}
const fixture = await readFixture("norms.json") as {
  l2Normalize: NormalizeCase[];
  weightNorm: WeightNormCase[];
};

/** Random rows; row 0 is zero and row 1 tiny (norm below 1e-12) when there are enough rows. */
function rowsWithEdges(rng: Rng, rows: number, cols: number): Float32Array {
  const x = rng.normals(rows * cols);
  if (rows >= 3) {
    x.fill(0, 0, cols);
    for (let c = 0; c < cols; c++) x[cols + c] = rng.normal() * 1e-14;
  }
  return x;
}

// y = x / n: n carries ~√D/2 ulp from the f32 sum of squares, the division one more.
const Y_TOL = { rtol: 1e-5, atol: 1e-7 };

gpuTest("l2Normalize: matches the reference, zero rows stay zero", async (gpu) => {
  const rng = new Rng(1);
  for (const [rows, cols] of [[1, 1], [3, 7], [4, 16], [5, 256], [3, 1027]] as [number, number][]) {
    for (const threadsPerRow of [undefined, 1, 64]) {
      const x = rowsWithEdges(rng, rows, cols);
      const t = gpu.tensor(x, [rows, cols]);
      const r = l2Normalize(gpu, t, 1e-12, { threadsPerRow });
      const [y, norm] = await take(gpu, r.y, r.norm);
      gpu.release(t);
      const ref = l2NormalizeRef(x, cols);
      const what = `[${rows}, ${cols}] T/row ${threadsPerRow}`;
      // Tiny rows (norm ~4e-14) divide by eps: relative error still a few ulp.
      assertClose(y, ref.y, { rtol: 1e-5, atol: 0 }, `y ${what}`);
      assertClose(norm, ref.norm, { rtol: 1e-5, atol: 0 }, `norm ${what}`);
      if (rows >= 3) assertEquals([...y.subarray(0, cols)], new Array(cols).fill(0));
    }
  }
});

gpuTest(
  "l2Normalize backward matches finite differences on both sides of the clamp",
  async (gpu) => {
    const rng = new Rng(2);
    // eps 0.5: row 0 has norm ~0.2 (clamped: dx = dy/eps), row 1 ~2 (the projection rule).
    const eps = 0.5;
    for (const cols of [1, 5, 8]) {
      const x = Float32Array.from([
        ...withNorm(rng.normals(cols), 0.2),
        ...withNorm(rng.normals(cols), 2),
      ]);
      const dy = rng.normals(2 * cols);
      const xT = gpu.tensor(x, [2, cols]);
      const dyT = gpu.tensor(dy, [2, cols]);
      const f = l2Normalize(gpu, xT, eps);
      const [dx] = await take(gpu, l2NormalizeBackward(gpu, dyT, xT, f.norm, eps));
      gpu.release(xT, dyT, f.y, f.norm);
      const fd = finiteDifference((v) => dot(dy, l2NormalizeRef(v, cols, eps).y), x, 1e-4);
      // h = 1e-4 keeps both rows on their side of the clamp; error ~h²·|f'''| and f32 rounding.
      assertClose(dx, fd, { rtol: 1e-3, atol: 1e-4 }, `dx vs FD, D = ${cols}`);
      assertClose(dx, l2NormalizeBackwardRef(dy, x, cols, eps), Y_TOL, `dx vs rule, D = ${cols}`);
    }
  },
);

gpuTest(
  "l2Normalize backward matches the rule on larger rows, with zero and tiny rows",
  async (gpu) => {
    const rng = new Rng(3);
    for (const [rows, cols] of [[5, 256], [4, 33]] as [number, number][]) {
      const x = rowsWithEdges(rng, rows, cols);
      const dy = rng.normals(rows * cols);
      const xT = gpu.tensor(x, [rows, cols]);
      const dyT = gpu.tensor(dy, [rows, cols]);
      const f = l2Normalize(gpu, xT);
      const [dx] = await take(gpu, l2NormalizeBackward(gpu, dyT, xT, f.norm));
      gpu.release(xT, dyT, f.y, f.norm);
      // The clamped rows' gradient is dy / 1e-12: relative tolerance only.
      assertClose(dx, l2NormalizeBackwardRef(dy, x, cols), { rtol: 1e-5, atol: 1e-5 });
    }
  },
);

gpuTest(
  "weightNorm: forward and backward match the reference and finite differences",
  async (gpu) => {
    const rng = new Rng(4);
    for (const [k, din] of [[1, 1], [3, 5], [6, 12], [9, 256]] as [number, number][]) {
      const v = rng.normals(k * din);
      const g = rng.floats(k, 0.5, 1.5);
      const dw = rng.normals(k * din);
      const vT = gpu.tensor(v, [k, din]);
      const gT = gpu.tensor(g, [k, 1]); // PyTorch's weight_g layout
      const dwT = gpu.tensor(dw, [k, din]);
      const f = weightNorm(gpu, vT, gT);
      const b = weightNormBackward(gpu, dwT, vT, gT, f.norm);
      assertEquals(b.dg.shape, [k, 1], "dg has g's shape");
      const [w, norm, dv, dg] = await take(gpu, f.w, f.norm, b.dv, b.dg);
      gpu.release(vT, gT, dwT);
      const ref = weightNormRef(v, g, din);
      const what = `[${k}, ${din}]`;
      assertClose(w, ref.w, Y_TOL, `w ${what}`);
      assertClose(norm, ref.norm, { rtol: 1e-5, atol: 0 }, `norm ${what}`);
      const rule = weightNormBackwardRef(dw, v, g, din);
      assertClose(dv, rule.dv, Y_TOL, `dv ${what}`);
      assertClose(dg, rule.dg, { rtol: 1e-5, atol: 1e-6 }, `dg ${what}`);
      if (din <= 12) {
        const loss = (vv: ArrayLike<number>, gg: ArrayLike<number>) =>
          dot(dw, weightNormRef(vv, gg, din).w);
        // Central differences, h = 1e-3, of the float64 reference.
        const tol = { rtol: 1e-3, atol: 1e-4 };
        assertClose(dv, finiteDifference((x) => loss(x, g), v), tol, `dv vs FD ${what}`);
        assertClose(dg, finiteDifference((x) => loss(v, x), g), tol, `dg vs FD ${what}`);
      }
    }
  },
);

gpuTest("F.normalize and weight_norm match PyTorch 1.13 (fixture)", async (gpu) => {
  for (const c of fixture.l2Normalize) {
    const x = gpu.tensor(Float32Array.from(c.x), c.shape);
    const dy = gpu.tensor(Float32Array.from(c.dy), c.shape);
    const f = l2Normalize(gpu, x, c.eps);
    const [dx] = await take(gpu, l2NormalizeBackward(gpu, dy, x, f.norm, c.eps));
    const [y] = await take(gpu, f.y, f.norm);
    gpu.release(x, dy);
    // Both f32; the zero row's gradient is dy/1e-12 (~1e12), hence relative tolerances.
    assertClose(y, c.y, { rtol: 1e-5, atol: 1e-7 }, `F.normalize [${c.shape}]`);
    assertClose(dx, c.dx, { rtol: 1e-5, atol: 1e-6 }, `F.normalize grad [${c.shape}]`);
  }
  for (const c of fixture.weightNorm) {
    const [k] = c.shape;
    const v = gpu.tensor(Float32Array.from(c.v), c.shape);
    const g = gpu.tensor(Float32Array.from(c.g), [k, 1]);
    const dw = gpu.tensor(Float32Array.from(c.dw), c.shape);
    const f = weightNorm(gpu, v, g);
    const b = weightNormBackward(gpu, dw, v, g, f.norm);
    const [w, dv, dg] = await take(gpu, f.w, b.dv, b.dg);
    gpu.release(v, g, dw, f.norm);
    assertClose(w, c.w, Y_TOL, `weight_norm w [${c.shape}]`);
    assertClose(dv, c.dv, { rtol: 1e-5, atol: 1e-6 }, `weight_norm dv [${c.shape}]`);
    assertClose(dg, c.dg, { rtol: 1e-5, atol: 1e-6 }, `weight_norm dg [${c.shape}]`);
  }
});

gpuTest(
  "weightNorm and l2Normalize split rows over the binding limit, same results",
  async (gpu) => {
    const rng = new Rng(5);
    const [k, din] = [150, 24];
    const v = gpu.tensor(rng.normals(k * din), [k, din]);
    const g = gpu.tensor(rng.floats(k, 0.5, 1.5));
    const dw = gpu.tensor(rng.normals(k * din), [k, din]);
    const run = () => {
      const f = weightNorm(gpu, v, g);
      const b = weightNormBackward(gpu, dw, v, g, f.norm);
      const l = l2Normalize(gpu, v);
      const ld = l2NormalizeBackward(gpu, dw, v, l.norm);
      return [f.w, f.norm, b.dv, b.dg, l.y, l.norm, ld];
    };
    const whole = await take(gpu, ...run());
    await gpu.sync();
    const saved = gpu.limits.maxStorageBufferBindingSize;
    gpu.limits.maxStorageBufferBindingSize = 4096; // 96 B rows: chunks of 40 aligned rows
    let split: Float32Array[];
    try {
      split = await take(gpu, ...run());
    } finally {
      gpu.limits.maxStorageBufferBindingSize = saved;
    }
    gpu.release(v, g, dw);
    for (let i = 0; i < whole.length; i++) assertEquals([...split[i]], [...whole[i]]);
  },
);

gpuTest("l2norm: bad shapes get clear errors", (gpu) => {
  const v = gpu.zeros([4, 8]);
  const g3 = gpu.zeros([3]);
  const g41 = gpu.zeros([4, 1]);
  const v1 = gpu.zeros([8]);
  assertThrows(() => weightNorm(gpu, v, g3), RangeError, "weightNorm: g has shape [3]");
  assertThrows(() => weightNorm(gpu, v1, g41), RangeError, "weightNorm: v must be [K, Din]");
  assertThrows(() => weightNormBackward(gpu, v, v, g41, g3), RangeError, "norm");
  assertThrows(() => l2Normalize(gpu, v, -1), RangeError, "eps");
  assertThrows(() => l2NormalizeBackward(gpu, v1, v, g41), RangeError, "l2NormalizeBackward: dy");
  gpu.release(v, g3, g41, v1);
});

/** `v` scaled to norm `n`. */
function withNorm(v: Float32Array, n: number): Float32Array {
  const s = Math.sqrt(dot(v, v));
  return v.map((x) => (x * n) / s);
}
