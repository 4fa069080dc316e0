/**
 * kernels/matmul/ against its float64 reference, finite differences and PyTorch goldens.
 *
 * Tolerance for a K-long f32 dot product of O(1) values: |got − want| ≤ atol + rtol·|want| with
 * rtol 1e-5 and atol 2e-6·√K — the accumulated rounding of K FMAs grows like √K·eps·‖a‖‖b‖,
 * and √K·eps ≈ 6e-8·√K, so this leaves ~30× headroom while still failing on any wrong index.
 */
import { GpuLimitError } from "../kernels/errors.ts";
import {
  FALLBACK_VARIANT,
  matmul,
  MATMUL_CANDIDATES,
  matmulBackward,
  matmulRef,
  type MatmulRefOptions,
  matmulStrided,
  type MatmulVariant,
  parseVariant,
  variantId,
} from "../kernels/matmul/mod.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { finiteDifference, gpuTest, Rng } from "./helpers.ts";

/** Small tiles, so small shapes still span several blocks and every edge path. */
const SMALL_REG: MatmulVariant = { kind: "reg", tm: 4, tn: 4, wgm: 4, wgn: 2 };
const SMALL_TILED: MatmulVariant = { kind: "tiled", bm: 16, bn: 16, bk: 8, tm: 4, tn: 4 };
const BOTH = [SMALL_REG, SMALL_TILED];

const tol = (K: number) => ({ rtol: 1e-5, atol: 2e-6 * Math.sqrt(Math.max(K, 1)) });

interface Fixture {
  cases: Record<string, Record<string, number[] | number>>;
}
const fixture: Fixture = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/matmul.json", import.meta.url)),
);
const fx = (c: string, k: string) => Float32Array.from(fixture.cases[c][k] as number[]);
const fxShape = (c: string, k: string) => fixture.cases[c][k] as number[];

/** Output shape of a matmul: broadcast batch dims, then [M, N]. */
function outShapeOf(aShape: number[], bShape: number[], transA = false, transB = false) {
  const ab = aShape.slice(0, -2);
  const bb = bShape.slice(0, -2);
  const n = Math.max(ab.length, bb.length);
  const batch = Array.from(
    { length: n },
    (_, i) => Math.max(ab[ab.length - n + i] ?? 1, bb[bb.length - n + i] ?? 1),
  );
  const M = transA ? aShape[aShape.length - 1] : aShape[aShape.length - 2];
  const N = transB ? bShape[bShape.length - 2] : bShape[bShape.length - 1];
  return [...batch, M, N];
}

const count = (s: number[]) => s.reduce((x, y) => x * y, 1);

/** Which epilogue pieces a check uses (values are drawn at random). */
interface Epi {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  bias?: boolean;
  gelu?: boolean;
  scale?: boolean;
  residual?: boolean;
  accumulate?: boolean;
}

/** Uploads random operands, multiplies on the GPU and compares with matmulRef. */
async function check(
  gpu: Gpu,
  rng: Rng,
  aShape: number[],
  bShape: number[],
  e: Epi,
  variant: MatmulVariant | undefined,
  what: string,
  magnitude = 1,
): Promise<void> {
  const outShape = outShapeOf(aShape, bShape, e.transA, e.transB);
  const N = outShape[outShape.length - 1];
  const K = e.transA ? aShape[aShape.length - 2] : aShape[aShape.length - 1];
  const a = rng.floats(count(aShape)).map((v) => v * magnitude);
  const b = rng.floats(count(bShape)).map((v) => v * magnitude);
  const ref: MatmulRefOptions = {
    transA: e.transA,
    transB: e.transB,
    alpha: e.alpha,
    activation: e.gelu ? "gelu" : "none",
    bias: e.bias ? rng.floats(N) : undefined,
    scale: e.scale ? rng.floats(N, 0.5, 1.5) : undefined,
    residual: e.residual ? rng.floats(count(outShape)) : undefined,
    accumulate: e.accumulate ? rng.floats(count(outShape)) : undefined,
  };
  const want = matmulRef(a, aShape, b, bShape, ref);
  const up = (x: Float32Array | undefined, shape: number[]) => x && gpu.tensor(x, shape);
  const ga = gpu.tensor(a, aShape);
  const gb = gpu.tensor(b, bShape);
  const bias = up(ref.bias, [N]);
  const scale = up(ref.scale, [N]);
  const residual = up(ref.residual, outShape);
  const acc = up(ref.accumulate, outShape);
  const out = matmul(gpu, ga, gb, {
    transA: e.transA,
    transB: e.transB,
    alpha: e.alpha,
    bias,
    activation: ref.activation,
    scale,
    residual,
    accumulate: acc,
  }, variant ? { variant } : {});
  if (acc) assert(out === acc, "accumulate returns the tensor it added into");
  assert(out.shape.join() === outShape.join(), `${what}: shape [${out.shape}] vs [${outShape}]`);
  const got = await gpu.readF32(out);
  const t = tol(K);
  assertClose(got, want, { rtol: t.rtol, atol: t.atol * magnitude * magnitude }, what);
  gpu.release(ga, gb, bias, scale, residual, out);
}

const vname = (v?: MatmulVariant) => (v ? variantId(v) : "tuned");

gpuTest(
  "matmul: both variants match the reference on edge shapes in all four transposes",
  async (gpu) => {
    const rng = new Rng(1);
    // [M, N, K]: 1×1×1, not multiples of any tile, one row, one column, K = 1, and an aligned
    // shape that takes the vec4 paths.
    const shapes = [[1, 1, 1], [17, 13, 9], [1, 12, 16], [20, 1, 8], [9, 11, 1], [16, 24, 32]];
    for (const v of BOTH) {
      for (const [M, N, K] of shapes) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            await check(
              gpu,
              rng,
              transA ? [K, M] : [M, K],
              transB ? [N, K] : [K, N],
              { transA, transB },
              v,
              `${vname(v)} M${M} N${N} K${K} tA${+transA} tB${+transB}`,
            );
          }
        }
      }
    }
  },
);

gpuTest("matmul: every candidate variant is correct on an edge shape", async (gpu) => {
  const rng = new Rng(2);
  for (const v of MATMUL_CANDIDATES) {
    // The nn.Linear layout with K % 4 == 0 (vec4 loads on both sides) and partial blocks in
    // M and N; the scalar paths and K tails are covered by the small variants above.
    await check(gpu, rng, [70, 36], [45, 36], { transB: true }, v, `${vname(v)} 70x45x36 NT`);
  }
});

gpuTest("matmul: split-K (kChunk) sums its dispatches exactly like one long sum", async (gpu) => {
  const rng = new Rng(21);
  const split: MatmulVariant = { kind: "reg", tm: 8, tn: 8, wgm: 8, wgn: 2, kChunk: 8 };
  assertEquals(variantId(split), "reg-8x8-8x2-k8");
  assertEquals(parseVariant("reg-16x16-8x2-k512"), {
    kind: "reg",
    tm: 16,
    tn: 16,
    wgm: 8,
    wgn: 2,
    kChunk: 512,
  });
  assertEquals(parseVariant("reg-16x16-8x2-k6"), null); // not a multiple of 4
  // K = 30 over chunks of 8 (a 6-wide tail), every transpose, alpha and accumulate (all
  // chunks after the first accumulate), a batched case whose strides must stay the whole
  // operands', and epilogues that cannot split (bias, GELU) running unsplit.
  const cases: [number[], number[], Epi, string][] = [
    [[30, 21], [30, 10], { transA: true }, "dW layout: aᵀ b"],
    [[21, 30], [10, 30], { transB: true, alpha: 0.5 }, "a bᵀ, alpha"],
    [[21, 30], [30, 10], { accumulate: true }, "a b, accumulate"],
    [[30, 21], [10, 30], { transA: true, transB: true }, "aᵀ bᵀ"],
    [[3, 9, 32], [3, 32, 7], { alpha: -2 }, "batched"],
    [[21, 32], [10, 32], { transB: true, bias: true, gelu: true }, "bias+gelu: unsplit"],
  ];
  for (const [aShape, bShape, e, what] of cases) {
    await check(gpu, rng, aShape, bShape, e, split, `k8 ${what}`);
  }
  // The split is real: K = 30 in chunks of 8 is 4 dispatches; with a bias it is one.
  const a = gpu.tensor(rng.floats(30 * 21), [30, 21]);
  const b = gpu.tensor(rng.floats(30 * 10), [30, 10]);
  const bias = gpu.tensor(rng.floats(10), [10]);
  const count = (fn: () => void) => {
    const before = gpu.stats().dispatches;
    fn();
    return gpu.stats().dispatches - before;
  };
  assertEquals(
    count(() => gpu.release(matmul(gpu, a, b, { transA: true }, { variant: split }))),
    4,
  );
  const plainOnce = count(() =>
    gpu.release(matmul(gpu, a, b, { transA: true, bias }, { variant: split }))
  );
  assertEquals(plainOnce, 1);
  gpu.release(a, b, bias);
});

gpuTest(
  "matmul: the texture-operand kernel (tex) matches the reference where it runs, else reg runs",
  async (gpu) => {
    const rng = new Rng(22);
    const small: MatmulVariant = { kind: "tex", tm: 8, tn: 8, wgm: 8, wgn: 1 };
    assertEquals(variantId(small), "tex-8x8-8x1");
    assertEquals(parseVariant("tex-32x24-8x1"), { kind: "tex", tm: 32, tn: 24, wgm: 8, wgn: 1 });
    /** Kernel names `fn` dispatches (the recording keeps them). */
    const kernels = async (fn: () => void) => {
      const { recording } = await gpu.capture(fn);
      const names = recording.dispatches.map((d) => (d as { name: string }).name);
      gpu.disposeRecording(recording);
      return [...new Set(names)];
    };
    // Rows of 64 floats (256 B: a copyable texture pitch), partial blocks in M and N, both B
    // layouts, the whole epilogue; then layouts a copy cannot take, which must run `reg`.
    const runs: [number[], number[], Epi, string, string][] = [
      [[70, 64], [45, 64], { transB: true }, "a bᵀ", "matmul_tex"],
      [
        [70, 64],
        [45, 64],
        {
          transB: true,
          alpha: 0.5,
          bias: true,
          gelu: true,
          scale: true,
          residual: true,
        },
        "a bᵀ + epilogue",
        "matmul_tex",
      ],
      [[33, 128], [128, 64], { bias: true, accumulate: true }, "a b + accumulate", "matmul_tex"],
      [[20, 36], [45, 36], { transB: true }, "K = 36: a 144 B pitch", "matmul_reg"],
      [[64, 20], [64, 64], { transA: true }, "aᵀ b", "matmul_reg"],
      [[2, 9, 64], [2, 64, 64], {}, "batched", "matmul_reg"],
    ];
    for (const [aShape, bShape, e, what, kernel] of runs) {
      await check(gpu, rng, aShape, bShape, e, small, `tex ${what}`);
      const ga = gpu.tensor(rng.floats(count(aShape)), aShape);
      const gb = gpu.tensor(rng.floats(count(bShape)), bShape);
      const names = await kernels(() =>
        gpu.release(matmul(gpu, ga, gb, { transA: e.transA, transB: e.transB }, {
          variant: small,
        }))
      );
      assertEquals(names, [kernel], `${what} runs ${kernel}`);
      gpu.release(ga, gb);
    }
    // A block above 256 outputs writes out row by row (a switch over its rows): partial row
    // blocks and column groups, every epilogue piece.
    const big: MatmulVariant = { kind: "tex", tm: 32, tn: 24, wgm: 8, wgn: 1 };
    for (
      const e of [{ transB: true }, { transB: true, alpha: 2, bias: true, gelu: true }, {
        transB: true,
        bias: true,
        scale: true,
        residual: true,
        accumulate: true,
      }] as Epi[]
    ) {
      await check(gpu, rng, [270, 64], [44, 64], e, big, `tex-32x24 ${JSON.stringify(e)}`);
    }
    // More rows than a texture holds: split into row chunks, each copied into the A texture.
    const rows = 600;
    const a = rng.floats(rows * 64);
    const b = rng.floats(40 * 64);
    const ga = gpu.tensor(a, [rows, 64]);
    const gb = gpu.tensor(b, [40, 64]);
    const before = gpu.stats().dispatches;
    const y = matmul(gpu, ga, gb, { transB: true }, { variant: small, maxTextureRows: 256 });
    assertEquals(gpu.stats().dispatches - before, 3, "600 rows in chunks of 256");
    assertClose(
      await gpu.readF32(y),
      matmulRef(a, [rows, 64], b, [40, 64], { transB: true }),
      tol(64),
      "row-split tex",
    );
    gpu.release(ga, gb, y);
  },
);

gpuTest("matmul: precision f16 reads B as halves with f32 sums, where it can", async (gpu) => {
  const rng = new Rng(23);
  const [M, N, K] = [70, 44, 64];
  const a = rng.floats(M * K);
  const b = rng.floats(N * K);
  const bias = rng.floats(N);
  const halves = Float32Array.from(new Float16Array(b)); // round to nearest even, as torch .half()
  const ga = gpu.tensor(a, [M, K]);
  const gb = gpu.tensor(b, [N, K]);
  const gbias = gpu.tensor(bias);
  const tex: MatmulVariant = { kind: "tex", tm: 32, tn: 24, wgm: 8, wgn: 1 };
  const run = async (v: MatmulVariant) => {
    const y = matmul(gpu, ga, gb, {
      transB: true,
      bias: gbias,
      activation: "gelu",
      precision: "f16",
    }, { variant: v });
    const out = await gpu.readF32(y);
    gpu.release(y);
    return out;
  };
  const opts = { transB: true, bias, activation: "gelu" as const };
  const exact = matmulRef(a, [M, K], b, [N, K], opts);
  if (gpu.features.f16) {
    // The same sums over f16-rounded weights: f32 rounding only (the packing is exact).
    assertClose(await run(tex), matmulRef(a, [M, K], halves, [N, K], opts), tol(K), "f16");
    // Against f32 weights the rounding shows: |Δw| ≤ 2⁻¹¹|w| over K = 64 terms of |a| ≤ 1.
    const got = await run(tex);
    assertClose(got, exact, { rtol: 0, atol: 64 * 2 ** -11 }, "f16 vs f32 weights");
    assert(maxAbsDiff(got, exact) > 1e-6, "the weights really were rounded");
  }
  // Where halves cannot be used (a buffer kernel) the multiply runs in f32.
  assertClose(await run(FALLBACK_VARIANT), exact, tol(K), "reg kernel: f32");
  gpu.release(ga, gb, gbias);
});

/** Largest |x − y|. */
function maxAbsDiff(x: Float32Array, y: Float32Array): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  return m;
}

gpuTest(
  "matmul: fused epilogue (alpha, bias, GELU, LayerScale, residual, accumulate)",
  async (gpu) => {
    const rng = new Rng(3);
    const cases: [string, Epi][] = [
      ["bias+gelu", { bias: true, gelu: true }],
      ["alpha+bias+gelu+scale+residual", {
        alpha: 0.37,
        bias: true,
        gelu: true,
        scale: true,
        residual: true,
      }],
      ["scale+residual", { scale: true, residual: true }],
      ["alpha+bias+accumulate", { alpha: -2, bias: true, accumulate: true }],
    ];
    for (const v of BOTH) {
      for (const [name, e] of cases) {
        // x [2, 9, 12] · w[10, 12]ᵀ: the linear-layer layout with a batch folded into M.
        await check(
          gpu,
          rng,
          [2, 9, 12],
          [10, 12],
          { ...e, transB: true },
          v,
          `${vname(v)} ${name}`,
        );
      }
    }
  },
);

gpuTest("matmul: batch dims broadcast numpy-style", async (gpu) => {
  const rng = new Rng(4);
  const cases: [number[], number[], Epi][] = [
    [[2, 3, 5, 4], [3, 4, 6], {}], // b broadcast over the leading dim
    [[5, 4], [2, 3, 4, 6], {}], // a broadcast over all of b's batch
    [[2, 1, 5, 4], [1, 3, 6, 4], { transB: true }], // both broadcast: a 2-level batch
    [[2, 1, 2, 4, 5], [1, 3, 1, 4, 6], { transA: true, residual: true }], // 3 levels: loops
    [[3, 7, 5], [5, 6], { bias: true }], // shared weight: folded into one tall multiply
  ];
  for (const [as, bs, e] of cases) {
    await check(gpu, rng, as, bs, e, SMALL_REG, `[${as}]·[${bs}] ${JSON.stringify(e)}`);
  }
});

gpuTest("matmul: large and small magnitudes keep their relative accuracy", async (gpu) => {
  const rng = new Rng(5);
  // Products of 1e15 reach 1e30·K (f32 max 3.4e38); 1e-15 stays clear of denormals (which
  // some GPUs flush). The tolerance scales with the magnitude², i.e. stays relative.
  for (const mag of [1e15, 1e-15]) {
    for (const v of BOTH) {
      await check(gpu, rng, [9, 33], [33, 7], {}, v, `${vname(v)} magnitude ${mag}`, mag);
    }
  }
});

gpuTest(
  "matmul: bindings over the limit are split over batches and rows, never truncated",
  async (gpu) => {
    const rng = new Rng(6);
    const M = 70;
    const N = 24;
    const K = 20;
    const a = rng.floats(3 * M * K);
    const b = rng.floats(3 * K * N);
    const res = rng.floats(3 * M * N);
    const ga = gpu.tensor(a, [3, M, K]);
    const gb = gpu.tensor(b, [3, K, N]);
    const gr = gpu.tensor(res, [3, M, N]);
    for (const v of BOTH) {
      for (const [limit, what] of [[20000, "batches"], [2048, "rows"]] as const) {
        const before = gpu.stats().dispatches;
        const out = matmul(gpu, ga, gb, { residual: gr }, { variant: v, maxBindingBytes: limit });
        const dispatches = gpu.stats().dispatches - before;
        // One batch of A is 5600 B and of out 6720 B: 20000 B forces per-batch-group dispatches,
        // 2048 B forces row chunks inside each batch.
        assert(dispatches > (what === "rows" ? 3 : 1), `${what}: ${dispatches} dispatches`);
        assertClose(
          await gpu.readF32(out),
          matmulRef(a, [3, M, K], b, [3, K, N], { residual: res }),
          tol(K),
          `${vname(v)} split over ${what}`,
        );
        gpu.release(out);
      }
    }
    gpu.release(ga, gb, gr);
    // B is needed whole by every row chunk: when it alone is over the limit no split helps.
    // (16 KiB of B; 16-row chunks of A and out need ~4 KiB.)
    const x = gpu.zeros([70, 64]);
    const w = gpu.zeros([64, 64]);
    assertThrows(
      () => matmul(gpu, x, w, {}, { variant: SMALL_REG, maxBindingBytes: 8192 }),
      GpuLimitError,
      /matmul: tensor 'b' \[64,64\] needs a 16 KiB binding .* over the 8 KiB binding limit/,
    );
    gpu.release(x, w);
  },
);

gpuTest("matmul: strided entry point multiplies per-head slices in place", async (gpu) => {
  // qkv [B, T, 3, H, d] → scores[b, h] = q[b, :, h] · k[b, :, h]ᵀ, with no copies.
  const rng = new Rng(7);
  const [B, T, H, d] = [2, 5, 3, 8];
  const qkv = rng.floats(B * T * 3 * H * d);
  const g = gpu.tensor(qkv, [B, T, 3, H, d]);
  const scores = gpu.empty([B, H, T, T]);
  const row = 3 * H * d; // elements between tokens
  for (const v of BOTH) {
    matmulStrided(gpu, {
      a: g,
      b: g,
      out: scores,
      M: T,
      N: T,
      K: d,
      batch: [B, H],
      offsetA: 0, // q of head 0
      offsetB: H * d, // k of head 0
      lda: row,
      ldb: row,
      strideA: [T * row, d],
      strideB: [T * row, d],
      strideOut: [H * T * T, T * T],
      transB: true,
      alpha: 1 / Math.sqrt(d),
    }, { variant: v });
    const want = new Float32Array(B * H * T * T);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < T; i++) {
          for (let j = 0; j < T; j++) {
            let s = 0;
            for (let c = 0; c < d; c++) {
              s += qkv[(b * T + i) * row + h * d + c] * qkv[(b * T + j) * row + H * d + h * d + c];
            }
            want[((b * H + h) * T + i) * T + j] = s / Math.sqrt(d);
          }
        }
      }
    }
    assertClose(await gpu.readF32(scores), want, tol(d), `${vname(v)} per-head scores`);
  }
  assertThrows(
    () => matmulStrided(gpu, { a: g, b: g, out: scores, M: T, N: T, K: d, batch: 99 }),
    RangeError,
    /'a' .* too small/,
  );
  gpu.release(g, scores);
});

gpuTest("matmul: bad shapes and options give clear errors", (gpu) => {
  const a = gpu.zeros([4, 5]);
  const b = gpu.zeros([6, 7]);
  assertThrows(() => matmul(gpu, a, b), RangeError, /K=5 but b \[6,7\].*K=6/);
  assertThrows(() => matmul(gpu, a, gpu.zeros([5])), RangeError, /at least 2 dims/);
  const b2 = gpu.zeros([5, 7]);
  assertThrows(
    () => matmul(gpu, a, b2, { bias: gpu.zeros([6]) }),
    RangeError,
    /bias .*expected \[7\]/,
  );
  assertThrows(() => matmul(gpu, a, b2, { residual: gpu.zeros([4, 6]) }), RangeError, /residual/);
  assertThrows(
    () => matmul(gpu, gpu.zeros([2, 4, 5]), gpu.zeros([3, 5, 7])),
    RangeError,
    /do not broadcast/,
  );
  assertThrows(
    // deno-lint-ignore no-explicit-any
    () => matmul(gpu, a, b2, { activation: "relu" as any }),
    RangeError,
    /unknown activation 'relu'/,
  );
  // Empty operands: K = 0 gives zeros plus the epilogue, M = 0 an empty output.
  const empty = matmul(gpu, gpu.zeros([3, 0]), gpu.zeros([0, 2]), {
    bias: gpu.tensor(new Float32Array([1, 2])),
  });
  return gpu.readF32(empty).then((v) => assertClose(v, [1, 2, 1, 2, 1, 2], {}, "K = 0"));
});

/** Float64 loss Σ dy ⊙ alpha·op(A)·op(B) over broadcast batches, for finite differences. */
function loss64(
  a: ArrayLike<number>,
  as: number[],
  b: ArrayLike<number>,
  bs: number[],
  dy: Float32Array,
  o: { transA: boolean; transB: boolean; alpha: number },
): number {
  // Not matmulRef: it rounds its result to f32, too coarse for finite differences.
  const out = outShapeOf(as, bs, o.transA, o.transB);
  const [M, N] = out.slice(-2);
  const K = o.transA ? as[as.length - 2] : as[as.length - 1];
  const nb = count(out.slice(0, -2));
  const bd = out.slice(0, -2);
  const strides = (s: number[], mat: number) => {
    const sb = s.slice(0, -2);
    const st: number[] = [];
    let acc = mat;
    for (let i = bd.length - 1; i >= 0; i--) {
      const dim = sb[sb.length - bd.length + i] ?? 1;
      st[i] = dim === 1 ? 0 : acc;
      acc *= dim;
    }
    return st;
  };
  const sa = strides(as, M * K);
  const sb = strides(bs, K * N);
  let total = 0;
  for (let bi = 0; bi < nb; bi++) {
    let rem = bi;
    let oa = 0;
    let ob = 0;
    for (let d = bd.length - 1; d >= 0; d--) {
      const i = rem % bd[d];
      rem = Math.floor(rem / bd[d]);
      oa += i * sa[d];
      ob += i * sb[d];
    }
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          s += a[oa + (o.transA ? k * M + m : m * K + k)] *
            b[ob + (o.transB ? n * K + k : k * N + n)];
        }
        total += dy[bi * M * N + m * N + n] * o.alpha * s;
      }
    }
  }
  return total;
}

gpuTest(
  "matmulBackward: gradients match finite differences (float64), incl. broadcast sums",
  async (gpu) => {
    const rng = new Rng(8);
    const cases: [number[], number[], boolean, boolean][] = [
      [[3, 4], [4, 5], false, false],
      [[4, 3], [4, 5], true, false],
      [[3, 4], [5, 4], false, true],
      [[4, 3], [5, 4], true, true],
      [[2, 3, 4], [5, 4], false, true], // shared weight: db summed over the batch (folded)
      [[2, 4, 3], [4, 5], true, false], // transposed A with a shared b: per-batch then reduced
      [[3, 4], [2, 2, 4, 5], false, false], // a broadcast over two dims of b
      [[2, 1, 3, 4], [1, 2, 4, 5], false, false], // both broadcast
    ];
    for (const [as, bs, transA, transB] of cases) {
      const o = { transA, transB, alpha: 0.5 };
      const a = rng.floats(count(as));
      const b = rng.floats(count(bs));
      const outShape = outShapeOf(as, bs, transA, transB);
      const dy = rng.floats(count(outShape));
      const ga = gpu.tensor(a, as);
      const gb = gpu.tensor(b, bs);
      const gdy = gpu.tensor(dy, outShape);
      const { da, db } = matmulBackward(gpu, gdy, ga, gb, o, { variant: SMALL_REG });
      assert(da && db, "both gradients returned");
      assert(da.shape.join() === as.join() && db.shape.join() === bs.join(), "gradient shapes");
      const fa = finiteDifference((x) => loss64(x, as, b, bs, dy, o), a);
      const fb = finiteDifference((x) => loss64(a, as, x, bs, dy, o), b);
      // The loss is linear in each operand, so central differences are exact up to float64
      // rounding; what remains is the kernel's f32 error.
      const what = `[${as}]·[${bs}] tA${+transA} tB${+transB}`;
      assertClose(await gpu.readF32(da), fa, { rtol: 1e-5, atol: 1e-5 }, `da ${what}`);
      assertClose(await gpu.readF32(db), fb, { rtol: 1e-5, atol: 1e-5 }, `db ${what}`);
      const only = matmulBackward(gpu, gdy, ga, gb, { ...o, needA: false }, { variant: SMALL_REG });
      assert(only.da === undefined && only.db !== undefined, "needA: false skips da");
      gpu.release(ga, gb, gdy, da, db, only.db);
    }
  },
);

gpuTest(
  "matmul: PyTorch golden values (linear+GELU, LayerScale+residual, transposes, broadcast)",
  async (gpu) => {
    const c = "linear_bias_gelu";
    const x = gpu.tensor(fx(c, "x"), fxShape(c, "x_shape"));
    const w = gpu.tensor(fx(c, "w"), fxShape(c, "w_shape"));
    const b = gpu.tensor(fx(c, "b"));
    for (const v of [undefined, SMALL_TILED]) {
      const y = matmul(
        gpu,
        x,
        w,
        { transB: true, bias: b, activation: "gelu" },
        v ? { variant: v } : {},
      );
      assertClose(await gpu.readF32(y), fx(c, "y"), tol(12), `${c} ${vname(v)}`);
      gpu.release(y);
    }
    gpu.release(x, w, b);
    for (const c of ["layerscale_residual", "layerscale_residual_gelu"]) {
      const x = gpu.tensor(fx(c, "x"), fxShape(c, "x_shape"));
      const w = gpu.tensor(fx(c, "w"), fxShape(c, "w_shape"));
      const b = gpu.tensor(fx(c, "b"));
      const g = gpu.tensor(fx(c, "gamma"));
      const r = gpu.tensor(fx(c, "residual"), [3, 7, 6]);
      const y = matmul(gpu, x, w, {
        transB: true,
        bias: b,
        scale: g,
        residual: r,
        activation: c.endsWith("gelu") ? "gelu" : "none",
      });
      assertClose(await gpu.readF32(y), fx(c, "y"), tol(8), c);
      gpu.release(x, w, b, g, r, y);
    }
    {
      const c = "batched_trans_alpha";
      const a = gpu.tensor(fx(c, "a"), fxShape(c, "a_shape"));
      const b = gpu.tensor(fx(c, "b"), fxShape(c, "b_shape"));
      const alpha = fixture.cases[c].alpha as number;
      const y = matmul(gpu, a, b, { transA: true, transB: true, alpha }, { variant: SMALL_REG });
      assertClose(await gpu.readF32(y), fx(c, "y"), tol(9), c);
      gpu.release(a, b, y);
    }
    {
      const c = "broadcast";
      const a = gpu.tensor(fx(c, "a"), fxShape(c, "a_shape"));
      const b = gpu.tensor(fx(c, "b"), fxShape(c, "b_shape"));
      const y = matmul(gpu, a, b);
      assertClose(await gpu.readF32(y), fx(c, "y"), tol(5), c);
      gpu.release(a, b, y);
    }
    {
      const c = "linear_backward";
      const x = gpu.tensor(fx(c, "x"), fxShape(c, "x_shape"));
      const w = gpu.tensor(fx(c, "w"), fxShape(c, "w_shape"));
      const dy = gpu.tensor(fx(c, "dy"), [2, 4, 5]);
      // The default (tuned or fallback) variant: the path the autodiff graph takes.
      const { da, db } = matmulBackward(gpu, dy, x, w, { transB: true });
      assertClose(await gpu.readF32(da!), fx(c, "dx"), tol(5), "dx");
      assertClose(await gpu.readF32(db!), fx(c, "dw"), tol(8), "dw (summed over the batch)");
      gpu.release(x, w, dy, da, db);
    }
  },
);
