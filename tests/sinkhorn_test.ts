/** Sinkhorn-Knopp teacher targets and softmax centering (DINOv2's DINO/iBOT losses). */
import {
  centeredSoftmax,
  centeredSoftmaxRef,
  sinkhornKnopp,
  sinkhornKnoppRef,
  updateCenter,
  updateCenterRef,
} from "../kernels/sinkhorn.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, Rng } from "./helpers.ts";
import { f32, readFixture } from "./fixtures.ts";

const fixture = await readFixture("training_kernels.json");

/**
 * Sinkhorn tolerance: E = exp((x − max)/T) carries f32 rounding of (x − max)/T, up to
 * 6e-8·|x − max|/T ≈ 1e-5 relative at |x − max| ≈ 6, T = 0.04; three rounds keep it there.
 * Targets below 1e-9 are noise either way (atol).
 */
const SK_TOL = { rtol: 3e-5, atol: 1e-9 };

gpuTest("sinkhorn: matches DINOv2's sinkhorn_knopp_teacher in torch", async (gpu) => {
  for (const c of fixture.sinkhorn) {
    const x = gpu.tensor(f32(c.logits), [c.B, c.K]);
    const t = gpu.tensor(new Float32Array([c.temp]));
    const q = sinkhornKnopp(gpu, x, t, { iterations: c.iterations });
    const got = await gpu.readF32(q);
    assertClose(got, f32(c.out), SK_TOL, `[${c.B}, ${c.K}] T=${c.temp}`);
    assertClose(
      got,
      sinkhornKnoppRef(f32(c.logits), c.B, c.K, c.temp, c.iterations),
      SK_TOL,
      "reference",
    );
    gpu.release(x, t, q);
  }
});

gpuTest(
  "sinkhorn: random shapes vs reference (two slices, three slabs), rows sum to 1",
  async (gpu) => {
    const rng = new Rng(21);
    for (const [B, K, T] of [[7, 5000, 0.04], [130, 33, 0.07], [1, 3, 0.1]]) {
      const v = rng.normals(B * K);
      const x = gpu.tensor(v, [B, K]);
      const t = gpu.tensor(new Float32Array([T]));
      const q = sinkhornKnopp(gpu, x, t);
      const got = await gpu.readF32(q);
      assertClose(got, sinkhornKnoppRef(v, B, K, T), SK_TOL, `[${B}, ${K}]`);
      for (let b = 0; b < B; b++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += got[b * K + k];
        // The last step normalises rows: they sum to 1 up to f32 rounding over K terms.
        assert(Math.abs(s - 1) < 1e-4, `row ${b} of [${B}, ${K}] sums to ${s}`);
      }
      gpu.release(x, t, q);
    }
  },
);

gpuTest(
  "sinkhorn: logits spread over 100 at T = 0.04 stay finite (per-prototype max), deterministic",
  async (gpu) => {
    const rng = new Rng(22);
    const [B, K] = [5, 300];
    // |x|/T up to 1250: exp(x / T) overflows even in float64, exp((x − max)/T) does not.
    const v = rng.floats(B * K, -50, 50);
    const x = gpu.tensor(v, [B, K]);
    const t = gpu.tensor(new Float32Array([0.04]));
    const [q1, q2] = [sinkhornKnopp(gpu, x, t), sinkhornKnopp(gpu, x, t)];
    const [a, b] = await gpu.readMany([q1, q2]) as Float32Array[];
    assert(a.every(Number.isFinite), "finite targets");
    assertEquals([...a], [...b], "bit-identical on a rerun");
    // Near-one-hot targets: f32 exp of (x − max)/T ≈ −1000 underflows like the float64 one.
    assertClose(a, sinkhornKnoppRef(v, B, K, 0.04), { rtol: 1e-4, atol: 1e-6 });
    gpu.release(x, t, q1, q2);
  },
);

gpuTest(
  "sinkhorn: count leaves padded rows out, from a number, a u32 or an f32 tensor",
  async (gpu) => {
    const rng = new Rng(23);
    const [B, K, n] = [9, 70, 6];
    const v = rng.normals(B * K);
    // Garbage in the padded rows: it would dominate the max and the sums if read.
    v.fill(1e4, n * K);
    const want = sinkhornKnoppRef(v, B, K, 0.05, 3, n);
    const x = gpu.tensor(v, [B, K]);
    const t = gpu.tensor(new Float32Array([0.05]));
    const cu = gpu.tensor(new Uint32Array([n]));
    const cf = gpu.tensor(new Float32Array([n]));
    for (const count of [n, cu, cf]) {
      const q = sinkhornKnopp(gpu, x, t, { count });
      const got = await gpu.readF32(q);
      assertClose(got, want, SK_TOL, `count ${typeof count === "number" ? count : count.dtype}`);
      assert(got.subarray(n * K).every((y) => y === 0), "padded rows get zero targets");
      gpu.release(q);
    }
    // A count above the rows (a multi-process B) keeps every row and divides by it.
    const big = gpu.tensor(new Uint32Array([12]));
    const v2 = rng.normals(B * K);
    const x2 = gpu.tensor(v2, [B, K]);
    const q = sinkhornKnopp(gpu, x2, t, { count: big });
    const want2 = sinkhornKnoppRef(v2, B, K, 0.05, 3, 12);
    assertClose(await gpu.readF32(q), want2, SK_TOL, "count 12 > 9 rows");
    gpu.release(x, t, cu, cf, big, x2, q);
  },
);

gpuTest("sinkhorn: a captured call replays with new temperature and count", async (gpu) => {
  const rng = new Rng(24);
  const [B, K] = [8, 40];
  const v = rng.normals(B * K);
  const x = gpu.tensor(v, [B, K]);
  const t = gpu.tensor(new Float32Array([0.04]));
  const c = gpu.tensor(new Uint32Array([B]));
  const { recording, result: q } = await gpu.capture(() => sinkhornKnopp(gpu, x, t, { count: c }));
  assertClose(await gpu.readF32(q), sinkhornKnoppRef(v, B, K, 0.04), SK_TOL, "recorded run");
  gpu.write(t, new Float32Array([0.07]));
  gpu.write(c, new Uint32Array([5]));
  gpu.replay(recording);
  assertClose(await gpu.readF32(q), sinkhornKnoppRef(v, B, K, 0.07, 3, 5), SK_TOL, "replayed");
  gpu.disposeRecording(recording);
  gpu.release(x, t, c, q);
});

gpuTest("sinkhorn/centering: row blocks when a binding would pass the limit", async (gpu) => {
  const rng = new Rng(25);
  const [B, K] = [100, 64];
  const v = rng.normals(B * K);
  const x = gpu.tensor(v, [B, K]);
  const t = gpu.tensor(new Float32Array([0.05]));
  const cnt = gpu.tensor(new Uint32Array([75]));
  // 256 B rows, 40 rows per binding: blocks of 40, 40, 20 rows.
  const opts = { maxBindingBytes: 40 * 256 };
  const q = sinkhornKnopp(gpu, x, t, { ...opts, count: cnt });
  assertClose(await gpu.readF32(q), sinkhornKnoppRef(v, B, K, 0.05, 3, 75), SK_TOL, "sinkhorn");
  const center = rng.normals(K, 0.3);
  const ct = gpu.tensor(center);
  const y = centeredSoftmax(gpu, x, ct, t, opts);
  updateCenter(gpu, ct, x, 0.9, opts);
  const [ry, rc] = await gpu.readMany([y, ct]) as Float32Array[];
  assertClose(ry, centeredSoftmaxRef(v, center, B, K, 0.05), { rtol: 1e-5, atol: 1e-9 });
  assertClose(rc, updateCenterRef(center, v, B, K, 0.9), { rtol: 1e-5, atol: 1e-6 });
  gpu.release(x, t, cnt, q, ct, y);
});

gpuTest("centering: softmax((t − c)/T) and the center EMA match DINOv2 in torch", async (gpu) => {
  for (const c of fixture.centering) {
    const x = gpu.tensor(f32(c.logits), [c.B, c.K]);
    const center = gpu.tensor(f32(c.center));
    const t = gpu.tensor(new Float32Array([c.temp]));
    const y = centeredSoftmax(gpu, x, center, t);
    updateCenter(gpu, center, x, c.momentum);
    const [ry, rc] = await gpu.readMany([y, center]) as Float32Array[];
    // exp of z ≈ ±30 at T = 0.07: f32 rounding of z (2e-6) dominates, so 1e-5 relative.
    assertClose(ry, f32(c.out), { rtol: 1e-5, atol: 1e-9 }, "targets");
    // One mean of 4 rows and one EMA: a few f32 roundings.
    assertClose(rc, f32(c.newCenter), { rtol: 1e-6, atol: 1e-7 }, "center");
    gpu.release(x, center, t, y);
  }
});

gpuTest("centering: K over one slice (5000) vs reference, rows sum to 1", async (gpu) => {
  const rng = new Rng(26);
  const [B, K] = [3, 5000];
  const v = rng.normals(B * K);
  const center = rng.normals(K, 0.3);
  const x = gpu.tensor(v, [B, K]);
  const ct = gpu.tensor(center);
  const t = gpu.tensor(new Float32Array([0.04]));
  const y = centeredSoftmax(gpu, x, ct, t);
  const got = await gpu.readF32(y);
  assertClose(got, centeredSoftmaxRef(v, center, B, K, 0.04), { rtol: 2e-5, atol: 1e-9 });
  for (let b = 0; b < B; b++) {
    const s = got.subarray(b * K, (b + 1) * K).reduce((a, c) => a + c, 0);
    assert(Math.abs(s - 1) < 1e-4, `row ${b} sums to ${s}`);
  }
  gpu.release(x, ct, t, y);
});

gpuTest("sinkhorn/centering: bad arguments are named", (gpu) => {
  const x = gpu.zeros([4, 8]);
  const t2 = gpu.zeros([2]);
  const t = gpu.zeros([1]);
  assertThrows(() => sinkhornKnopp(gpu, x, t2), RangeError, "temp must be an f32 tensor of one");
  assertThrows(() => sinkhornKnopp(gpu, t, t), RangeError, "logits must be f32 [B, K]");
  assertThrows(() => sinkhornKnopp(gpu, x, t, { count: 5 }), RangeError, "count 5");
  assertThrows(() => sinkhornKnopp(gpu, x, t, { iterations: 0 }), RangeError, "iterations");
  assertThrows(() => centeredSoftmax(gpu, x, t2, t), RangeError, "center must be f32 [8]");
  assertThrows(() => updateCenter(gpu, t2, x, 0.9), RangeError, "center must be f32 [8]");
  assertThrows(() => updateCenter(gpu, gpu.zeros([8]), x, 1.5), RangeError, "momentum");
  gpu.release(x, t2, t);
});
