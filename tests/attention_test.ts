/**
 * Fused attention: forward and backward against the float64 references,
 * finite differences, PyTorch golden values, the batch split, variants,
 * edge shapes and errors.
 */
import {
  attention,
  attentionBackward,
  attentionBackwardRef,
  attentionCandidates,
  attentionPlan,
  attentionRef,
  attentionRef64,
  type AttentionVariant,
  attentionVariantId,
  defaultAttentionPlan,
  parseAttentionVariant,
  tuneAttention,
} from "../kernels/attention.ts";
import { AutotuneCache } from "../kernels/autotune.ts";
import { GpuLimitError } from "../kernels/errors.ts";
import { sizeClass } from "../kernels/pool.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { assert, assertClose, assertEquals, assertThrows, type Tolerance } from "./assert.ts";
import { finiteDifference, gpuTest, Rng } from "./helpers.ts";

/** Cheap-to-compile variants (llvmpipe compile time grows with rows × head dim). */
const SMALL: AttentionVariant = { kind: "rows", wg: 8, rows: 1, block: 1 };

interface Case {
  B: number;
  T: number;
  H: number;
  dh: number;
  scale?: number;
}

async function runBoth(
  gpu: Gpu,
  c: Case,
  qkvData: Float32Array,
  doutData: Float32Array,
  variant?: AttentionVariant,
): Promise<{ out: Float32Array; lse: Float32Array; dqkv: Float32Array }> {
  const opts = { heads: c.H, scale: c.scale, variant };
  const qkv = gpu.tensor(qkvData, [c.B, c.T, 3 * c.H * c.dh]);
  const dout = gpu.tensor(doutData, [c.B, c.T, c.H * c.dh]);
  const r = attention(gpu, qkv, opts);
  const g = attentionBackward(gpu, dout, qkv, r.out, r.lse, opts);
  const [out, lse, dqkv] = (await gpu.readMany([r.out, r.lse, g])) as Float32Array[];
  gpu.release(qkv, dout, r.out, r.lse, g);
  return { out, lse, dqkv };
}

function randomCase(c: Case, seed: number, qkvScale = 1) {
  const rng = new Rng(seed);
  return {
    qkv: rng.normals(c.B * c.T * 3 * c.H * c.dh, qkvScale),
    dout: rng.normals(c.B * c.T * c.H * c.dh),
  };
}

// f32 kernels vs a float64 reference on N(0, 1) inputs: scores have std ≈ 1, outputs are convex
// combinations of values (|o| ≲ 3) accumulated over up to 1025 keys, so rounding grows like
// √T·ε ≈ 2e-6 at most. Observed worst errors (T = 1025, dh 64): out 4.8e-7, lse 1.8e-6 (on
// |lse| ≈ 7), dqkv 1.3e-6; each tolerance leaves about 10× that.
const OUT_TOL: Tolerance = { rtol: 2e-5, atol: 5e-6 };
const LSE_TOL: Tolerance = { rtol: 3e-6, atol: 3e-6 };
const GRAD_TOL: Tolerance = { rtol: 5e-5, atol: 1e-5 };

gpuTest(
  "attention: forward matches the reference for token counts 1…1025 (head dim 64)",
  async (gpu) => {
    for (const T of [1, 2, 63, 65, 257, 261, 1025]) {
      const c: Case = T > 300 ? { B: 1, T, H: 1, dh: 64 } : { B: 2, T, H: 2, dh: 64 };
      const { qkv } = randomCase(c, T);
      const t = gpu.tensor(qkv, [c.B, c.T, 3 * c.H * c.dh]);
      const r = attention(gpu, t, { heads: c.H });
      assertEquals(r.out.shape, [c.B, T, c.H * c.dh]);
      assertEquals(r.lse.shape, [c.B, c.H, T]);
      const [out, lse] = await gpu.readMany([r.out, r.lse]);
      const ref = attentionRef(qkv, c.B, T, c.H, c.dh);
      assertClose(out, ref.out, OUT_TOL, `out T=${T}`);
      assertClose(lse, ref.lse, LSE_TOL, `lse T=${T}`);
      gpu.release(t, r.out, r.lse);
    }
  },
);

gpuTest(
  "attention: backward matches the reference for token counts 1…257 (head dim 64)",
  async (gpu) => {
    for (const T of [1, 2, 63, 65, 257]) {
      const c: Case = { B: 2, T, H: 2, dh: 64 };
      const { qkv, dout } = randomCase(c, 100 + T);
      const got = await runBoth(gpu, c, qkv, dout);
      const ref = attentionBackwardRef(dout, qkv, c.B, T, c.H, c.dh);
      assertClose(got.dqkv, ref, GRAD_TOL, `dqkv T=${T}`);
    }
  },
);

gpuTest(
  "attention: head dims 6, 16, 32, 80, 128, several head counts, custom scale",
  async (gpu) => {
    const cases: Case[] = [
      { B: 2, T: 37, H: 3, dh: 16 },
      { B: 1, T: 33, H: 2, dh: 32, scale: 0.3 },
      { B: 1, T: 29, H: 2, dh: 80 },
      { B: 1, T: 21, H: 1, dh: 128 },
      // Not a multiple of 4: the scalar (f32) storage path.
      { B: 2, T: 19, H: 5, dh: 6 },
    ];
    for (const c of cases) {
      const { qkv, dout } = randomCase(c, c.dh);
      const got = await runBoth(gpu, c, qkv, dout, SMALL);
      const ref = attentionRef(qkv, c.B, c.T, c.H, c.dh, c.scale);
      const gref = attentionBackwardRef(dout, qkv, c.B, c.T, c.H, c.dh, c.scale);
      const what = `B${c.B} T${c.T} H${c.H} dh${c.dh}`;
      assertClose(got.out, ref.out, OUT_TOL, `out ${what}`);
      assertClose(got.lse, ref.lse, LSE_TOL, `lse ${what}`);
      assertClose(got.dqkv, gref, GRAD_TOL, `dqkv ${what}`);
    }
  },
);

gpuTest("attention: every variant family agrees with the reference", async (gpu) => {
  // Between them: scalar and vec4 dot products, rows per invocation 1–3, key blocks with
  // masked tails, a tail pass at one row, workgroup-memory tiles not a multiple of wg.
  const variants: AttentionVariant[] = [
    { kind: "rows", wg: 16, rows: 2, block: 4, dot: "vec" },
    { kind: "rows", wg: 8, rows: 3, block: 3, dot: "scalar" },
    { kind: "tiled", wg: 8, rows: 2, block: 2, tile: 6 },
  ];
  // T = 37: not a multiple of any block, tile or rows·wg, so every tail and mask runs.
  const c: Case = { B: 2, T: 37, H: 2, dh: 16 };
  const { qkv, dout } = randomCase(c, 5);
  const ref = attentionRef(qkv, c.B, c.T, c.H, c.dh);
  const gref = attentionBackwardRef(dout, qkv, c.B, c.T, c.H, c.dh);
  for (const v of variants) {
    const got = await runBoth(gpu, c, qkv, dout, v);
    const what = JSON.stringify(v);
    assertClose(got.out, ref.out, OUT_TOL, `out ${what}`);
    assertClose(got.lse, ref.lse, LSE_TOL, `lse ${what}`);
    assertClose(got.dqkv, gref, GRAD_TOL, `dqkv ${what}`);
  }
  // The workgroup-memory family at DINOv2's head dim.
  const c64: Case = { B: 1, T: 45, H: 2, dh: 64 };
  const r64 = randomCase(c64, 6);
  const got = await runBoth(gpu, c64, r64.qkv, r64.dout, {
    kind: "tiled",
    wg: 32,
    rows: 1,
    block: 2,
    tile: 16,
  });
  assertClose(got.out, attentionRef(r64.qkv, 1, 45, 2, 64).out, OUT_TOL, "tiled dh64 out");
  assertClose(
    got.dqkv,
    attentionBackwardRef(r64.dout, r64.qkv, 1, 45, 2, 64),
    GRAD_TOL,
    "tiled dh64 dqkv",
  );
});

gpuTest("attention: the texture-reading forward agrees with the reference", async (gpu) => {
  // 3·H·Dh·4 = 768 B rows: a pitch textures take; rows 3 with a 2-key block and a one-row
  // tail pass over T = 37. The backward of a `tex` variant reads storage (tex is forward-only).
  const tex: AttentionVariant = {
    kind: "rows",
    wg: 8,
    rows: 3,
    block: 2,
    dot: "scalar",
    tex: true,
  };
  const c: Case = { B: 3, T: 37, H: 2, dh: 32 };
  const { qkv, dout } = randomCase(c, 15);
  const ref = attentionRef(qkv, c.B, c.T, c.H, c.dh);
  const got = await runBoth(gpu, c, qkv, dout, tex);
  assertClose(got.out, ref.out, OUT_TOL, "tex out");
  assertClose(got.lse, ref.lse, LSE_TOL, "tex lse");
  assertClose(got.dqkv, attentionBackwardRef(dout, qkv, c.B, c.T, c.H, c.dh), GRAD_TOL, "dqkv");
  // It really reads a texture: the forward copies qkv into one and binds it.
  const t = gpu.tensor(qkv, [c.B, c.T, 3 * c.H * c.dh]);
  const before = gpu.stats().dispatches;
  const { recording, result } = await gpu.capture(() =>
    attention(gpu, t, { heads: c.H, variant: tex })
  );
  assert(recording.commands.some((x) => x.kind === "copyTex"), "qkv copied into a texture");
  assert(gpu.stats().dispatches > before);
  gpu.release(result.out, result.lse);
  gpu.disposeRecording(recording);
  // A pitch a copy cannot take (dh 12: 288 B rows) runs the storage kernel, same answer.
  const c12: Case = { B: 2, T: 21, H: 2, dh: 12 };
  const r12 = randomCase(c12, 16);
  const got12 = await runBoth(gpu, c12, r12.qkv, r12.dout, tex);
  assertClose(got12.out, attentionRef(r12.qkv, 2, 21, 2, 12).out, OUT_TOL, "dh 12 out");
  gpu.release(t);
});

gpuTest("attention: scores of magnitude 1e3 do not overflow (online softmax)", async (gpu) => {
  const c: Case = { B: 1, T: 65, H: 2, dh: 64 };
  // q, k ~ N(0, 31.6²): scaled scores q·k/8 have std ≈ 1e3, so exp(score) overflows f32.
  const { qkv, dout } = randomCase(c, 77, Math.sqrt(1000));
  const ref = attentionRef64(qkv, c.B, c.T, c.H, c.dh);
  let maxScore = 0;
  for (let h = 0; h < c.H; h++) {
    for (let i = 0; i < c.T; i++) maxScore = Math.max(maxScore, ref.lse[h * c.T + i]);
  }
  assert(maxScore > 500, `test needs scores ≫ 88 (f32 exp overflow), max lse ${maxScore}`);
  const got = await runBoth(gpu, c, qkv, dout);
  assert(got.out.every(Number.isFinite) && got.lse.every(Number.isFinite), "finite outputs");
  // Each score sums 64 products of size ~1e3: rounding ≈ 1e3·8·6e-8 ≈ 5e-4 in s, which moves
  // lse (≈ 1e3) by as much; observed 4e-4, tolerance 2e-3. The softmax is nearly one-hot at
  // this scale, so out ≈ the top value (N(0, 31.6²)): observed 9e-6, tolerance 1e-4 + 1e-5·|o|.
  assertClose(got.out, ref.out, { rtol: 1e-5, atol: 1e-4 }, "out at large magnitude");
  assertClose(got.lse, ref.lse, { rtol: 0, atol: 2e-3 }, "lse at large magnitude");
  assert(got.dqkv.every(Number.isFinite), "finite gradients at large magnitude");
});

gpuTest("attention: backward equals finite differences of the float64 forward", async (gpu) => {
  const c: Case = { B: 1, T: 3, H: 2, dh: 4 };
  const rng = new Rng(9);
  const qkv = rng.normals(c.B * c.T * 3 * c.H * c.dh);
  const g = rng.normals(c.B * c.T * c.H * c.dh);
  const loss = (x: Float64Array) => {
    const { out } = attentionRef64(x, c.B, c.T, c.H, c.dh);
    let s = 0;
    for (let i = 0; i < out.length; i++) s += out[i] * g[i];
    return s;
  };
  const fd = finiteDifference(loss, qkv, 1e-4);
  // Central differences at h = 1e-4 in float64: truncation O(h²) ≈ 1e-8, far below f32 rounding.
  assertClose(
    attentionBackwardRef(g, qkv, c.B, c.T, c.H, c.dh),
    fd,
    { rtol: 1e-5, atol: 1e-6 },
    "ref vs fd",
  );
  const got = await runBoth(gpu, c, qkv, g);
  // The GPU works in f32 (ε ≈ 6e-8) on O(1) values over 3 keys.
  assertClose(got.dqkv, fd, { rtol: 1e-4, atol: 1e-5 }, "gpu vs fd");
});

gpuTest(
  "attention: matches PyTorch (DINOv2 attention module), forward and backward",
  async (gpu) => {
    const doc = JSON.parse(
      await Deno.readTextFile(new URL("./fixtures/attention.json", import.meta.url)),
    ) as {
      cases: {
        name: string;
        B: number;
        T: number;
        heads: number;
        headDim: number;
        scale: number;
        qkv: number[];
        out: number[];
        lse: number[];
        dout: number[];
        dqkv: number[];
      }[];
    };
    assert(doc.cases.length >= 3, "fixture has its cases");
    for (const f of doc.cases) {
      const c: Case = { B: f.B, T: f.T, H: f.heads, dh: f.headDim, scale: f.scale };
      const got = await runBoth(gpu, c, Float32Array.from(f.qkv), Float32Array.from(f.dout));
      // Both sides are f32 with different summation orders; |out| ≲ 3, |dqkv| ≲ 50 here.
      assertClose(got.out, f.out, { rtol: 1e-4, atol: 1e-5 }, `${f.name} out`);
      assertClose(got.lse, f.lse, { rtol: 1e-5, atol: 1e-5 }, `${f.name} lse`);
      assertClose(got.dqkv, f.dqkv, { rtol: 2e-4, atol: 1e-4 }, `${f.name} dqkv`);
    }
  },
);

gpuTest("attention: the batch split over views gives identical results", async (gpu) => {
  // 7 tokens × 48 floats = 1344 B per batch element: chunk starts are not 256-aligned, so
  // views start below their data and the kernels get base offsets.
  for (const c of [{ B: 5, T: 7, H: 2, dh: 8 }, { B: 3, T: 65, H: 2, dh: 64 }] as Case[]) {
    const { qkv, dout } = randomCase(c, 11);
    const whole = await runBoth(gpu, c, qkv, dout);
    const perBatch = c.T * 3 * c.H * c.dh * 4;
    const limit = 2 * perBatch + 256; // two batch elements per chunk
    const opts = { heads: c.H, maxBindingBytes: limit };
    const t = gpu.tensor(qkv, [c.B, c.T, 3 * c.H * c.dh]);
    const go = gpu.tensor(dout, [c.B, c.T, c.H * c.dh]);
    const before = gpu.stats().dispatches;
    const r = attention(gpu, t, opts);
    const g = attentionBackward(gpu, go, t, r.out, r.lse, opts);
    const chunks = Math.ceil(c.B / 2);
    assert(gpu.stats().dispatches - before >= 3 * chunks, "one dispatch per chunk and kernel");
    const [out, lse, dqkv] = await gpu.readMany([r.out, r.lse, g]);
    // Same kernels on the same data: bit-identical.
    assertEquals([...out], [...whole.out], "split out");
    assertEquals([...lse], [...whole.lse], "split lse");
    assertEquals([...dqkv], [...whole.dqkv], "split dqkv");
    assertClose(out, attentionRef(qkv, c.B, c.T, c.H, c.dh).out, OUT_TOL, "split vs ref");
    gpu.release(t, go, r.out, r.lse, g);
  }
  // One batch element over the limit cannot be split: a clear error, never truncation.
  const t = gpu.tensor(new Float32Array(2 * 7 * 48), [2, 7, 48]);
  assertThrows(
    () => attention(gpu, t, { heads: 2, maxBindingBytes: 1000 }),
    GpuLimitError,
    "one batch element needs",
  );
  gpu.release(t);
});

gpuTest("attention: a qkv view at an unaligned offset takes the scalar path", async (gpu) => {
  const c: Case = { B: 2, T: 9, H: 2, dh: 16 };
  const { qkv, dout } = randomCase(c, 13);
  const padded = new Float32Array(qkv.length + 1);
  padded.set(qkv, 1);
  const big = gpu.tensor(padded);
  const view = big.view(1, [c.B, c.T, 3 * c.H * c.dh]); // byte offset 4
  const go = gpu.tensor(dout, [c.B, c.T, c.H * c.dh]);
  const r = attention(gpu, view, { heads: c.H, variant: SMALL });
  const g = attentionBackward(gpu, go, view, r.out, r.lse, { heads: c.H, variant: SMALL });
  const [out, dqkv] = await gpu.readMany([r.out, g]);
  assertClose(out, attentionRef(qkv, c.B, c.T, c.H, c.dh).out, OUT_TOL, "view out");
  assertClose(dqkv, attentionBackwardRef(dout, qkv, c.B, c.T, c.H, c.dh), GRAD_TOL, "view dqkv");
  gpu.release(big, go, r.out, r.lse, g);
});

gpuTest("attention: backward is deterministic", async (gpu) => {
  const c: Case = { B: 2, T: 65, H: 2, dh: 64 };
  const { qkv, dout } = randomCase(c, 17);
  const a = await runBoth(gpu, c, qkv, dout);
  const b = await runBoth(gpu, c, qkv, dout);
  assertEquals([...a.dqkv], [...b.dqkv]);
  assertEquals([...a.out], [...b.out]);
});

gpuTest("attention: memory is linear in tokens (no T×T buffer)", async (gpu) => {
  const c: Case = { B: 2, T: 257, H: 2, dh: 64 };
  const { qkv, dout } = randomCase(c, 19);
  const t = gpu.tensor(qkv, [c.B, c.T, 3 * c.H * c.dh]);
  const go = gpu.tensor(dout, [c.B, c.T, c.H * c.dh]);
  const acquired = () => gpu.pool.stats().created + gpu.pool.stats().reused;
  let n0 = acquired();
  let live0 = gpu.pool.stats().liveBytes;
  const r = attention(gpu, t, { heads: c.H });
  // Exactly two allocations, the outputs: out [B, T, H·Dh] and lse [B, H, T].
  assertEquals(acquired() - n0, 2);
  assertEquals(
    gpu.pool.stats().liveBytes - live0,
    sizeClass(c.B * c.T * c.H * c.dh * 4) + sizeClass(c.B * c.H * c.T * 4),
  );
  n0 = acquired();
  live0 = gpu.pool.stats().liveBytes;
  const g = attentionBackward(gpu, go, t, r.out, r.lse, { heads: c.H });
  // dqkv plus the released D [B, H, T]; a score matrix would be B·H·T² floats (1 MiB here).
  assertEquals(acquired() - n0, 2);
  assertEquals(gpu.pool.stats().liveBytes - live0, sizeClass(c.B * c.T * 3 * c.H * c.dh * 4));
  await gpu.sync();
  gpu.release(t, go, r.out, r.lse, g);
});

gpuTest("attention: empty batch or no tokens dispatch nothing", (gpu) => {
  for (const [B, T] of [[0, 5], [2, 0]]) {
    const t = gpu.tensor(new Float32Array(0), [B, T, 48]);
    const before = gpu.stats().dispatches;
    const r = attention(gpu, t, { heads: 2 });
    const g = attentionBackward(gpu, r.out, t, r.out, r.lse, { heads: 2 });
    assertEquals(gpu.stats().dispatches, before);
    assertEquals(r.out.shape, [B, T, 16]);
    assertEquals(r.lse.shape, [B, 2, T]);
    assertEquals(g.shape, [B, T, 48]);
    gpu.release(t, r.out, r.lse, g);
  }
});

gpuTest("attention: bad shapes and options are named in the error", (gpu) => {
  const t = gpu.tensor(new Float32Array(2 * 3 * 48), [2, 3, 48]);
  assertThrows(() => attention(gpu, t, { heads: 5 }), RangeError, "3·heads = 15");
  assertThrows(() => attention(gpu, t, { heads: 0 }), RangeError, "opts.heads");
  assertThrows(
    () => attention(gpu, t.reshape([6, 48]), { heads: 2 }),
    RangeError,
    "[B, T, 3·H·Dh]",
  );
  assertThrows(() => attention(gpu, t, { heads: 2, scale: NaN }), RangeError, "opts.scale");
  assertThrows(
    () =>
      attention(gpu, t, {
        heads: 2,
        variant: { kind: "tiled", wg: 8, rows: 1, block: 4, tile: 6 },
      }),
    RangeError,
    "multiple of 'block'",
  );
  const r = attention(gpu, t, { heads: 2 });
  const badLse = gpu.empty([2, 3, 2]);
  assertThrows(
    () => attentionBackward(gpu, r.out, t, r.out, badLse, { heads: 2 }),
    RangeError,
    "lse must be f32 [2,2,3]",
  );
  assertThrows(
    () => attentionBackward(gpu, r.out.reshape([3, 2, 16]), t, r.out, r.lse, { heads: 2 }),
    RangeError,
    "dout must be f32 [2,3,16]",
  );
  gpu.release(t, r.out, r.lse, badLse);
});

gpuTest("attention: tuning measures candidates and later calls use the winner", async (gpu) => {
  const candidates: AttentionVariant[] = [SMALL, { kind: "rows", wg: 8, rows: 2, block: 1 }];
  const tuneCache = new AutotuneCache({ path: null }); // memory only: tests leave ~/.cache alone
  const before = attentionPlan(gpu, 12, 17, { tuneCache });
  assertEquals(before, defaultAttentionPlan(gpu));
  const { plan, tunings } = await tuneAttention(gpu, { tokens: 17, heads: 2, headDim: 12 }, {
    candidates,
    iters: 1,
    tuneCache,
  });
  assertEquals(tunings.map((t) => t.op), ["fwd", "dq", "dkv"]);
  for (const t of tunings) {
    assert(candidates.some((c) => attentionVariantId(c) === t.record.choice), "a candidate won");
    assertEquals(Object.keys(t.record.timings).length, candidates.length);
  }
  // Looked up for this shape class and, as the fallback, for other token counts at dh 12.
  assertEquals(attentionPlan(gpu, 12, 17, { tuneCache }), plan);
  assertEquals(attentionPlan(gpu, 12, 1000, { tuneCache }), plan);
  const c: Case = { B: 1, T: 17, H: 2, dh: 12 };
  const { qkv, dout } = randomCase(c, 23);
  const t = gpu.tensor(qkv, [1, 17, 72]);
  const go = gpu.tensor(dout, [1, 17, 24]);
  const r = attention(gpu, t, { heads: 2, tuneCache });
  const g = attentionBackward(gpu, go, t, r.out, r.lse, { heads: 2, tuneCache });
  const [out, dqkv] = await gpu.readMany([r.out, g]);
  assertClose(out, attentionRef(qkv, 1, 17, 2, 12).out, OUT_TOL, "tuned out");
  assertClose(dqkv, attentionBackwardRef(dout, qkv, 1, 17, 2, 12), GRAD_TOL, "tuned dqkv");
  gpu.release(t, go, r.out, r.lse, g);
});

gpuTest("attention: variant ids round-trip; candidates fit the adapter", (gpu) => {
  for (const op of ["fwd", "dq", "dkv"] as const) {
    const cands = attentionCandidates(gpu, op, 64);
    assert(cands.length >= 2, `${op} has candidates`);
    for (const v of cands) {
      const back = parseAttentionVariant(attentionVariantId(v));
      assert(back !== null, attentionVariantId(v));
      assertEquals(attentionVariantId(back), attentionVariantId(v));
    }
  }
  const tex: AttentionVariant = {
    kind: "rows",
    wg: 8,
    rows: 12,
    block: 2,
    dot: "scalar",
    tex: true,
  };
  assertEquals(attentionVariantId(tex), "rows.wg8.r12.b2.scalar.tex");
  assertEquals(parseAttentionVariant("rows.wg8.r12.b2.scalar.tex"), tex);
  assertEquals(parseAttentionVariant("rows.wg8.r4.b1"), null);
  assertEquals(parseAttentionVariant("rows.wg8.r4.b1.t8.vec"), null);
});
