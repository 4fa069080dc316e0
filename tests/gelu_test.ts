/**
 * kernels/gelu.ts, bloom's one erf and GELU: the float64 references against Python's math.erf
 * and PyTorch's float64 GELU, the WGSL against the references, and the two GPU paths that
 * compute GELU — matmul's fused epilogue (teacher, embedding) and the elementwise op of the
 * recorded graph (student) — against each other and against PyTorch.
 *
 * Tolerances:
 * - references vs math.erf / torch float64: rtol 1e-14 / 1e-8 (series and continued fraction
 *   are good to ~1e-15; torch's own float64 GELU, 0.5·x·(1 + erf(x/√2)), cancels in the far
 *   negative tail, hence atol 1e-15 there).
 * - WGSL GELU vs float64: rtol 6e-7 (measured 5.7e-7 on llvmpipe over [-14, 14]); atol only
 *   covers results below f32's normal range, which some GPUs flush to zero. erf: atol 1.5e-7
 *   (measured 1.4e-7). GELU's derivative: rtol 2e-6, atol 5e-7 (exp of −x²/2 carries the
 *   rounding of its argument, ~x²·6e-8 relative).
 * - fused vs unfused: bit for bit. Both paths feed the same f32 value (the same variant, the
 *   same accumulation order) to the same WGSL function; a compiler that contracted the two
 *   call sites differently would show up here.
 * - vs PyTorch's float64 GELU at f32 inputs: the WGSL bound (rtol 6e-7); the linear + bias +
 *   GELU golden (a K = 12 product in f32 against float64): matmul's tolerance, rtol 1e-5 and
 *   atol 2e-6·√K.
 */
import { gelu, geluBackward } from "../kernels/elementwise.ts";
import { erfRef, GELU_WGSL, geluGradRef, geluRef } from "../kernels/gelu.ts";
import { kernel } from "../kernels/kernel.ts";
import { matmul, type MatmulVariant } from "../kernels/matmul/mod.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { assert, assertClose, assertEquals } from "./assert.ts";
import { num, readFixture } from "./fixtures.ts";
import { gpuTest, Rng } from "./helpers.ts";

const pointwise = await readFixture("pointwise.json");
const mm = await readFixture("matmul.json");
const torchGelu = mm.cases.gelu as { x: number[]; y: number[] };

/** Every f32 input the checks use: PyTorch's points, a dense grid and the edges of f32. */
function points(): Float32Array {
  const grid = Float32Array.from({ length: 4001 }, (_, i) => -14 + (28 * i) / 4000);
  return new Float32Array([...torchGelu.x, ...grid, 1e-30, -1e-30, 30, -30, 0, -0]);
}

/** Evaluates `fns` (WGSL functions of one f32) of GELU_WGSL at `x` on the GPU. */
async function evalWgsl(gpu: Gpu, fns: string[], x: Float32Array): Promise<Float32Array[]> {
  const n = x.length;
  const k = kernel({
    name: "test_gelu_wgsl",
    key: fns.join(","),
    bindings: ["read", "read_write"],
    source: () =>
      `${GELU_WGSL}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = arrayLength(&x);
  if (g.x < n) {
${fns.map((f, i) => `    y[g.x + ${i}u * n] = ${f}(x[g.x]);`).join("\n")}
  }
}`,
  });
  const tx = gpu.tensor(x);
  const ty = gpu.empty([fns.length * n]);
  gpu.dispatch(k, [tx, ty], [Math.ceil(n / 64)]);
  const y = await gpu.readF32(ty);
  gpu.release(tx, ty);
  return fns.map((_, i) => y.subarray(i * n, (i + 1) * n));
}

Deno.test("gelu.ts references: erf vs Python's math.erf, GELU vs PyTorch's float64", () => {
  const e = pointwise.erf;
  assertClose(e.x.map(erfRef), e.erf64, { rtol: 1e-14, atol: 1e-16 }, "erfRef");
  // The fixture's x are f32 values (written with fewer digits): round them back first.
  const tx = Array.from(Float32Array.from(torchGelu.x), geluRef);
  assertClose(tx, torchGelu.y, { rtol: 1e-8, atol: 1e-15 }, "geluRef");
  // The derivative against a central difference of the reference (h = 1e-5: error ~h²).
  for (const x of [-9, -3, -1, -0.25, 0, 0.5, 2, 7]) {
    const fd = (geluRef(x + 1e-5) - geluRef(x - 1e-5)) / 2e-5;
    assertClose([geluGradRef(x)], [fd], { rtol: 1e-8, atol: 1e-10 }, `gelu'(${x})`);
  }
});

gpuTest("GELU_WGSL: GELU, its derivative and erf vs the float64 references", async (gpu) => {
  const x = points();
  const [g, dg, erf] = await evalWgsl(gpu, ["bloom_gelu", "bloom_gelu_grad", "bloom_erf"], x);
  assertClose(g, Array.from(x, geluRef), { rtol: 6e-7, atol: 1e-37 }, "gelu");
  assertClose(dg, Array.from(x, geluGradRef), { rtol: 2e-6, atol: 5e-7 }, "gelu'");
  assertClose(erf, Array.from(x, erfRef), { rtol: 0, atol: 1.5e-7 }, "erf");
  const e = pointwise.erf;
  const [fixtureErf] = await evalWgsl(gpu, ["bloom_erf"], Float32Array.from(e.x));
  assertClose(fixtureErf, e.erf64, { rtol: 0, atol: 1.5e-7 }, "erf at the fixture points");
  // Edges: what PyTorch gives (gelu(−Inf) is −Inf·0 = NaN there too; beyond |x| = 14 the far
  // negative tail is exactly 0).
  const edges = new Float32Array([Infinity, -Infinity, NaN, -100, 100, -15]);
  const [ge, dge, ee] = await evalWgsl(
    gpu,
    ["bloom_gelu", "bloom_gelu_grad", "bloom_erf"],
    edges,
  );
  const torch = pointwise.edges.gelu;
  const exact = { rtol: 0, atol: 0 };
  assertClose(ge.subarray(0, 5), torch.y.map(num), exact, "gelu at the edges");
  assertClose(dge.subarray(0, 5), torch.dx.map(num), exact, "gelu' at the edges");
  assertEquals(Math.abs(ge[5]), 0, "gelu(-15) underflows to (−)0");
  assertClose(ee.subarray(0, 3), [1, -1, NaN], exact, "erf at ±Inf and NaN");
});

/** Asserts two f32 arrays hold the same bits. */
function assertSameBits(a: Float32Array, b: Float32Array, what: string): void {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  assertEquals(ua.length, ub.length, `${what}: lengths`);
  const i = ua.findIndex((v, j) => v !== ub[j]);
  assert(i < 0, `${what}: element ${i} is ${a[i]} against ${b[i]}`);
}

/** A variant small enough that tiny shapes still cover several workgroups. */
const VARIANTS: MatmulVariant[] = [
  { kind: "reg", tm: 4, tn: 4, wgm: 4, wgn: 2 },
  { kind: "tiled", bm: 16, bn: 16, bk: 8, tm: 4, tn: 4 },
];

/** matmul with the fused GELU epilogue, and matmul then the elementwise GELU, read back. */
async function bothPaths(
  gpu: Gpu,
  a: GpuTensor,
  b: GpuTensor,
  variant: MatmulVariant,
  bias?: GpuTensor,
): Promise<[Float32Array, Float32Array]> {
  const opts = { transB: true, bias };
  const fused = matmul(gpu, a, b, { ...opts, activation: "gelu" }, { variant });
  const pre = matmul(gpu, a, b, opts, { variant });
  const unfused = gelu(gpu, pre);
  const [f, u] = await gpu.readMany([fused, unfused]);
  gpu.release(fused, pre, unfused);
  return [f as Float32Array, u as Float32Array];
}

gpuTest(
  "GELU: matmul's fused epilogue and the elementwise op agree bit for bit, and match PyTorch",
  async (gpu) => {
    // x · 1 is exact, so both paths see PyTorch's own inputs: as [n, 1] · [1, 1]ᵀ (scalar
    // epilogue) and as [n/4, 4] · I₄ᵀ (vec4 epilogue; x + 0·y is exact for finite y).
    const x = points().filter(Number.isFinite);
    const n4 = x.length - (x.length % 4);
    const one = gpu.tensor(new Float32Array([1]), [1, 1]);
    const eye = gpu.tensor(Float32Array.from({ length: 16 }, (_, i) => (i % 5 === 0 ? 1 : 0)), [
      4,
      4,
    ]);
    const col = gpu.tensor(x, [x.length, 1]);
    const quads = gpu.tensor(x.subarray(0, n4), [n4 / 4, 4]);
    const want = Array.from(x, geluRef);
    for (const v of VARIANTS) {
      for (const [a, b, len] of [[col, one, x.length], [quads, eye, n4]] as const) {
        const [fused, unfused] = await bothPaths(gpu, a, b, v);
        const what = `${v.kind}, ${b === one ? "scalar" : "vec4"} epilogue`;
        assertSameBits(fused, unfused, `fused vs unfused (${what})`);
        assertClose(fused, want.slice(0, len), { rtol: 6e-7, atol: 1e-37 }, `vs float64 (${what})`);
      }
    }
    // PyTorch's float64 GELU at its own points (the first entries of x).
    const torchN = torchGelu.x.length;
    const [f] = await bothPaths(gpu, col, one, VARIANTS[0]);
    // atol: torch's float64 formula cancels in the far negative tail (see the file comment).
    assertClose(f.subarray(0, torchN), torchGelu.y, { rtol: 6e-7, atol: 1e-15 }, "vs torch");
    gpu.release(one, eye, col, quads);

    // A real layer: torch's nn.GELU()(F.linear(x, w, b)) golden, and random weights.
    const c = mm.cases.linear_bias_gelu;
    const lx = gpu.tensor(Float32Array.from(c.x), c.x_shape);
    const lw = gpu.tensor(Float32Array.from(c.w), c.w_shape);
    const lb = gpu.tensor(Float32Array.from(c.b), [c.w_shape[0]]);
    const K = c.x_shape[c.x_shape.length - 1];
    for (const v of VARIANTS) {
      const [fused, unfused] = await bothPaths(gpu, lx, lw, v, lb);
      assertSameBits(fused, unfused, `linear fused vs unfused (${v.kind})`);
      const tol = { rtol: 1e-5, atol: 2e-6 * Math.sqrt(K) };
      assertClose(fused, c.y, tol, `linear + GELU vs torch (${v.kind})`);
    }
    gpu.release(lx, lw, lb);
    const rng = new Rng(11);
    const ra = gpu.tensor(rng.floats(37 * 24, -2, 2), [37, 24]);
    const rb = gpu.tensor(rng.floats(20 * 24, -2, 2), [20, 24]);
    const rbias = gpu.tensor(rng.floats(20), [20]);
    for (const v of VARIANTS) {
      const [fused, unfused] = await bothPaths(gpu, ra, rb, v, rbias);
      assert(fused.some((y) => y < 0) && fused.some((y) => y > 1), "both sides of GELU are hit");
      assertSameBits(fused, unfused, `random fused vs unfused (${v.kind})`);
    }
    gpu.release(ra, rb, rbias);
  },
);

gpuTest("GELU: the elementwise backward is GELU_WGSL's derivative", async (gpu) => {
  const x = points().filter(Number.isFinite);
  const tx = gpu.tensor(x);
  const ones = gpu.tensor(new Float32Array(x.length).fill(1));
  const dx = geluBackward(gpu, ones, tx);
  const [direct] = await evalWgsl(gpu, ["bloom_gelu_grad"], x);
  // dy · f'(x) with dy = 1 is f'(x) exactly: the op is the WGSL function, nothing else.
  assertSameBits(await gpu.readF32(dx), direct, "geluBackward vs bloom_gelu_grad");
  gpu.release(tx, ones, dx);
});
