/**
 * The GPU paths of the evaluation: the kNN neighbour search and the linear
 * probe's objective, each against its CPU counterpart.
 *
 * - kNN: identical predictions for k = 1 and 20 on random data (no engineered
 *   near ties), across several query and training blocks; identical
 *   neighbour sets wherever the float64 gap between the k-th and (k+1)-th
 *   neighbour exceeds f32 rounding of the keys; exact ties (duplicate rows)
 *   go to the lower training index.
 * - Probe: on the scikit-learn fixtures, solved to max |g| ≤ 1e-4, the GPU
 *   fit's probabilities are within 1e-4 of the CPU `LogisticRegression`'s
 *   and of the tight optimum (measured: ≤ 3.5e-5); the objective and
 *   gradient at a random point agree with the CPU's to f32 rounding.
 */
import { gpuNeighborSearch } from "../eval/gpu_knn.ts";
import { knnSelect, knnSelectRef } from "../kernels/knn_select.ts";
import {
  GpuLinearProbe,
  GpuProbeObjective,
  GradientConsistentObjective,
} from "../eval/gpu_probe.ts";
import { lbfgsAsync } from "../eval/lbfgs.ts";
import { KNeighborsClassifier } from "../eval/knn.ts";
import { encodeLabels } from "../eval/labels.ts";
import { LogisticRegression, multinomialLossGrad } from "../eval/logreg.ts";
import { matrix } from "../eval/matrix.ts";
import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { readFixture } from "./fixtures.ts";
import { gpuTest, Rng } from "./helpers.ts";

interface LrCase {
  name: string;
  n: number;
  m: number;
  train: number[];
  labels: string[];
  test: number[];
  optimum: { proba: number[] };
}
const lrCases = (await readFixture("eval/logreg.json")).cases as LrCase[];

function randomSet(rng: Rng, rows: number, dim: number, classes: number) {
  const data = rng.normals(rows * dim);
  const labels = Array.from({ length: rows }, () => `c${rng.int(classes)}`);
  return { m: matrix(data, rows, dim), labels };
}

gpuTest(
  "gpu kNN: same predictions and neighbours as the CPU search on random data",
  async (gpu) => {
    const rng = new Rng(21);
    const train = randomSet(rng, 700, 24, 5);
    const test = randomSet(rng, 300, 24, 5);
    const cpu = new KNeighborsClassifier(train.m, train.labels);
    // Small blocks: 3 query blocks × 3 training blocks, none a multiple of the other.
    const gpuKnn = new KNeighborsClassifier(train.m, train.labels, {
      search: gpuNeighborSearch(gpu, { queryBlock: 128, trainBlock: 256 }),
    });
    const ks = [1, 20];
    assertEquals(await gpuKnn.predictMany(test.m, ks), await cpu.predictMany(test.m, ks));
    // Neighbour sets, where float64 separates the k-th from the (k+1)-th by more than f32 noise.
    const [c1, c20, c21] = await cpu.kneighbors(test.m, [1, 20, 21]);
    const [g1, g20] = await gpuKnn.kneighbors(test.m, ks);
    let compared = 0;
    for (const [c, g, next] of [[c1, g1, c20], [c20, g20, c21]] as const) {
      const k = c.k;
      for (let q = 0; q < test.m.rows; q++) {
        const kth = c.distances[q * k + k - 1];
        const after = next.distances[q * next.k + k];
        if (after ** 2 - kth ** 2 < 1e-3) continue; // f32 keys carry ~1e-5 absolute error here
        const want = [...c.indices.subarray(q * k, (q + 1) * k)].sort((a, b) => a - b);
        const got = [...g.indices.subarray(q * k, (q + 1) * k)].sort((a, b) => a - b);
        assertEquals(got, want, `k=${k}, query ${q}`);
        compared++;
      }
    }
    assert(compared > 500, `only ${compared} of 600 neighbour sets were clear of near ties`);
    // Distances from f32 keys: within 1e-4 relative of float64 ones.
    for (let i = 0; i < c20.distances.length; i++) {
      assert(Math.abs(g20.distances[i] - c20.distances[i]) <= 1e-4 * c20.distances[i] + 1e-4);
    }
  },
);

gpuTest("gpu kNN: duplicate training rows tie exactly and go to the lower index", async (gpu) => {
  const rng = new Rng(5);
  const base = rng.normals(40 * 16);
  // Rows 30..39 repeat rows 0..9 with the other label, so each pair is an exact tie.
  const data = new Float32Array(40 * 16);
  data.set(base.subarray(0, 30 * 16));
  data.set(base.subarray(0, 10 * 16), 30 * 16);
  const labels = Array.from({ length: 40 }, (_, i) => (i < 30 ? "a" : "b"));
  const train = matrix(data, 40, 16);
  const queries = matrix(base.subarray(0, 10 * 16).map((v) => v + 1e-3), 10, 16);
  const search = gpuNeighborSearch(gpu);
  const [nb] = await search(train, queries, [1]);
  assertEquals([...nb.indices], [...Array(10).keys()], "the lower index of each tied pair");
  const knn = new KNeighborsClassifier(train, labels, { search });
  assertEquals(await knn.predict(queries, 1), new Array(10).fill("a"));
  await assertRejects(
    async () => await search(train, queries, [21]),
    RangeError,
    "k=21 exceeds the GPU search's 20",
  );
});

gpuTest("knnSelect: heaps over several blocks equal its f32 reference bit for bit", async (gpu) => {
  // 37 queries, 3 blocks of training rows (the first starts the heaps), k = 1, 5 and 20 (the
  // most the kernel keeps); duplicated dot columns make exact key ties.
  const rng = new Rng(5);
  const queries = 37;
  const blocks = [23, 40, 9];
  const total = blocks.reduce((a, b) => a + b, 0);
  const ynorm = Float32Array.from(rng.floats(total, 0, 4));
  for (const k of [1, 5, 20]) {
    const keys = gpu.empty([queries, k]);
    const idx = gpu.empty([queries, k], "i32");
    const ref = { keys: new Float32Array(queries * k), idx: new Int32Array(queries * k) };
    let first = 0;
    for (const [b, rows] of blocks.entries()) {
      const dots = Float32Array.from(rng.floats(rows * queries, -2, 2));
      for (let t = 1; t < rows; t += 3) {
        dots.copyWithin(t * queries, (t - 1) * queries, t * queries);
      }
      const td = gpu.tensor(dots, [rows, queries]);
      const tn = gpu.tensor(ynorm.slice(0, first + rows));
      const block = { queries, rows, first, fresh: b === 0 };
      knnSelect(gpu, td, tn, { keys, idx }, block);
      knnSelectRef(dots, ynorm, ref, block);
      gpu.release(td, tn);
      first += rows;
    }
    const [gk, gi] = await gpu.readMany([keys, idx]);
    assertEquals([...gk], [...ref.keys], `keys, k=${k}`);
    assertEquals([...gi], [...ref.idx], `rows, k=${k}`);
    assert(ref.idx.every((i) => i >= 0), "every heap is full");
    gpu.release(keys, idx);
  }
});

gpuTest("gpu probe: objective and gradient equal the CPU's to f32 rounding", async (gpu) => {
  const c = lrCases[1];
  const x = matrix(Float32Array.from(c.train), c.n, c.m);
  const { classes, codes } = encodeLabels(c.labels);
  const k = classes.length;
  const w = Float64Array.from(new Rng(2).normals(k * c.m + k, 0.3), (v) => Math.fround(v));
  const gCpu = new Float64Array(w.length);
  // C = Infinity removes the penalty: the CPU value is then the data term alone.
  const fCpu = multinomialLossGrad(
    Float64Array.from(x.data),
    c.n,
    c.m,
    codes,
    k,
    Infinity,
    w,
    gCpu,
  );
  // Two row blocks (rowBlock 120 of 200 rows) to cover the accumulation across blocks.
  const obj = GpuProbeObjective.create(gpu, x, codes, k, 120);
  try {
    const gGpu = new Float64Array(w.length);
    const fGpu = await obj.evaluate(w, gGpu);
    // f32 logits of O(10) and 200-row sums: relative 1e-5 on f, 1e-4 absolute on ∇.
    assertClose([fGpu], [fCpu], { rtol: 1e-5, atol: 0 }, "loss");
    assertClose(gGpu, gCpu, { rtol: 1e-4, atol: 1e-4 }, "gradient");
  } finally {
    obj.destroy();
  }
});

for (const c of lrCases) {
  gpuTest(`gpu probe: same optimum as the CPU probe (${c.name})`, async (gpu) => {
    const train = matrix(Float32Array.from(c.train), c.n, c.m);
    const test = matrix(Float32Array.from(c.test), c.test.length / c.m, c.m);
    // Both solved to scikit-learn's tol (max |g| ≤ 1e-4) without the relative-decrease stop,
    // which otherwise halts each at its own point up to ~4e-4 from the optimum.
    const cpu = LogisticRegression.fit(train, c.labels, { ftol: 0 });
    const gp = await GpuLinearProbe.fit(gpu, train, c.labels, { ftol: 0 });
    assertEquals(gp.reason, "gtol", `${c.name}: GPU fit stopped by ${gp.reason}`);
    assertEquals(gp.classes, cpu.classes);
    assertClose(gp.predictProba(test), cpu.predictProba(test), { rtol: 0, atol: 1e-4 }, "proba");
    assertClose(gp.predictProba(test), c.optimum.proba, { rtol: 0, atol: 1e-4 }, "vs optimum");
    assertEquals(gp.predict(test), cpu.predict(test));
    if (c.name === "blobs") return; // (the slow case: one fit is enough)
    // With the default stopping rules it converges too, within scikit-learn's own spread.
    const dflt = await GpuLinearProbe.fit(gpu, train, c.labels);
    assert(dflt.converged, `${c.name}: default GPU fit stopped by ${dflt.reason}`);
    assertClose(dflt.predictProba(test), c.optimum.proba, { rtol: 0, atol: 1e-3 }, "default");
  });
}

Deno.test("gradient-consistent values let L-BFGS converge through f noise", async () => {
  // An ill-conditioned quadratic whose f carries ±1e-6 of deterministic noise (like f32
  // rounding of a sum) while its gradient is exact.
  const n = 30;
  const diag = Float64Array.from({ length: n }, (_, i) => 10 ** (2 * i / (n - 1)));
  const fg = (x: Float64Array, g: Float64Array) => {
    let f = 0, s = 0;
    for (let i = 0; i < n; i++) {
      const e = x[i] - 1;
      f += 0.5 * diag[i] * e * e;
      g[i] = diag[i] * e;
      s += x[i];
    }
    return Promise.resolve(f + 1e-6 * Math.sin(1e6 * s));
  };
  const opts = { gtol: 1e-7, ftol: 0, maxIter: 2000 };
  const plain = await lbfgsAsync(fg, new Float64Array(n), opts);
  assertEquals(plain.reason, "lineSearch", "the noise defeats a plain line search");
  const wrapped = new GradientConsistentObjective(fg, (f) => 1e-5 * Math.max(1, Math.abs(f)));
  const res = await lbfgsAsync((x, g) => wrapped.evaluate(x, g), new Float64Array(n), {
    ...opts,
    onIteration: () => wrapped.accept(),
  });
  assertEquals(res.reason, "gtol");
  // |g_i| ≤ 1e-7 with curvature ≥ 1: every coordinate within 1e-7 of the minimiser.
  assertClose(res.x, new Float64Array(n).fill(1), { rtol: 0, atol: 1e-7 });
});
