/**
 * kNN against scikit-learn 1.2 `KNeighborsClassifier` (fixtures from
 * scripts/fixtures/eval.py): predictions, neighbour sets, distances and vote
 * shares, on Gaussian blobs, an integer grid full of exact distance and vote
 * ties, and constructed exact and near ties (gaps of one 2^-12 grid step).
 * The threaded search must reproduce the single-threaded one exactly.
 */
import { assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { bruteForceNeighbors, KNeighborsClassifier, NeighborHeaps } from "../eval/knn.ts";
import { matrix } from "../eval/matrix.ts";
import { EvalThreads, threadedNeighborSearch } from "../eval/threads.ts";
import { Rng } from "./helpers.ts";
import { readFixture } from "./fixtures.ts";

interface KnnCase {
  name: string;
  dim: number;
  scale: number;
  trainGrid: number[];
  testGrid: number[];
  labels: string[];
  k: Record<string, {
    predict: string[];
    neighbors: number[][];
    distances: number[] | null;
    proba: number[];
  }>;
}

const fixture = await readFixture("eval/knn.json") as { cases: KnnCase[] };

for (const c of fixture.cases) {
  Deno.test(`knn matches scikit-learn: ${c.name}`, async () => {
    // Grid values are exact in float32, so the f32 input path is exercised.
    const train = matrix(
      Float32Array.from(c.trainGrid, (v) => v * c.scale),
      c.trainGrid.length / c.dim,
      c.dim,
    );
    const test = matrix(
      Float32Array.from(c.testGrid, (v) => v * c.scale),
      c.testGrid.length / c.dim,
      c.dim,
    );
    const clf = new KNeighborsClassifier(train, c.labels);
    const ks = Object.keys(c.k).map(Number);
    const nbs = await clf.kneighbors(test, ks);
    const preds = await clf.predictMany(test, ks);
    ks.forEach((k, i) => {
      const want = c.k[String(k)];
      assertEquals(preds[i], want.predict, `k=${k} predictions`);
      const sets = Array.from(
        { length: test.rows },
        (_, q) => Array.from(nbs[i].indices.subarray(q * k, (q + 1) * k)).sort((a, b) => a - b),
      );
      assertEquals(sets, want.neighbors, `k=${k} neighbour sets`);
      // Distances: sqrt of an exact float64 sum on this grid; 1e-12 covers the sqrt.
      if (want.distances) {
        assertClose(nbs[i].distances, want.distances, { rtol: 1e-12, atol: 1e-12 }, "distances");
      }
      // Vote shares are j/k, exact.
      assertClose(clf.voteProba(nbs[i]), want.proba, { rtol: 0, atol: 1e-15 }, "proba");
    });
  });
}

Deno.test("knn heap keeps the earliest index on exact ties (k=1) and sorts by (distance, index)", () => {
  const h = new NeighborHeaps(1, 1);
  h.push(0, 2, 0);
  h.push(0, 1, 1);
  h.push(0, 1, 2); // equal key, later index: not taken
  const nb = h.finish(new Float64Array([0]));
  assertEquals(Array.from(nb.indices), [1]);

  const h3 = new NeighborHeaps(1, 3);
  for (const [key, i] of [[5, 0], [5, 1], [5, 2], [5, 3], [1, 4]]) h3.push(0, key, i);
  const nb3 = h3.finish(new Float64Array([0]));
  assertEquals(nb3.indices[0], 4);
  assertEquals(Array.from(nb3.distances), [1, Math.sqrt(5), Math.sqrt(5)]);
});

Deno.test("knn vote ties go to the smallest class", async () => {
  // Query at the origin; two neighbours at distance 1 with labels "b" and "a".
  const train = matrix(new Float64Array([1, 0, 0, 1, 5, 5]), 3, 2);
  const clf = new KNeighborsClassifier(train, ["b", "a", "b"]);
  const [pred] = await clf.predictMany(matrix(new Float64Array([0, 0]), 1, 2), [2]);
  assertEquals(pred, ["a"]);
});

Deno.test("knn CPU search equals a direct float64 scan on random data across block edges", () => {
  const rng = new Rng(3);
  const d = 37, nTrain = 301, nQ = 70; // not multiples of the 4×4 tiles or the blocks
  const train = matrix(rng.normals(nTrain * d), nTrain, d);
  const queries = matrix(rng.normals(nQ * d), nQ, d);
  const [nb] = bruteForceNeighbors(train, queries, [5]);
  for (let q = 0; q < nQ; q++) {
    const dist = Array.from({ length: nTrain }, (_, t) => {
      let s = 0;
      for (let j = 0; j < d; j++) s += (queries.data[q * d + j] - train.data[t * d + j]) ** 2;
      return [Math.sqrt(s), t];
    }).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    assertEquals(
      Array.from(nb.indices.subarray(q * 5, q * 5 + 5)),
      dist.slice(0, 5).map((x) => x[1]),
    );
    // ‖y‖² − 2x·y + ‖x‖² vs the direct difference: cancellation costs ~1e-13 here.
    assertClose(nb.distances.subarray(q * 5, q * 5 + 5), dist.slice(0, 5).map((x) => x[0]), {
      rtol: 1e-10,
      atol: 1e-10,
    });
  }
});

Deno.test("knn rejects bad input with clear errors", async () => {
  const train = matrix(new Float64Array(6), 3, 2);
  assertThrows(() => new KNeighborsClassifier(train, ["a", "b"]), RangeError, "2 labels for 3");
  assertThrows(
    () => matrix(new Float64Array([0, NaN]), 1, 2, "test"),
    RangeError,
    "row 0, column 1",
  );
  const clf = new KNeighborsClassifier(train, ["a", "b", "a"]);
  await assertRejects(
    () => clf.kneighbors(matrix(new Float64Array(2), 1, 2), [4]),
    RangeError,
    "k=4 exceeds the 3 training samples",
  );
  await assertRejects(
    () => clf.kneighbors(matrix(new Float64Array(3), 1, 3), [1]),
    RangeError,
    "feature dimension 3 differs from the 2",
  );
});

Deno.test("threaded kNN search equals the single-threaded one exactly (ties included)", async () => {
  const threads = EvalThreads.open(2);
  try {
    for (const c of fixture.cases) {
      const train = matrix(
        Float64Array.from(c.trainGrid, (v) => v * c.scale),
        c.trainGrid.length / c.dim,
        c.dim,
      );
      const test = matrix(
        Float64Array.from(c.testGrid, (v) => v * c.scale),
        c.testGrid.length / c.dim,
        c.dim,
      );
      const want = bruteForceNeighbors(train, test, [1, 4, 20]);
      const clf = new KNeighborsClassifier(train, c.labels, {
        search: threadedNeighborSearch(threads),
      });
      assertEquals(await clf.kneighbors(test, [1, 4, 20]), want, c.name);
      assertEquals(await clf.predict(test, 20), c.k["20"].predict, `${c.name} k=20`);
    }
  } finally {
    threads.close();
  }
});
