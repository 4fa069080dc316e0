/** Bicubic position-embedding resampling: PyTorch golden values, reference, adjoint. */
import {
  bicubicResample,
  bicubicResampleBackward,
  bicubicResampleBackwardRef,
  bicubicResampleRef,
  type ResampleOptions,
  scaleFactorOptions,
} from "../kernels/resample.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { dot, finiteDifference, gpuTest, Rng } from "./helpers.ts";
import { f32, readFixture } from "./fixtures.ts";

interface Case {
  name: string;
  in: [number, number, number];
  outH: number;
  outW: number;
  scaleH?: number;
  scaleW?: number;
  grid: string;
  out: string;
  dy: string;
  dgrid: string;
}

const cases = (await readFixture("training_kernels.json")).resample as Case[];

function optsOf(c: Case): ResampleOptions {
  return c.scaleH === undefined
    ? { outH: c.outH, outW: c.outW }
    : scaleFactorOptions(c.in[0], c.in[1], c.scaleH, c.scaleW!);
}

gpuTest(
  "resample: torch F.interpolate bicubic, size and scale_factor modes, forward and grad",
  async (gpu) => {
    for (const c of cases) {
      const opts = optsOf(c);
      // scale_factor mode derives the same output size as torch (floor(in · sf)).
      assertEquals([opts.outH, opts.outW], [c.outH, c.outW], c.name);
      const g = gpu.tensor(f32(c.grid), c.in);
      const dy = gpu.tensor(f32(c.dy), [c.outH, c.outW, c.in[2]]);
      const y = bicubicResample(gpu, g, opts);
      const dx = bicubicResampleBackward(gpu, dy, c.in[0], c.in[1], opts);
      const [ry, rdx] = await gpu.readMany([y, dx]) as Float32Array[];
      // Torch computes its cubic weights in f32, and cc2 cancels near |x| = 2: up to 5e-7 absolute
      // per weight (measured through one-hot inputs). 16 taps over inputs |x| ≤ 3 give ≤ 3e-6 on
      // the outputs; gradients gather ~2.5x more terms per input, so 6e-6 there.
      assertClose(ry, f32(c.out), { rtol: 0, atol: 3e-6 }, `${c.name}: forward`);
      assertClose(rdx, f32(c.dgrid), { rtol: 0, atol: 6e-6 }, `${c.name}: grad`);
      // The CPU reference (which the tests below compare to) agrees with torch as closely.
      const ref = bicubicResampleRef(f32(c.grid), c.in, opts);
      assertClose(ref, f32(c.out), { rtol: 0, atol: 3e-6 }, `${c.name}: reference`);
      gpu.release(g, dy, y, dx);
    }
    // The two 37 → 16 modes really differ (scale 37/16 vs 37/16.1): the test can tell them apart.
    const [a, b] = [cases[0], cases[1]].map((c) => f32(c.out));
    assert(a.some((v, i) => Math.abs(v - b[i]) > 1e-3), "size and scale_factor modes differ");
  },
);

gpuTest(
  "resample: random grids vs reference, channels not a multiple of 4, 1×1 grids",
  async (gpu) => {
    const rng = new Rng(5);
    const shapes: [[number, number, number], ResampleOptions][] = [
      [[7, 5, 3], { outH: 4, outW: 9 }],
      [[1, 1, 5], { outH: 3, outW: 2 }], // all taps clamp onto the one input
      [[6, 6, 1], { outH: 6, outW: 6 }], // identity size: weights (0, 1, 0, 0)
      [[9, 4, 2], { outH: 3, outW: 5, scaleH: 0.4, scaleW: 1.3 }],
    ];
    for (const [shape, opts] of shapes) {
      const x = rng.normals(shape[0] * shape[1] * shape[2], 3);
      const t = gpu.tensor(x, shape);
      const y = bicubicResample(gpu, t, opts);
      // float64 reference vs f32 kernel, 16 products of magnitude ~3: 1e-6 absolute.
      assertClose(await gpu.readF32(y), bicubicResampleRef(x, shape, opts), {
        rtol: 1e-5,
        atol: 1e-6,
      }, `[${shape}] → ${opts.outH}×${opts.outW}`);
      if (opts.outH === shape[0] && opts.outW === shape[1]) {
        assertClose(await gpu.readF32(y), x, { rtol: 0, atol: 1e-6 }, "same size is the identity");
      }
      gpu.release(t, y);
    }
  },
);

gpuTest("resample backward: adjoint identity, reference and finite differences", async (gpu) => {
  const rng = new Rng(6);
  const [H, W, C] = [9, 7, 3];
  const opts: ResampleOptions = { outH: 5, outW: 11, scaleH: 0.6, scaleW: 1.6 };
  const x = rng.normals(H * W * C);
  const dyv = rng.normals(opts.outH * opts.outW * C);
  const tx = gpu.tensor(x, [H, W, C]);
  const tdy = gpu.tensor(dyv, [opts.outH, opts.outW, C]);
  const y = bicubicResample(gpu, tx, opts);
  const dx = bicubicResampleBackward(gpu, tdy, H, W, opts);
  const [ry, rdx] = await gpu.readMany([y, dx]) as Float32Array[];
  // ⟨A x, dy⟩ = ⟨x, Aᵀ dy⟩: f32 results summed in float64, ~1e-6 relative.
  const lhs = dot(ry, dyv), rhs = dot(x, rdx);
  assert(Math.abs(lhs - rhs) <= 1e-5 * Math.abs(lhs), `⟨Ax, y⟩ ${lhs} vs ⟨x, Aᵀy⟩ ${rhs}`);
  assertClose(rdx, bicubicResampleBackwardRef(dyv, H, W, C, opts), { rtol: 1e-5, atol: 1e-6 });
  // Finite differences of the (linear) reference: exact up to float64 rounding of h = 1e-3.
  const f = (v: Float64Array) =>
    dot(bicubicResampleRef(Float32Array.from(v), [H, W, C], opts), dyv);
  const idx = [0, 1, 5, 20, 62, H * W * C - 1];
  const fd = finiteDifference(f, x, 1e-2, idx);
  for (const i of idx) {
    assertClose([rdx[i]], [fd[i]], { rtol: 1e-3, atol: 1e-4 }, `d/dx[${i}]`);
  }
  gpu.release(tx, tdy, y, dx);
});

gpuTest("resample: bad shapes and options name the argument", (gpu) => {
  const g = gpu.zeros([4, 4]);
  assertThrows(() => bicubicResample(gpu, g, { outH: 2, outW: 2 }), RangeError, "[H, W, C]");
  const h = gpu.zeros([4, 4, 2]);
  assertThrows(() => bicubicResample(gpu, h, { outH: 0, outW: 2 }), RangeError, "outH");
  assertThrows(
    () => bicubicResample(gpu, h, { outH: 2, outW: 2, scaleW: -1 }),
    RangeError,
    "scaleW must be a positive finite scale factor",
  );
  assertThrows(
    () => bicubicResampleBackward(gpu, h, 8, 8, { outH: 3, outW: 4 }),
    RangeError,
    "dy is [4,4,2] but the options say outH=3, outW=4",
  );
  gpu.release(g, h);
});
