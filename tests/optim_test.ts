/** AdamW, per-module gradient clipping and the teacher EMA over the parameter arena. */
import {
  type AdamwGroupHyper,
  adamwHyper,
  adamwRef,
  adamwStep,
  HYPER_STRIDE,
  planArena,
  type Segment,
  segmentTable,
  writeAdamwHyper,
} from "../kernels/adamw.ts";
import { clipFactors, clipFactorsRef, gradSqNorms, gradSqNormsRef } from "../kernels/clip.ts";
import { emaRef, emaUpdate, momentumValues, writeMomentum } from "../kernels/ema.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, Rng } from "./helpers.ts";
import { f32, readFixture } from "./fixtures.ts";

const fixture = (await readFixture("training_kernels.json")).adamw;

/** Values padding is filled with: any kernel that touched padding would change or spread them. */
const PAD = 1234.5;

/** One arena chunk on the GPU: parameters, grads, moments and the segment table. */
interface Chunk {
  length: number;
  segments: Segment[];
  param: GpuTensor;
  grad: GpuTensor;
  m: GpuTensor;
  v: GpuTensor;
  table: GpuTensor;
}

function padded(length: number, segments: readonly Segment[], fill: number): Float32Array {
  const a = new Float32Array(length).fill(fill);
  for (const s of segments) a.fill(0, s.offset, s.offset + s.length);
  return a;
}

function makeChunk(gpu: Gpu, length: number, segments: Segment[]): Chunk {
  return {
    length,
    segments,
    param: gpu.tensor(padded(length, segments, PAD)),
    grad: gpu.tensor(padded(length, segments, 1e3)),
    m: gpu.tensor(padded(length, segments, PAD)),
    v: gpu.tensor(padded(length, segments, PAD)),
    table: gpu.tensor(segmentTable(segments, length)),
  };
}

function releaseChunk(gpu: Gpu, c: Chunk) {
  gpu.release(c.param, c.grad, c.m, c.v, c.table);
}

Deno.test("segmentTable: one word per block, padding zero, bad segments named", () => {
  const t = segmentTable([
    { offset: 0, length: 70, group: 2, module: 1 },
    { offset: 128, length: 5, group: 255, module: 0 },
  ], 196);
  assertEquals([...t], [64 | (2 << 8) | (1 << 16), 6 | (2 << 8) | (1 << 16), 5 | (255 << 8), 0]);
  assertThrows(
    () => segmentTable([{ offset: 32, length: 4, group: 0, module: 0 }], 64),
    RangeError,
    "segment 0 (offset 32, length 4): offset must be a multiple of 64",
  );
  assertThrows(
    () =>
      segmentTable([
        { offset: 0, length: 100, group: 0, module: 0 },
        { offset: 64, length: 4, group: 0, module: 0 },
      ], 256),
    RangeError,
    "overlaps",
  );
  assertThrows(
    () => segmentTable([{ offset: 0, length: 4, group: 256, module: 0 }], 64),
    RangeError,
    "group 256",
  );
  assertThrows(
    () => segmentTable([{ offset: 64, length: 4, group: 0, module: 0 }], 64),
    RangeError,
    "past the chunk end",
  );
  assertThrows(() => segmentTable([], 6), RangeError, "multiple of 4");
});

Deno.test("planArena: 64-aligned offsets, new chunk when full, too-large parameter named", () => {
  const plan = planArena([
    { length: 37, group: 0, module: 0 },
    { length: 64, group: 1, module: 0 },
    { length: 130, group: 0, module: 1 },
    { length: 1, group: 0, module: 2 },
  ], 256);
  assertEquals(plan.placements, [
    { chunk: 0, offset: 0 },
    { chunk: 0, offset: 64 },
    { chunk: 1, offset: 0 },
    { chunk: 1, offset: 192 },
  ]);
  assertEquals(plan.chunks.map((c) => c.length), [128, 256]);
  assertThrows(
    () => planArena([{ length: 300, group: 0, module: 0, name: "dino_head.last_layer" }], 256),
    RangeError,
    "dino_head.last_layer",
  );
});

gpuTest("adamw + clip: matches torch.optim.AdamW and clip_grad_norm_ over 5 steps", async (gpu) => {
  const specs = fixture.params as { size: number; group: number; module: number }[];
  // Three chunks of at most 256 elements: the arena spans several buffers.
  const plan = planArena(specs.map((p) => ({ ...p, length: p.size })), 256);
  assert(plan.chunks.length >= 2, "the test spans at least two chunks");
  const chunks = plan.chunks.map((c) => makeChunk(gpu, c.length, c.segments));
  const init = (fixture.init as string[]).map(f32);
  for (const [i, pl] of plan.placements.entries()) {
    gpu.write(chunks[pl.chunk].param, init[i], pl.offset * 4);
  }
  const groups = fixture.groups as { lr_mult: number; wd_mult: number }[];
  const steps = groups.map(() => 0);
  const hyper = gpu.zeros([groups.length * HYPER_STRIDE]);
  const modules = 3;
  for (let s = 0; s < fixture.steps; s++) {
    const frozen = (g: number) => g === fixture.frozenGroup && s < fixture.frozenSteps;
    const hyp: AdamwGroupHyper[] = groups.map((g, gi) => {
      if (!frozen(gi)) steps[gi]++;
      return {
        lr: fixture.lr[s] * g.lr_mult,
        weightDecay: fixture.wd[s] * g.wd_mult,
        beta1: fixture.betas[0],
        beta2: fixture.betas[1],
        eps: fixture.eps,
        step: steps[gi],
        active: !frozen(gi),
      };
    });
    writeAdamwHyper(gpu, hyper, hyp);
    for (const [i, pl] of plan.placements.entries()) {
      gpu.write(chunks[pl.chunk].grad, f32(fixture.grads[s][i]), pl.offset * 4);
    }
    let sq: GpuTensor | undefined;
    for (const c of chunks) sq = gradSqNorms(gpu, c.grad, c.table, modules, sq, { hyper });
    const clip = clipFactors(gpu, sq!, fixture.maxNorm);
    for (const c of chunks) adamwStep(gpu, { ...c, hyper, clip });
    // clip_grad_norm_ returns the norm before clipping; torch reduces in another order, so 1e-5.
    const norms = Array.from(await gpu.readF32(sq!), Math.sqrt);
    assertClose(norms, fixture.norms[s], { rtol: 1e-5, atol: 0 }, `norms at step ${s}`);
    gpu.release(sq!, clip);
  }
  assertEquals(steps, [5, 5, 5, 3], "per-group step counts (the frozen group lags)");
  for (const [i, pl] of plan.placements.entries()) {
    const c = chunks[pl.chunk];
    const n = specs[i].size;
    const [p, m, v] = await gpu.readMany([c.param, c.m, c.v]) as Float32Array[];
    const at = (a: Float32Array) => a.subarray(pl.offset, pl.offset + n);
    // Updates are ~lr = 1e-3 per step; f32 differences in m/denom and in the clip factor (norms
    // reduced in another order) leave ~1e-7 absolute on the parameters.
    assertClose(at(p), f32(fixture.final[i]), { rtol: 2e-6, atol: 2e-7 }, `param ${i}`);
    assertClose(at(m), f32(fixture.m[i]), { rtol: 1e-5, atol: 1e-8 }, `exp_avg ${i}`);
    assertClose(at(v), f32(fixture.v[i]), { rtol: 1e-5, atol: 1e-10 }, `exp_avg_sq ${i}`);
  }
  // Padding was never read into a norm nor written.
  for (const c of chunks) {
    const [p, m, v] = await gpu.readMany([c.param, c.m, c.v]) as Float32Array[];
    const pad = padded(c.length, c.segments, PAD);
    for (let i = 0; i < c.length; i++) {
      if (pad[i] !== 0) assert(p[i] === PAD && m[i] === PAD && v[i] === PAD, `padding ${i}`);
    }
    releaseChunk(gpu, c);
  }
  gpu.release(hyper);
});

gpuTest("adamw: random arena vs adamwRef, partial vec4s, frozen group bit-for-bit", async (gpu) => {
  const rng = new Rng(7);
  const lengths = [1, 3, 64, 65, 130, 7, 200];
  const plan = planArena(lengths.map((n, i) => ({ length: n, group: i % 3, module: i % 2 })), 1024);
  const [{ length, segments }] = plan.chunks;
  const c = makeChunk(gpu, length, segments);
  const host = {
    param: padded(length, segments, PAD),
    grad: padded(length, segments, 1e3),
    m: padded(length, segments, PAD),
    v: padded(length, segments, PAD),
  };
  for (const s of segments) {
    host.param.set(rng.normals(s.length), s.offset);
    host.m.set(rng.normals(s.length, 0.01), s.offset);
    host.v.set(rng.floats(s.length, 0, 1e-3), s.offset);
  }
  gpu.write(c.param, host.param);
  gpu.write(c.m, host.m);
  gpu.write(c.v, host.v);
  const groups: AdamwGroupHyper[] = [
    { lr: 1e-3, weightDecay: 0.04, step: 3 },
    { lr: 5e-4, weightDecay: 0, step: 1, beta1: 0.8, beta2: 0.99, eps: 1e-6 },
    { lr: 1e-3, weightDecay: 0.04, step: 1, active: false },
  ];
  const hyper = gpu.tensor(adamwHyper(groups));
  const clipHost = new Float32Array([0.25, 1]);
  const clip = gpu.tensor(clipHost);
  for (let step = 0; step < 2; step++) {
    for (const s of segments) host.grad.set(rng.normals(s.length, 10), s.offset);
    gpu.write(c.grad, host.grad);
    adamwStep(gpu, { ...c, hyper, clip });
    adamwRef({ ...host, segments, groups, clip: clipHost });
  }
  const [p, m, v] = await gpu.readMany([c.param, c.m, c.v]) as Float32Array[];
  // Same f32 operation order as the reference; WGSL's division and sqrt may be off by ~2 ulp.
  assertClose(p, host.param, { rtol: 1e-6, atol: 1e-8 }, "param");
  assertClose(m, host.m, { rtol: 1e-6, atol: 0 }, "m");
  assertClose(v, host.v, { rtol: 1e-6, atol: 0 }, "v");
  // Frozen group (2): exactly the initial values, because the kernel never writes them.
  for (const s of segments.filter((s) => s.group === 2)) {
    for (let i = s.offset; i < s.offset + s.length; i++) {
      assert(p[i] === host.param[i], `frozen param ${i} changed`);
    }
  }
  releaseChunk(gpu, c);
  gpu.release(hyper, clip);
});

gpuTest("adamw: clear errors for mismatched chunks and bad hyperparameters", (gpu) => {
  const a = gpu.zeros([64]);
  const b = gpu.zeros([128]);
  const t = gpu.tensor(new Uint32Array(1));
  const h = gpu.zeros([HYPER_STRIDE]);
  assertThrows(
    () => adamwStep(gpu, { param: a, grad: b, m: a, v: a, table: t, hyper: h, clip: h }),
    RangeError,
    "grad has 128 elements but param has 64",
  );
  assertThrows(
    () => adamwStep(gpu, { param: b, grad: b, m: b, v: b, table: t, hyper: h, clip: h }),
    RangeError,
    "expected u32 [2]",
  );
  assertThrows(() => adamwHyper([{ lr: 1e-3, weightDecay: 0, step: 0 }]), RangeError, "step 0");
  assertThrows(
    () =>
      writeAdamwHyper(gpu, h, [{ lr: 1, weightDecay: 0, step: 1 }, {
        lr: 1,
        weightDecay: 0,
        step: 1,
      }]),
    RangeError,
    "2 groups need an f32 tensor of 32 elements",
  );
  gpu.release(a, b, t, h);
});

gpuTest("grad norms: two chunks accumulate, frozen groups skipped, deterministic", async (gpu) => {
  const rng = new Rng(3);
  // 40,000 elements: several workgroups of the first stage.
  const lengths = [20000, 5, 3333, 64, 16000];
  const plan = planArena(
    lengths.map((n, i) => ({ length: n, group: i % 2, module: i % 3 })),
    24000,
  );
  assertEquals(plan.chunks.length, 2);
  const hosts: Float32Array[] = [];
  const chunks = plan.chunks.map((c) => {
    const g = padded(c.length, c.segments, 1e3);
    for (const s of c.segments) g.set(rng.normals(s.length, 1 + s.module), s.offset);
    hosts.push(g);
    return { grad: gpu.tensor(g), table: gpu.tensor(segmentTable(c.segments, c.length)) };
  });
  const hyper = gpu.tensor(adamwHyper([
    { lr: 1, weightDecay: 0, step: 1 },
    { lr: 1, weightDecay: 0, step: 1, active: false },
  ]));
  const want = new Float64Array(3);
  const wantActive = new Float64Array(3);
  for (const [k, c] of plan.chunks.entries()) {
    const all = gradSqNormsRef(hosts[k], c.segments, 3);
    const act = gradSqNormsRef(hosts[k], c.segments, 3, [true, false]);
    for (let m = 0; m < 3; m++) {
      want[m] += all[m];
      wantActive[m] += act[m];
    }
  }
  const run = (h?: GpuTensor) => {
    let out: GpuTensor | undefined;
    for (const c of chunks) out = gradSqNorms(gpu, c.grad, c.table, 3, out, { hyper: h });
    return out!;
  };
  const [a, b, c] = [run(), run(), run(hyper)];
  const [ra, rb, rc] = await gpu.readMany([a, b, c]) as Float32Array[];
  // f32 sums of ~40k positive terms in a tree: relative error well under 1e-5.
  assertClose(ra, want, { rtol: 1e-5, atol: 0 }, "Σg² per module");
  assertClose(rc, wantActive, { rtol: 1e-5, atol: 0 }, "Σg² over active groups");
  assertEquals([...ra], [...rb], "bit-identical on a rerun");
  // A module count below the table's modules drops the rest; one module = module 0 only.
  const one = gradSqNorms(gpu, chunks[0].grad, chunks[0].table, 1);
  const r1 = await gpu.readF32(one);
  assertClose(r1, [gradSqNormsRef(hosts[0], plan.chunks[0].segments, 1)[0]], { rtol: 1e-5 });
  const f = clipFactors(gpu, a, 3);
  assertClose(await gpu.readF32(f), clipFactorsRef(ra, 3), { rtol: 1e-6, atol: 0 }, "factors");
  gpu.release(a, b, c, one, f, hyper);
  for (const ch of chunks) gpu.release(ch.grad, ch.table);
});

gpuTest("clip factors: 1 below the threshold, max/(norm + 1e-6) above, errors", async (gpu) => {
  const sq = gpu.tensor(new Float32Array([0, 1, 8.99, 9, 1e6]));
  const f = clipFactors(gpu, sq, 3);
  const got = await gpu.readF32(f);
  // Exactly 1 when not clipping (the update then uses the raw gradient).
  assertEquals([got[0], got[1], got[2]], [1, 1, 1]);
  assertClose(got, clipFactorsRef([0, 1, 8.99, 9, 1e6], 3), { rtol: 1e-6, atol: 0 });
  // A norm of exactly maxNorm still scales by 3 / (3 + 1e-6), as PyTorch does.
  assert(got[3] < 1 && got[3] > 0.9999996 && got[4] < 0.0031);
  assertThrows(() => clipFactors(gpu, sq, 0), RangeError, "tensor of ones");
  assertThrows(() => gradSqNorms(gpu, sq, sq, 9), RangeError, "modules must be 1..8");
  gpu.release(sq, f);
});

gpuTest("ema: matches the formula for [m] and [m, 1 − m], two chunks, replayable", async (gpu) => {
  const rng = new Rng(11);
  const sizes = [1000, 64];
  const teachers = sizes.map((n) => rng.normals(n));
  const students = sizes.map((n) => rng.normals(n));
  const t = teachers.map((a) => gpu.tensor(a));
  const s = students.map((a) => gpu.tensor(a));
  const mom2 = gpu.tensor(momentumValues(0.994));
  const mom1 = gpu.tensor(new Float32Array([0.5]));
  // Chunk 0 with the two-element momentum (PyTorch's rounding), chunk 1 with one element.
  emaUpdate(gpu, t[0], s[0], mom2);
  emaRef(teachers[0], students[0], 0.994);
  emaUpdate(gpu, t[1], s[1], mom1);
  emaRef(teachers[1], students[1], 0.5); // 1 − 0.5 is exact in f32 too
  // Replay a recorded update after writing the next step's momentum.
  const { recording } = await gpu.capture(() => emaUpdate(gpu, t[0], s[0], mom2));
  emaRef(teachers[0], students[0], 0.994);
  writeMomentum(gpu, mom2, 0.9999);
  gpu.replay(recording);
  emaRef(teachers[0], students[0], 0.9999);
  gpu.disposeRecording(recording);
  const got = await gpu.readMany(t) as Float32Array[];
  // One FMA-or-not rounding per step: 2 ulp of the operands.
  assertClose(got[0], teachers[0], { rtol: 3e-7, atol: 1e-7 }, "chunk 0");
  assertClose(got[1], teachers[1], { rtol: 3e-7, atol: 1e-7 }, "chunk 1");
  assertThrows(() => emaUpdate(gpu, t[0], s[1], mom1), RangeError, "student has 64 elements");
  assertThrows(() => emaUpdate(gpu, t[0], s[0], s[1]), RangeError, "[m] or [m, 1 − m]");
  gpu.release(...t, ...s, mom1, mom2);
});
