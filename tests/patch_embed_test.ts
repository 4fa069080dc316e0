/** im2col / col2im for DINOv2's patch embedding (Conv2d with stride = kernel). */
import { col2im, col2imRef, im2col, im2colRef } from "../kernels/patch_embed.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { dot, gpuTest, Rng } from "./helpers.ts";
import { f32, readFixture } from "./fixtures.ts";

const fixture = (await readFixture("training_kernels.json")).patchEmbed as {
  shape: number[];
  patch: number;
  dim: number;
  images: string;
  weight: string;
  bias: string;
  out: string;
}[];

gpuTest(
  "im2col: matches the reference on edge shapes (dropped borders, p = 1, one row)",
  async (gpu) => {
    const rng = new Rng(1);
    const cases: [number[], number][] = [
      [[2, 3, 30, 44], 14], // gh = 2, gw = 3: the last 2 rows and 2 columns are dropped
      [[1, 1, 5, 3], 1], // patch 1: a pure NCHW → NHWC transpose
      [[3, 2, 4, 4], 4], // one patch per image
      [[1, 3, 13, 13], 14], // smaller than a patch: no rows
    ];
    for (const [shape, p] of cases) {
      const x = rng.normals(shape.reduce((a, b) => a * b));
      const t = gpu.tensor(x, shape);
      const cols = im2col(gpu, t, p);
      const gh = Math.floor(shape[2] / p), gw = Math.floor(shape[3] / p);
      assertEquals(cols.shape, [shape[0] * gh * gw, shape[1] * p * p]);
      // A pure copy: bit-exact.
      if (cols.numel) {
        assertEquals(
          [...(await gpu.readF32(cols))],
          [...im2colRef(x, shape, p)],
          `[${shape}]/${p}`,
        );
      }
      gpu.release(t, cols);
    }
  },
);

gpuTest(
  "col2im: the adjoint of im2col (⟨Ax, y⟩ = ⟨x, Aᵀy⟩) and matches the reference",
  async (gpu) => {
    const rng = new Rng(2);
    const shape = [2, 3, 31, 29];
    const p = 14;
    const x = rng.normals(2 * 3 * 31 * 29);
    const rows = 2 * 2 * 2, ncols = 3 * 14 * 14;
    const y = rng.normals(rows * ncols);
    const tx = gpu.tensor(x, shape);
    const ty = gpu.tensor(y, [rows, ncols]);
    const ax = im2col(gpu, tx, p);
    const aty = col2im(gpu, ty, shape, p);
    const [rax, raty] = await gpu.readMany([ax, aty]) as Float32Array[];
    // Both inner products sum the same 2352 products (float64 on the host): equal to 1e-9 relative.
    const lhs = dot(rax, y), rhs = dot(x, raty);
    assert(Math.abs(lhs - rhs) <= 1e-9 * Math.abs(lhs), `⟨Ax, y⟩ ${lhs} != ⟨x, Aᵀy⟩ ${rhs}`);
    assertEquals([...raty], [...col2imRef(y, shape, p)], "col2im is a copy: bit-exact");
    // Dropped border pixels get a zero gradient, not garbage from a reused buffer.
    assertEquals(raty[30 * 29 + 28], 0);
    gpu.release(tx, ty, ax, aty);
  },
);

gpuTest(
  "im2col/col2im: split into image ranges when a binding would pass the limit",
  async (gpu) => {
    const rng = new Rng(3);
    const shape = [5, 3, 32, 32];
    const x = rng.normals(5 * 3 * 32 * 32);
    const t = gpu.tensor(x, shape);
    // 12,288 B per image in and out (a multiple of 256): two images per dispatch, three dispatches.
    const opts = { maxBindingBytes: 2 * 12288 + 100 };
    const before = gpu.stats().dispatches;
    const cols = im2col(gpu, t, 16, opts);
    assertEquals(gpu.stats().dispatches - before, 3);
    const back = col2im(gpu, cols, shape, 16, opts);
    const [rc, rb] = await gpu.readMany([cols, back]) as Float32Array[];
    assertEquals([...rc], [...im2colRef(x, shape, 16)]);
    assertEquals([...rb], [...x], "32 = 2·16: no border, col2im inverts im2col");
    assertThrows(() => im2col(gpu, t, 16, { maxBindingBytes: 12000 }), Error, "binding limit");
    gpu.release(t, cols, back);
  },
);

gpuTest(
  "im2col: with the weight reshaped to [D, C·p·p] it is torch's Conv2d patch embedding",
  async (gpu) => {
    for (const c of fixture) {
      const [B, C, H, W] = c.shape;
      const p = c.patch, D = c.dim;
      const t = gpu.tensor(f32(c.images), c.shape);
      const colsT = im2col(gpu, t, p);
      const cols = await gpu.readF32(colsT);
      const w = f32(c.weight), b = f32(c.bias);
      const k = C * p * p;
      const rows = B * Math.floor(H / p) * Math.floor(W / p);
      const y = new Float32Array(rows * D);
      for (let r = 0; r < rows; r++) {
        for (let d = 0; d < D; d++) {
          y[r * D + d] = b[d] +
            dot(cols.subarray(r * k, (r + 1) * k), w.subarray(d * k, (d + 1) * k));
        }
      }
      // torch sums up to 588 f32 products in its own order: 1e-5 relative to |y| ~ 1.
      assertClose(y, f32(c.out), { rtol: 1e-5, atol: 1e-5 }, `conv [${c.shape}] p${p}`);
      gpu.release(t, colsT);
    }
  },
);

gpuTest("im2col/col2im: shape errors name the op and the fix", (gpu) => {
  const t = gpu.zeros([3, 28, 28]);
  assertThrows(() => im2col(gpu, t, 14), RangeError, "im2col: images must be [B, C, H, W]");
  const u = gpu.zeros([1, 3, 28, 28]);
  assertThrows(() => im2col(gpu, u, 0), RangeError, "patch must be a positive integer");
  const d = gpu.zeros([4, 100]);
  assertThrows(
    () => col2im(gpu, d, [1, 3, 28, 28], 14),
    RangeError,
    "dcols must be [4, 588] for images [1,3,28,28] and patch 14, got [4,100]",
  );
  gpu.release(t, u, d);
});
