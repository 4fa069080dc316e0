/** Softmax, log-softmax and soft cross-entropy: references, finite differences, PyTorch. */
import { AutotuneCache } from "../kernels/autotune.ts";
import { GpuLimitError } from "../kernels/errors.ts";
import {
  newRowTuner,
  rowChunks,
  rowLayout,
  rowThreadCap,
  setRowThreadCap,
} from "../kernels/common/rows.ts";
import type { Gpu } from "../kernels/runtime.ts";
import {
  crossEntropySoft,
  crossEntropySoftBackward,
  crossEntropySoftBackwardRef,
  crossEntropySoftRef,
  logSoftmax,
  logSoftmaxBackward,
  logSoftmaxBackwardRef,
  logSoftmaxRef,
  softmax,
  softmaxBackward,
  softmaxBackwardRef,
  softmaxRef,
  tuneRowKernels,
} from "../kernels/softmax.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { dot, finiteDifference, gpuTest, Rng, take } from "./helpers.ts";
import { readFixture } from "./fixtures.ts";

interface SoftmaxCase {
  shape: [number, number];
  temperature: number;
  x: number[];
  softmax: number[];
  dy: number[];
  dx: number[];
  logSoftmax: number[];
  dyLog: number[];
  dxLog: number[];
}
interface CeCase {
  shape: [number, number];
  temperature: number;
  logits: number[];
  targets: number[];
  loss: number[];
  logp: number[];
  dloss: number[];
  dlogits: number[];
}
const fixture = await readFixture("norms.json") as {
  softmax: SoftmaxCase[];
  crossEntropySoft: CeCase[];
};

const f32 = (a: ArrayLike<number>) => Float32Array.from(a);
const up = (gpu: Gpu, a: ArrayLike<number>, shape: number[]) => gpu.tensor(f32(a), shape);

/** Random logits of `scale`, uploaded, with their f32 values. */
function logits(gpu: Gpu, rng: Rng, rows: number, cols: number, scale: number) {
  const x = rng.normals(rows * cols, scale);
  return { x, t: gpu.tensor(x, [rows, cols]) };
}

/** Tolerance of softmax in f32: exp of z − max rounds at ulp(|z − max|) ≈ 6e-8·|z − max|. */
function softmaxTol(x: Float32Array, temperature: number) {
  let span = 0;
  for (const v of x) span = Math.max(span, Math.abs(v / temperature));
  return { rtol: 2e-6 + 2.4e-7 * span, atol: 1e-30 };
}

const SHAPES: [number, number][] = [
  [1, 1],
  [1, 5],
  [7, 1],
  [3, 3],
  [4, 16],
  [3, 37],
  [65, 12],
  [2, 1027],
  [5, 1000],
];

gpuTest("softmax: forward matches the float64 reference on edge and random shapes", async (gpu) => {
  const rng = new Rng(1);
  for (const [rows, cols] of SHAPES) {
    for (const threadsPerRow of [undefined, 1, 8, 64, 256]) {
      const temperature = 0.5;
      const { x, t } = logits(gpu, rng, rows, cols, 4);
      const [y, ly] = await take(
        gpu,
        softmax(gpu, t, { temperature, threadsPerRow }),
        logSoftmax(gpu, t, { temperature, threadsPerRow }),
      );
      gpu.release(t);
      const what = `[${rows}, ${cols}] T/row ${threadsPerRow}`;
      const tol = softmaxTol(x, temperature);
      assertClose(y, softmaxRef(x, cols, { temperature }), tol, `softmax ${what}`);
      // log-softmax errs absolutely by the same ulp(|z − max|).
      assertClose(ly, logSoftmaxRef(x, cols, { temperature }), {
        rtol: 1e-6,
        atol: tol.rtol,
      }, `logSoftmax ${what}`);
    }
  }
});

gpuTest("softmax: 65,536 classes (the DINO head) on a couple of rows", async (gpu) => {
  const rng = new Rng(2);
  const cols = 65536;
  const { x, t } = logits(gpu, rng, 2, cols, 1);
  const temperature = 0.1;
  const [y, ly] = await take(
    gpu,
    softmax(gpu, t, { temperature }),
    logSoftmax(gpu, t, { temperature }),
  );
  const targetsData = softmaxRef(rng.normals(2 * cols, 2), cols, { temperature: 0.04 });
  const targets = up(gpu, targetsData, [2, cols]);
  const ce = crossEntropySoft(gpu, t, targets, { temperature });
  const [loss] = await take(gpu, ce.loss);
  gpu.release(t, targets, ce.logp);
  const tol = softmaxTol(x, temperature);
  assertClose(y, softmaxRef(x, cols, { temperature }), tol, "softmax 65536");
  assertClose(ly, logSoftmaxRef(x, cols, { temperature }), { rtol: 1e-6, atol: tol.rtol });
  // The loss sums 65,536 products: f32 partial sums err by ~√C ulp of the total.
  const ref = crossEntropySoftRef(x, targetsData, cols, { temperature }).loss;
  assertClose(loss, ref, { rtol: 2e-5, atol: 0 }, "cross-entropy 65536");
});

gpuTest(
  "softmax: huge logits (1e4 at low temperature) neither overflow nor lose the max",
  async (gpu) => {
    const rng = new Rng(3);
    const cols = 300;
    const x = new Float32Array(4 * cols);
    for (let i = 0; i < x.length; i++) {
      // Rows around +1e4, −1e4, mixed ±1e4 and 0: the top entries are close together.
      const r = Math.floor(i / cols);
      const base = r === 0 ? 1e4 : r === 1 ? -1e4 : r === 2 ? (i % 2 ? 1e4 : -1e4) : 0;
      x[i] = base + rng.uniform(-2, 2);
    }
    const t = gpu.tensor(x, [4, cols]);
    // T = 1/32: x/T is exact in f32, so the GPU sees the reference's scaled logits exactly;
    // z − max is then exact near the max (Sterbenz) and only exp's few ulp remain.
    const temperature = 1 / 32;
    const [y, ly] = await take(
      gpu,
      softmax(gpu, t, { temperature }),
      logSoftmax(gpu, t, { temperature }),
    );
    assertClose(y, softmaxRef(x, cols, { temperature }), { rtol: 1e-5, atol: 1e-30 }, "softmax");
    // Far entries are ~−6e5: their absolute error is ulp(6e5) = 0.06, hence rtol.
    assertClose(ly, logSoftmaxRef(x, cols, { temperature }), { rtol: 2e-7, atol: 1e-5 }, "log");
    // T = 0.04 (the teacher's): z = x/0.04 ≈ 2.5e5 rounds by up to ulp/2 = 0.008 in f32, which
    // any f32 implementation inherits; the log-probs stay within that, and nothing is NaN/inf.
    const [y2, ly2] = await take(
      gpu,
      softmax(gpu, t, { temperature: 0.04 }),
      logSoftmax(gpu, t, { temperature: 0.04 }),
    );
    gpu.release(t);
    assert(y2.every(Number.isFinite) && ly2.every(Number.isFinite), "finite at T = 0.04");
    const ref2 = logSoftmaxRef(x, cols, { temperature: 0.04 });
    assertClose(ly2, ref2, { rtol: 2e-7, atol: 0.02 }, "log-softmax at T = 0.04");
    for (let r = 0; r < 4; r++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += y2[r * cols + c];
      assertClose([s], [1], { rtol: 0, atol: 1e-5 }, `row ${r} sums to 1`);
    }
  },
);

gpuTest("softmax: a temperature tensor gives the number's results bit for bit", async (gpu) => {
  const rng = new Rng(4);
  const { t } = logits(gpu, rng, 5, 40, 3);
  const tt = gpu.tensor(new Float32Array([0.07]));
  const targets = up(gpu, softmaxRef(rng.normals(200), 40), [5, 40]);
  const a = crossEntropySoft(gpu, t, targets, { temperature: 0.07 });
  const b = crossEntropySoft(gpu, t, targets, { temperature: tt });
  const dl = up(gpu, rng.normals(5), [5]);
  const ga = crossEntropySoftBackward(gpu, dl, a.logp, targets, { temperature: 0.07 });
  const gb = crossEntropySoftBackward(gpu, dl, b.logp, targets, { temperature: tt });
  const [sa, sb] = await take(
    gpu,
    softmax(gpu, t, { temperature: 0.07 }),
    softmax(gpu, t, {
      temperature: tt,
    }),
  );
  const [la, lb, pa, pb, da, db] = await take(gpu, a.loss, b.loss, a.logp, b.logp, ga, gb);
  gpu.release(t, tt, targets, dl);
  assertEquals([...sb], [...sa]);
  assertEquals([...lb], [...la]);
  assertEquals([...pb], [...pa]);
  assertEquals([...db], [...da]);
});

gpuTest("cross-entropy: random, one-hot and uniform targets match the reference", async (gpu) => {
  const rng = new Rng(5);
  for (const [rows, cols] of [[1, 1], [3, 7], [4, 64], [2, 1001]] as [number, number][]) {
    const temperature = 0.1;
    const { x, t } = logits(gpu, rng, rows, cols, 0.5);
    const tg = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        // Row 0 one-hot, row 1 uniform, the rest a teacher softmax.
        tg[r * cols + c] = r === 0 ? (c === (r * 7) % cols ? 1 : 0) : r === 1 ? 1 / cols : 0;
      }
      if (r >= 2) {
        tg.set(f32(softmaxRef(rng.normals(cols, 2), cols, { temperature: 0.04 })), r * cols);
      }
    }
    const targets = gpu.tensor(tg, [rows, cols]);
    const ce = crossEntropySoft(gpu, t, targets, { temperature });
    const [loss, logp] = await take(gpu, ce.loss, ce.logp);
    gpu.release(t, targets);
    const ref = crossEntropySoftRef(x, tg, cols, { temperature });
    const tol = softmaxTol(x, temperature).rtol;
    assertClose(logp, ref.logp, { rtol: 1e-6, atol: tol }, `logp [${rows}, ${cols}]`);
    assertClose(loss, ref.loss, { rtol: 1e-5, atol: tol }, `loss [${rows}, ${cols}]`);
  }
});

gpuTest("softmax backward rules match the reference and finite differences", async (gpu) => {
  const rng = new Rng(6);
  for (const [rows, cols] of [[1, 1], [3, 5], [2, 16], [2, 33]] as [number, number][]) {
    const temperature = 0.5;
    const { x, t } = logits(gpu, rng, rows, cols, 1);
    const dy = rng.normals(rows * cols);
    const dyT = gpu.tensor(dy, [rows, cols]);
    const y = softmax(gpu, t, { temperature });
    const ly = logSoftmax(gpu, t, { temperature });
    const [dx, dlx] = await take(
      gpu,
      softmaxBackward(gpu, dyT, y, { temperature }),
      logSoftmaxBackward(gpu, dyT, ly, { temperature }),
    );
    gpu.release(t, dyT, y, ly);
    const what = `[${rows}, ${cols}]`;
    // Central differences of the float64 reference, h = 1e-3: truncation error ~h²·|f'''|.
    const fd = finiteDifference((v) => dot(dy, softmaxRef(v, cols, { temperature })), x);
    const fdl = finiteDifference((v) => dot(dy, logSoftmaxRef(v, cols, { temperature })), x);
    assertClose(dx, fd, { rtol: 1e-3, atol: 1e-4 }, `softmax dx vs FD ${what}`);
    assertClose(dlx, fdl, { rtol: 1e-3, atol: 1e-4 }, `log-softmax dx vs FD ${what}`);
    // And against the analytic rule in float64 from the float64 outputs: f32 rounding only.
    const yr = softmaxRef(x, cols, { temperature });
    const lyr = logSoftmaxRef(x, cols, { temperature });
    const opts = { temperature };
    assertClose(dx, softmaxBackwardRef(dy, yr, cols, opts), { rtol: 1e-5, atol: 1e-6 });
    assertClose(dlx, logSoftmaxBackwardRef(dy, lyr, cols, opts), { rtol: 1e-5, atol: 1e-6 });
  }
});

gpuTest("cross-entropy backward matches the reference and finite differences", async (gpu) => {
  const rng = new Rng(7);
  for (const [rows, cols] of [[1, 1], [3, 6], [2, 20]] as [number, number][]) {
    const temperature = 0.25;
    const { x, t } = logits(gpu, rng, rows, cols, 0.3);
    // Targets that do not sum to 1 check the Σt factor of the rule.
    const tg = rng.floats(rows * cols, 0, 1);
    const targets = gpu.tensor(tg, [rows, cols]);
    const dl = rng.normals(rows);
    const dlT = gpu.tensor(dl);
    const ce = crossEntropySoft(gpu, t, targets, { temperature });
    const [dx] = await take(
      gpu,
      crossEntropySoftBackward(gpu, dlT, ce.logp, targets, { temperature }),
    );
    gpu.release(t, targets, dlT, ce.loss, ce.logp);
    const f = (v: Float64Array) => dot(dl, crossEntropySoftRef(v, tg, cols, { temperature }).loss);
    assertClose(dx, finiteDifference(f, x), { rtol: 1e-3, atol: 1e-4 }, `dx vs FD [${rows}]`);
    const ref = crossEntropySoftBackwardRef(
      dl,
      crossEntropySoftRef(x, tg, cols, { temperature }).logp,
      tg,
      cols,
      { temperature },
    );
    assertClose(dx, ref, { rtol: 1e-5, atol: 1e-6 }, `dx vs rule [${rows}, ${cols}]`);
  }
});

gpuTest("softmax family matches PyTorch 1.13 (fixture)", async (gpu) => {
  // f32 against f32: both round z − max and exp, so a few ulp of the largest |z| apart.
  for (const c of fixture.softmax) {
    const [rows, cols] = c.shape;
    const opts = { temperature: c.temperature };
    const x = up(gpu, c.x, c.shape);
    const y = softmax(gpu, x, opts);
    const ly = logSoftmax(gpu, x, opts);
    const dy = up(gpu, c.dy, c.shape);
    const dyl = up(gpu, c.dyLog, c.shape);
    const [dx, dlx] = await take(
      gpu,
      softmaxBackward(gpu, dy, y, opts),
      logSoftmaxBackward(gpu, dyl, ly, opts),
    );
    const [yv, lyv] = await take(gpu, y, ly);
    gpu.release(x, dy, dyl);
    const tol = softmaxTol(f32(c.x), c.temperature);
    const what = `[${rows}, ${cols}] T ${c.temperature}`;
    assertClose(yv, c.softmax, tol, `softmax ${what}`);
    assertClose(lyv, c.logSoftmax, { rtol: 1e-6, atol: tol.rtol }, `logSoftmax ${what}`);
    // Gradients scale by 1/T: absolute tolerance in units of 1/T.
    const g = { rtol: 1e-5, atol: 1e-6 / c.temperature };
    assertClose(dx, c.dx, g, `softmax dx ${what}`);
    assertClose(dlx, c.dxLog, { rtol: 1e-5, atol: tol.rtol / c.temperature }, `log dx ${what}`);
  }
  for (const c of fixture.crossEntropySoft) {
    const opts = { temperature: c.temperature };
    const x = up(gpu, c.logits, c.shape);
    const tg = up(gpu, c.targets, c.shape);
    const dl = up(gpu, c.dloss, [c.shape[0]]);
    const ce = crossEntropySoft(gpu, x, tg, opts);
    const [dx] = await take(gpu, crossEntropySoftBackward(gpu, dl, ce.logp, tg, opts));
    const [loss, logp] = await take(gpu, ce.loss, ce.logp);
    gpu.release(x, tg, dl);
    const tol = softmaxTol(f32(c.logits), c.temperature).rtol;
    assertClose(logp, c.logp, { rtol: 1e-6, atol: tol }, "cross-entropy logp");
    assertClose(loss, c.loss, { rtol: 1e-5, atol: tol }, "cross-entropy loss");
    assertClose(dx, c.dlogits, { rtol: 1e-5, atol: 1e-6 / c.temperature }, "dlogits");
  }
});

gpuTest(
  "softmax: row layouts respect the cap, the register floor and explicit threads",
  async (gpu) => {
    assertEquals(rowLayout(16384).threads, 256, "65,536 classes as vec4: the widest rows");
    assertEquals(rowLayout(16384, { cap: 8 }).threads, 8, "capped");
    assertEquals(rowLayout(16384, { cap: 1, rows: 64 }).workgroupSize, 8, "few long rows");
    assertEquals(rowLayout(96, { cap: 1, rows: 8224 }).workgroupSize, 64, "many short rows");
    assertEquals(rowLayout(96, { cap: 8, minThreads: 16 }).threads, 16, "raised to the floor");
    assertEquals(rowLayout(4).threads, 1, "a few values: one thread per row");
    assertEquals(rowLayout(4), { threads: 1, rowsPerGroup: 64, workgroupSize: 64 });
    assertEquals(rowLayout(1000, { threads: 32 }), {
      threads: 32,
      rowsPerGroup: 2,
      workgroupSize: 64,
    });
    assertThrows(() => setRowThreadCap(gpu, 12), RangeError, "power of two");
    // Tuning (in a memory-only cache) picks one of the candidates and records it; the
    // override takes precedence, and the kernels agree with the reference under either cap.
    const tuner = newRowTuner(new AutotuneCache({ path: null }));
    const cap = await tuneRowKernels(gpu, { candidates: [1, 256], tuner });
    assert(cap === 1 || cap === 256, `tuned cap ${cap}`);
    assertEquals(tuner.lookup(gpu.adapter.name, "cap"), cap);
    assertEquals(await tuneRowKernels(gpu, { candidates: [1, 256], tuner }), cap, "cached");
    try {
      for (const c of [1, 256]) {
        setRowThreadCap(gpu, c);
        assertEquals(rowThreadCap(gpu), c);
        const x = new Rng(9).normals(3 * 5000);
        const xt = gpu.tensor(x, [3, 5000]);
        const [y] = await take(gpu, softmax(gpu, xt));
        gpu.release(xt);
        assertClose(y, softmaxRef(x, 5000), softmaxTol(x, 1), `softmax under cap ${c}`);
      }
    } finally {
      setRowThreadCap(gpu, null);
    }
  },
);

/** Runs `fn` with the binding limit lowered to `bytes`, so small tensors take the split path. */
async function withBindingLimit(gpu: Gpu, bytes: number, fn: () => Promise<void>) {
  await gpu.sync();
  const saved = gpu.limits.maxStorageBufferBindingSize;
  gpu.limits.maxStorageBufferBindingSize = bytes;
  try {
    await fn();
  } finally {
    gpu.limits.maxStorageBufferBindingSize = saved;
  }
}

gpuTest("softmax: tensors over the binding limit split over rows, same results", async (gpu) => {
  const rng = new Rng(8);
  // 100 columns = 400 B rows: 8 KiB holds 20 rows, but 256 B-aligned starts need 16-row steps,
  // so chunks of 16; 64 columns (256 B) give chunks of 32; 7 columns need 64-row steps.
  const cases: [number, number, number][] = [[100, 8192, 37], [64, 8192, 37], [7, 2048, 150]];
  for (const [cols, limit, rows] of cases) {
    const { t } = logits(gpu, rng, rows, cols, 2);
    const tg = up(gpu, softmaxRef(rng.normals(rows * cols), cols), [rows, cols]);
    const dl = up(gpu, rng.normals(rows), [rows]);
    const run = () => {
      const ce = crossEntropySoft(gpu, t, tg, { temperature: 0.3 });
      const g = crossEntropySoftBackward(gpu, dl, ce.logp, tg, { temperature: 0.3 });
      return [softmax(gpu, t), ce.loss, ce.logp, g];
    };
    const whole = await take(gpu, ...run());
    let split: Float32Array[] = [];
    await withBindingLimit(gpu, limit, async () => {
      assert(rowChunks(gpu, "test", rows, [cols * 4]).length > 1, "the split path is taken");
      split = await take(gpu, ...run());
    });
    gpu.release(t, tg, dl);
    for (let i = 0; i < whole.length; i++) assertEquals([...split[i]], [...whole[i]]);
  }
  await withBindingLimit(gpu, 1024, () => {
    // 300 columns = 1200 B: not even one row binds under 1 KiB.
    const t = gpu.zeros([4, 300]);
    try {
      assertThrows(() => softmax(gpu, t), GpuLimitError, "softmax");
    } finally {
      gpu.release(t);
    }
    return Promise.resolve();
  });
});

gpuTest("softmax: bad input gets a clear error; empty input no dispatch", async (gpu) => {
  const x = gpu.zeros([2, 3]);
  const y = gpu.zeros([3, 2]);
  assertThrows(() => crossEntropySoft(gpu, x, y), RangeError, "crossEntropySoft: targets");
  assertThrows(() => softmax(gpu, x, { temperature: 0 }), RangeError, "temperature");
  assertThrows(() => softmax(gpu, x, { threadsPerRow: 3 }), RangeError, "power of two");
  assertThrows(() => softmaxBackward(gpu, x, y), RangeError, "softmaxBackward");
  const dl = gpu.zeros([3]);
  assertThrows(() => crossEntropySoftBackward(gpu, dl, x, x), RangeError, "dloss");
  const before = gpu.stats().dispatches;
  const e = gpu.zeros([0, 5]);
  gpu.release(softmax(gpu, e));
  const noClasses = gpu.zeros([3, 0]);
  const ce = crossEntropySoft(gpu, noClasses, noClasses);
  assertEquals(gpu.stats().dispatches, before, "no dispatch for empty tensors");
  assertEquals([...(await gpu.readF32(ce.loss))], [0, 0, 0]);
  gpu.release(x, y, dl, e, noClasses, ce.loss, ce.logp);
});
