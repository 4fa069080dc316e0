/** Layer norm: reference, finite differences, determinism, splitting, PyTorch. */
import {
  layerNorm,
  layerNormBackward,
  layerNormBackwardRef,
  layerNormRef,
} from "../kernels/layernorm.ts";
import { GpuLimitError } from "../kernels/errors.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { rowChunks } from "../kernels/common/rows.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { dot, finiteDifference, gpuTest, Rng, take } from "./helpers.ts";
import { readFixture } from "./fixtures.ts";

interface LnCase {
  shape: [number, number];
  eps: number;
  x: number[];
  weight: number[];
  bias: number[];
  y: number[];
  dy: number[];
  dx: number[];
  dweight: number[];
  dbias: number[];
}
const fixture = await readFixture("norms.json") as { layerNorm: LnCase[] };

const EPS = 1e-6;

/** Rows of N(offset, scale²) values, and affine parameters near (1, 0). */
function data(rng: Rng, rows: number, cols: number, offset = 0, scale = 1) {
  const x = rng.normals(rows * cols, scale).map((v) => v + offset);
  const w = rng.normals(cols, 0.5).map((v) => v + 1);
  const b = rng.normals(cols, 0.5);
  return { x, w, b };
}

function upload(gpu: Gpu, d: { x: Float32Array; w: Float32Array; b: Float32Array }, cols: number) {
  return {
    x: gpu.tensor(d.x, [d.x.length / cols, cols]),
    w: gpu.tensor(d.w),
    b: gpu.tensor(d.b),
  };
}

gpuTest(
  "layerNorm: forward matches the float64 reference on edge and random shapes",
  async (gpu) => {
    const rng = new Rng(1);
    const shapes: [number, number, number][] = [
      [1, 1, 0],
      [1, 64, 0],
      [3, 7, 0],
      [5, 24, 3],
      [33, 10, 0],
      [17, 384, 0],
      [4, 1536, 0],
      [9, 100, 100], // a large offset: the two-pass variance keeps it
    ];
    for (const [rows, cols, offset] of shapes) {
      for (const threadsPerRow of [undefined, 1, 8, 256]) {
        const d = data(rng, rows, cols, offset);
        const t = upload(gpu, d, cols);
        const r = layerNorm(gpu, t.x, t.w, t.b, EPS, { threadsPerRow });
        const [y, mean, rstd] = await take(gpu, r.y, r.mean, r.rstd);
        gpu.release(t.x, t.w, t.b);
        const ref = layerNormRef(d.x, d.w, d.b, cols, EPS);
        const what = `[${rows}, ${cols}] +${offset} T/row ${threadsPerRow}`;
        // f32 sums of D values err by ~√D ulp of |mean|·D; x̂ then errs by that over std.
        const tol = { rtol: 1e-5, atol: 2e-6 * (1 + offset) * Math.sqrt(cols) / 10 + 1e-6 };
        assertClose(y, ref.y, tol, `y ${what}`);
        assertClose(mean, ref.mean, { rtol: 1e-6, atol: 1e-6 }, `mean ${what}`);
        assertClose(rstd, ref.rstd, { rtol: 1e-5, atol: 0 }, `rstd ${what}`);
      }
    }
  },
);

gpuTest("layerNorm: a constant row normalises to the bias (variance 0 + eps)", async (gpu) => {
  const cols = 12;
  const x = gpu.tensor(new Float32Array(2 * cols).fill(3.5), [2, cols]);
  const w = gpu.tensor(new Float32Array(cols).fill(2));
  const bd = Float32Array.from({ length: cols }, (_, i) => i / 10);
  const b = gpu.tensor(bd);
  const r = layerNorm(gpu, x, w, b, EPS);
  const [y, rstd] = await take(gpu, r.y, r.rstd);
  gpu.release(x, w, b, r.mean);
  assertClose(y, [...bd, ...bd], { rtol: 0, atol: 1e-6 }, "y = bias");
  assertClose(rstd, [1000, 1000], { rtol: 1e-6, atol: 0 }, "rstd = 1/sqrt(eps)");
});

gpuTest("layerNorm backward matches finite differences for x, weight and bias", async (gpu) => {
  const rng = new Rng(2);
  for (const [rows, cols] of [[1, 1], [3, 5], [2, 16]] as [number, number][]) {
    const d = data(rng, rows, cols, 0.5);
    const dy = rng.normals(rows * cols);
    const t = upload(gpu, d, cols);
    const dyT = gpu.tensor(dy, [rows, cols]);
    const f = layerNorm(gpu, t.x, t.w, t.b, EPS);
    const g = layerNormBackward(gpu, dyT, t.x, t.w, f.mean, f.rstd);
    const [dx, dw, db] = await take(gpu, g.dx, g.dweight, g.dbias);
    gpu.release(t.x, t.w, t.b, dyT, f.y, f.mean, f.rstd);
    const loss = (x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number>) =>
      dot(dy, layerNormRef(x, w, b, cols, EPS).y);
    // Central differences of the float64 reference, h = 1e-3: error ~h²·|f'''| ≲ 1e-5 here.
    const tol = { rtol: 1e-3, atol: 1e-4 };
    const what = `[${rows}, ${cols}]`;
    assertClose(dx, finiteDifference((v) => loss(v, d.w, d.b), d.x), tol, `dx ${what}`);
    assertClose(dw, finiteDifference((v) => loss(d.x, v, d.b), d.w), tol, `dweight ${what}`);
    assertClose(db, finiteDifference((v) => loss(d.x, d.w, v), d.b), tol, `dbias ${what}`);
  }
});

gpuTest(
  "layerNorm backward matches the reference on larger shapes and is deterministic",
  async (gpu) => {
    const rng = new Rng(3);
    // [600, 40] with 64 threads per row: one row per workgroup, several rows per block.
    const cases: [number, number, number | undefined][] = [
      [17, 384, undefined],
      [5, 1536, undefined],
      [600, 40, 64],
      [70, 9, 1],
      [130, 24, 8],
      [2100, 8, 8], // several rows per group and several groups per block
    ];
    for (const [rows, cols, threadsPerRow] of cases) {
      const d = data(rng, rows, cols, 1);
      const dy = rng.normals(rows * cols);
      const t = upload(gpu, d, cols);
      const dyT = gpu.tensor(dy, [rows, cols]);
      const f = layerNorm(gpu, t.x, t.w, t.b, EPS, { threadsPerRow });
      const g1 = layerNormBackward(gpu, dyT, t.x, t.w, f.mean, f.rstd, { threadsPerRow });
      const g2 = layerNormBackward(gpu, dyT, t.x, t.w, f.mean, f.rstd, { threadsPerRow });
      const [dx, dw, db, dw2, db2] = await take(
        gpu,
        g1.dx,
        g1.dweight,
        g1.dbias,
        g2.dweight,
        g2.dbias,
      );
      gpu.release(t.x, t.w, t.b, dyT, f.y, f.mean, f.rstd, g2.dx);
      const ref = layerNormBackwardRef(dy, d.x, d.w, cols, EPS);
      const what = `[${rows}, ${cols}] T/row ${threadsPerRow}`;
      // dx: a few f32 roundings of O(1) terms; dweight/dbias: sums over N rows, ~√N ulp.
      assertClose(dx, ref.dx, { rtol: 1e-4, atol: 1e-5 }, `dx ${what}`);
      const sumTol = { rtol: 1e-5, atol: 2e-6 * Math.sqrt(rows) };
      assertClose(dw, ref.dweight, sumTol, `dweight ${what}`);
      assertClose(db, ref.dbias, sumTol, `dbias ${what}`);
      assertEquals([...dw2], [...dw], "dweight is repeatable bit for bit");
      assertEquals([...db2], [...db], "dbias is repeatable bit for bit");
    }
  },
);

gpuTest("layerNorm matches PyTorch 1.13 nn.LayerNorm (fixture)", async (gpu) => {
  for (const c of fixture.layerNorm) {
    const [rows, cols] = c.shape;
    const x = gpu.tensor(Float32Array.from(c.x), [rows, cols]);
    const w = gpu.tensor(Float32Array.from(c.weight));
    const b = gpu.tensor(Float32Array.from(c.bias));
    const dy = gpu.tensor(Float32Array.from(c.dy), [rows, cols]);
    const f = layerNorm(gpu, x, w, b, c.eps);
    const g = layerNormBackward(gpu, dy, x, w, f.mean, f.rstd);
    const [y, dx, dw, db] = await take(gpu, f.y, g.dx, g.dweight, g.dbias);
    gpu.release(x, w, b, dy, f.mean, f.rstd);
    // Both are f32 with different summation orders: a few ulp of O(1) values.
    const what = `[${rows}, ${cols}]`;
    assertClose(y, c.y, { rtol: 1e-5, atol: 1e-5 }, `y ${what}`);
    assertClose(dx, c.dx, { rtol: 1e-4, atol: 1e-5 }, `dx ${what}`);
    assertClose(dw, c.dweight, { rtol: 1e-5, atol: 1e-5 }, `dweight ${what}`);
    assertClose(db, c.dbias, { rtol: 1e-5, atol: 1e-5 }, `dbias ${what}`);
  }
});

gpuTest("layerNorm: rows over the binding limit split, with identical results", async (gpu) => {
  const rng = new Rng(4);
  const rows = 600;
  const cols = 24;
  const d = data(rng, rows, cols);
  const t = upload(gpu, d, cols);
  const dy = gpu.tensor(rng.normals(rows * cols), [rows, cols]);
  // x is 56 KiB. 8 threads per row: workgroup-combined partials, one per 8-row block (14 KiB);
  // 64: one row per workgroup, 3 rows per block (37.5 KiB of partials). Both fit a 48 KiB
  // limit that splits x. (One thread per row writes a partial per group, here more bytes than
  // x itself, so it cannot run under a limit that splits x: the backward throws GpuLimitError.)
  for (const threadsPerRow of [8, 64]) {
    const run = () => {
      const f = layerNorm(gpu, t.x, t.w, t.b, EPS, { threadsPerRow });
      const g = layerNormBackward(gpu, dy, t.x, t.w, f.mean, f.rstd, { threadsPerRow });
      return [f.y, f.mean, f.rstd, g.dx, g.dweight, g.dbias];
    };
    const whole = await take(gpu, ...run());
    await gpu.sync();
    const saved = gpu.limits.maxStorageBufferBindingSize;
    // 96 B rows: 48 KiB holds 512 rows; 256 B-aligned, block-sized steps make two chunks.
    gpu.limits.maxStorageBufferBindingSize = 48 * 1024;
    let split: Float32Array[];
    try {
      assert(rowChunks(gpu, "test", rows, [cols * 4]).length > 1, "x is split");
      split = await take(gpu, ...run());
      if (threadsPerRow === 8) {
        const f = layerNorm(gpu, t.x, t.w, t.b, EPS, { threadsPerRow: 1 });
        const opts = { threadsPerRow: 1 };
        assertThrows(
          () => layerNormBackward(gpu, dy, t.x, t.w, f.mean, f.rstd, opts),
          GpuLimitError,
          "partial parameter gradients",
        );
        gpu.release(f.y, f.mean, f.rstd);
      }
    } finally {
      gpu.limits.maxStorageBufferBindingSize = saved;
    }
    for (let i = 0; i < whole.length; i++) assertEquals([...split[i]], [...whole[i]]);
  }
  gpu.release(t.x, t.w, t.b, dy);
});

gpuTest("layerNorm: bad shapes get clear errors; empty batches do not dispatch", async (gpu) => {
  const x = gpu.zeros([4, 8]);
  const w = gpu.zeros([8]);
  const w7 = gpu.zeros([7]);
  const m3 = gpu.zeros([3]);
  assertThrows(() => layerNorm(gpu, x, w7, w, EPS), RangeError, "layerNorm: weight");
  assertThrows(() => layerNorm(gpu, x, w, w7, EPS), RangeError, "layerNorm: bias");
  assertThrows(() => layerNorm(gpu, x, w, w, -1), RangeError, "eps");
  assertThrows(
    () => layerNormBackward(gpu, x, x, w, m3, m3),
    RangeError,
    "layerNormBackward: mean",
  );
  assertThrows(() => layerNormBackward(gpu, m3, x, w, m3, m3), RangeError, "dy");
  const before = gpu.stats().dispatches;
  const e = gpu.zeros([0, 8]);
  const f = layerNorm(gpu, e, w, w, EPS);
  const g = layerNormBackward(gpu, e, e, w, f.mean, f.rstd);
  assertEquals(gpu.stats().dispatches, before, "no dispatch for an empty batch");
  const [dw] = await take(gpu, g.dweight);
  assert(dw.every((v) => v === 0), "dweight of an empty batch is 0");
  gpu.release(x, w, w7, m3, e, f.y, f.mean, f.rstd, g.dx, g.dbias);
});
