/**
 * The screened kNN search (eval/knn_screened.ts) returns the float64
 * brute-force search's neighbours and distances exactly: random data with
 * duplicated rows (exact ties), rows that tie only after float32 rounding,
 * several k at once, widths and counts that are not multiples of the SIMD
 * tile, on this thread and on worker threads; and the float32 dot kernel (eval/f32_dots.ts) stays within its
 * stated error bound of the float64 dot.
 */
import { F32Dots } from "../eval/f32_dots.ts";
import { bruteForceNeighbors } from "../eval/knn.ts";
import { screenedNeighborSearch } from "../eval/knn_screened.ts";
import { matrix } from "../eval/matrix.ts";
import { EvalThreads, threadedNeighborSearch } from "../eval/threads.ts";
import { assert, assertEquals } from "./assert.ts";
import { Rng } from "./helpers.ts";

Deno.test("f32 dots: within γ_(d+2)·Σ|x y| of the float64 dot", () => {
  const rng = new Rng(5);
  for (const [nq, ny, d] of [[5, 7, 13], [8, 6, 16], [1, 1, 3], [9, 2049, 37]]) {
    const x = rng.normals(nq * d);
    const y = rng.normals(ny * d);
    const k = new F32Dots(y, ny, d);
    const { out, ldo } = k.dots(x, 0, nq, 0, ny);
    for (let q = 0; q < nq; q++) {
      for (let j = 0; j < ny; j++) {
        let s = 0, abs = 0;
        for (let t = 0; t < d; t++) {
          s += x[q * d + t] * y[j * d + t];
          abs += Math.abs(x[q * d + t] * y[j * d + t]);
        }
        const err = Math.abs(out[q * ldo + j] - s);
        assert(err <= k.gamma * abs + 1e-30, `[${nq},${ny},${d}] q${q} j${j}: error ${err}`);
      }
    }
    // A sub-range of queries and rows.
    const part = k.dots(x, 1, nq, Math.min(1, ny - 1), ny);
    if (nq > 1) {
      let s = 0;
      const j = Math.min(1, ny - 1);
      for (let t = 0; t < d; t++) s += x[d + t] * y[j * d + t];
      assert(Math.abs(part.out[0] - s) <= 1e-4 * (1 + Math.abs(s)), "offsets");
    }
  }
});

Deno.test("screened search: the float64 search's neighbours and distances, ties included", () => {
  const rng = new Rng(9);
  const cases: [number, number, number, number[]][] = [
    [37, 301, 19, [1, 5, 20]],
    [130, 2500, 8, [1, 3]], // several query and training blocks
    [4, 21, 1, [1, 20]],
  ];
  for (const [nq, nt, d, ks] of cases) {
    const train = rng.normals(nt * d);
    // Exact duplicates and rows equal in float32 but not in float64.
    for (let r = 0; r + 7 < nt; r += 7) train.set(train.subarray(r * d, (r + 1) * d), (r + 3) * d);
    const tr64 = Float64Array.from(train);
    for (let r = 5; r < nt; r += 11) tr64[r * d] += 1e-12;
    const queries = new Float64Array(nq * d);
    for (let q = 0; q < nq; q++) {
      // Some queries sit on training rows, some between them.
      for (let t = 0; t < d; t++) {
        queries[q * d + t] = q % 3 === 0 ? tr64[((q * 5) % nt) * d + t] : rng.normal();
      }
    }
    for (const trainM of [matrix(train, nt, d), matrix(tr64, nt, d)]) {
      const qm = matrix(queries, nq, d);
      const want = bruteForceNeighbors(trainM, qm, ks);
      const got = screenedNeighborSearch(trainM, qm, ks);
      ks.forEach((k, i) => {
        assertEquals(
          [...got[i].indices],
          [...want[i].indices],
          `indices k=${k} [${nq},${nt},${d}]`,
        );
        assertEquals([...got[i].distances], [...want[i].distances], `distances k=${k}`);
      });
    }
  }
});

Deno.test("screened search on worker threads: the same answer", async () => {
  const rng = new Rng(13);
  const [nq, nt, d] = [50, 700, 24];
  const train = rng.normals(nt * d);
  for (let r = 0; r + 5 < nt; r += 5) train.set(train.subarray(r * d, (r + 1) * d), (r + 2) * d);
  const tm = matrix(train, nt, d);
  const qm = matrix(rng.normals(nq * d), nq, d);
  const threads = EvalThreads.open(2);
  try {
    const got = await threadedNeighborSearch(threads, { screened: true })(tm, qm, [1, 7]);
    const want = bruteForceNeighbors(tm, qm, [1, 7]);
    for (const i of [0, 1]) {
      assertEquals([...got[i].indices], [...want[i].indices]);
      assertEquals([...got[i].distances], [...want[i].distances]);
    }
  } finally {
    threads.close();
  }
});
