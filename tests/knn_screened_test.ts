/**
 * The screened kNN search (eval/knn_screened.ts) returns the float64
 * brute-force search's neighbours and distances exactly: random data with
 * duplicated rows (exact ties), rows that tie only after float32 rounding,
 * several k at once, widths and counts that are not multiples of the SIMD
 * tile, a wide column, magnitudes the codes cannot hold, with both screen
 * levels and with 16-bit codes alone, on this thread and on worker threads.
 * The screen's kernel (eval/screen_dots.ts) multiplies codes exactly (at the
 * int32 limit too), reports exactly the pairs its CPU reference passes, and
 * its keys stay within the stated bounds of the float64 keys.
 */
import { codeLimit, relaxedSimdAvailable, ScreenDots } from "../eval/screen_dots.ts";
import { bruteForceNeighbors } from "../eval/knn.ts";
import { screenedNeighborSearch } from "../eval/knn_screened.ts";
import { matrix } from "../eval/matrix.ts";
import { EvalThreads, threadedNeighborSearch } from "../eval/threads.ts";
import { assert, assertClose, assertEquals } from "./assert.ts";
import { Rng } from "./helpers.ts";

/** The screen's levels this runtime runs (2 needs relaxed SIMD). */
const LEVELS: (1 | 2)[] = relaxedSimdAvailable() ? [1, 2] : [1];

/** The pairs `k` reports for its loaded queries and rows [t0, t1): per query, row → key. */
function reported(k: ScreenDots, nq: number, t0: number, t1: number): Map<number, number>[] {
  const hits = k.scan(t0, t1);
  const out = Array.from({ length: nq }, () => new Map<number, number>());
  let last = new Array(nq).fill(-1);
  for (let e = 0; e < hits.count; e++) {
    const q = hits.ints[4 * e], t = hits.ints[4 * e + 1];
    assert(q < nq && t >= t0 && t < t1, `entry (${q}, ${t}) in range`);
    assert(t > last[q], `query ${q}'s rows in order`);
    last = last.with(q, t);
    out[q].set(t, hits.keys[2 * e + 1]);
  }
  return out;
}

Deno.test("screen: integer codes multiply exactly, up to the int32 limit", () => {
  const rng = new Rng(3);
  for (const levels of LEVELS) {
    for (const [nq, ny, d] of [[5, 7, 13], [8, 6, 16], [1, 1, 3], [6, 9, 1100]]) {
      const M = codeLimit(d);
      assert(d * M * M <= 2 ** 31 - 1 && (M === 32767 || d * (M + 1) ** 2 > 2 ** 31 - 1), "M");
      // Integer data with ±M in every column: 16-bit scales are 1 and the codes the data.
      const y = Float64Array.from({ length: ny * d }, () => rng.int(2 * M + 1) - M);
      const x = Float64Array.from({ length: nq * d }, () => rng.int(2 * M + 1) - M);
      for (let j = 0; j < d; j++) y[j] = M;
      // The largest |sum|: d·M².
      if (ny > 1) { for (let j = 0; j < d; j++) y[d + j] = -M; }
      for (let q = 0; q < nq; q++) x[q * d + (q % d)] = -M;
      const opts = { maxQueries: 8, maxRows: 16, levels, center: false };
      const k = new ScreenDots(y, ny, d, opts);
      const { scale } = k.loadQueries(x, 0, nq);
      assertEquals([...scale], new Array(nq).fill(1));
      k.coef.fill(1), k.thr.fill(Infinity), k.thr8.fill(Infinity);
      const got = reported(k, nq, 0, ny);
      for (let q = 0; q < nq; q++) {
        for (let j = 0; j < ny; j++) {
          let s = 0, yn = 0; // exact: integers under 2⁵³
          for (let t = 0; t < d; t++) s += x[q * d + t] * y[j * d + t], yn += y[j * d + t] ** 2;
          assertEquals(got[q].get(j), yn - s, `levels ${levels} [${nq},${ny},${d}] q${q} j${j}`);
          assertEquals(k.keysRef(q, j).key16, yn - s);
        }
      }
    }
  }
});

Deno.test("screen: reports exactly the pairs under both thresholds, as its CPU reference", () => {
  const rng = new Rng(8);
  for (const levels of LEVELS) {
    const [nq, ny, d] = [7, 23, 37];
    const y = rng.normals(ny * d), x = rng.normals(nq * d);
    const k = new ScreenDots(y, ny, d, { maxQueries: 8, maxRows: 32, levels });
    const l = k.loadQueries(x, 0, nq);
    for (let q = 0; q < nq; q++) {
      k.coef[q] = 2 * l.scale[q];
      if (levels === 2) k.coef8[q] = 2 * l.scale8![q], k.off8[q] = k.coef8[q] * l.sum8![q];
    }
    const ref = Array.from(
      { length: nq },
      (_, q) => Array.from({ length: ny }, (_, t) => k.keysRef(q, t)),
    );
    const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
    // Thresholds at the reference keys' medians (pairs exactly at a threshold pass).
    for (let q = 0; q < nq; q++) {
      k.thr[q] = median(ref[q].map((r) => r.key16));
      k.thr8[q] = levels === 2 ? median(ref[q].map((r) => r.key8)) : NaN;
    }
    for (const [t0, t1] of [[0, ny], [3, 14], [14, 15]]) {
      const got = reported(k, nq, t0, t1);
      for (let q = 0; q < nq; q++) {
        for (let t = t0; t < t1; t++) {
          const r = ref[q][t];
          const pass = r.key16 <= k.thr[q] && (levels === 1 || r.key8 <= k.thr8[q]);
          assertEquals(got[q].has(t), pass, `levels ${levels} q${q} t${t}`);
          if (pass) assertEquals(got[q].get(t), r.key16);
        }
      }
    }
  }
});

Deno.test("screen: keys within the stated bounds of the float64 keys, bounds tight", () => {
  const rng = new Rng(5);
  for (const levels of LEVELS) {
    for (
      const [nq, ny, d, wide, offset] of [
        [5, 7, 13, 1, 0],
        [9, 301, 37, 1, 0],
        [4, 6, 384, 1, 0],
        [4, 6, 40, 40, 0],
        [5, 50, 24, 1, 30], // a common offset, which centring removes
      ]
    ) {
      const x = rng.normals(nq * d);
      const y = rng.normals(ny * d);
      // One column `wide` times the others (a large activation), one all-zero column.
      for (let r = 0; r < ny; r++) y[r * d] *= wide, y[r * d + d - 1] = 0;
      for (let i = 0; i < ny * d; i++) y[i] += offset;
      for (let i = 0; i < nq * d; i++) x[i] += offset;
      const k = new ScreenDots(y, ny, d, { maxQueries: 16, levels });
      const l = k.loadQueries(x, 1, nq);
      for (let q = 0; q < nq - 1; q++) {
        k.coef[q] = 2 * l.scale[q];
        if (levels === 2) k.coef8[q] = 2 * l.scale8![q], k.off8[q] = k.coef8[q] * l.sum8![q];
      }
      const what = `levels ${levels} [${nq},${ny},${d}]`;
      for (let q = 1; q < nq; q++) {
        // The keys are ‖x − y‖² less a constant of the query, ‖x̃‖².
        let xc2 = 0, scale16 = 0, scale8 = 0; // Σ|x̃_j|·max|ỹ_j| per level
        for (let t = 0; t < d; t++) {
          const v = x[q * d + t] - k.mean[t];
          xc2 += v * v;
          scale16 += Math.abs(v) * k.colScale[t] * k.limit;
          scale8 += Math.abs(v) * k.colScale8[t] * 63;
        }
        assertClose([l.norm[q - 1]], [Math.sqrt(xc2)], { rtol: 1e-12, atol: 0 }, "‖x̃‖");
        for (let j = 0; j < ny; j++) {
          let dist = 0;
          for (let t = 0; t < d; t++) dist += (x[q * d + t] - y[j * d + t]) ** 2;
          const r = k.keysRef(q - 1, j);
          const slack = 1e-12 * (dist + xc2 + 1);
          const e16 = Math.abs(r.key16 - (dist - xc2)), b16 = 2 * l.bound[q - 1];
          assert(e16 <= b16 * (1 + 1e-6) + slack, `16-bit ${what} q${q} j${j}: ${e16} > ${b16}`);
          if (levels === 2) {
            const e8 = Math.abs(r.key8 - (dist - xc2)), b8 = 2 * l.bound8![q - 1];
            assert(e8 <= b8 * (1 + 1e-6) + slack, `8-bit ${what} q${q} j${j}: ${e8} > ${b8}`);
          }
        }
        // About a code step per column: 4/M of the dot's scale (times the wide column's
        // factor, which coarsens the query's codes).
        assert(l.bound[q - 1] < (4 * wide) / k.limit * scale16, `16-bit bound ${l.bound[q - 1]}`);
        if (levels === 2) {
          assert(l.bound8![q - 1] < (4 * wide) / 63 * scale8, `8-bit bound ${l.bound8![q - 1]}`);
        }
      }
      if (offset) {
        // Centred: the codes see the spread (~1), not the offset (30).
        assert(Math.max(...k.mean) > offset - 1 && k.maxNorm < 3 * Math.sqrt(d), "centred");
      }
    }
  }
});

/** Asserts `got` equals the float64 search's answer on the same inputs. */
function assertSameNeighbors(
  got: { indices: Int32Array; distances: Float64Array }[],
  want: { indices: Int32Array; distances: Float64Array }[],
  what: string,
): void {
  want.forEach((w, i) => {
    assertEquals([...got[i].indices], [...w.indices], `indices ${what} (k #${i})`);
    assertEquals([...got[i].distances], [...w.distances], `distances ${what} (k #${i})`);
  });
}

Deno.test("screened search: the float64 search's neighbours and distances, ties included", () => {
  const rng = new Rng(9);
  const cases: [number, number, number, number[], number, number][] = [
    [37, 301, 19, [1, 5, 20], 1, 0],
    [130, 2500, 8, [1, 3], 1, 0], // several query and training blocks
    [4, 21, 1, [1, 20], 1, 0],
    [20, 600, 33, [1, 20], 30, 0], // one column 30 times wider than the others
    [20, 300, 16, [1, 20], 1, 40], // a common offset (centring)
    [10, 200, 12, [1, 20], 1, 1e7], // an offset that dwarfs the spread (float64 rounding)
  ];
  for (const [nq, nt, d, ks, wide, offset] of cases) {
    const train = rng.normals(nt * d);
    for (let r = 0; r < nt; r++) train[r * d] *= wide;
    for (let i = 0; i < nt * d; i++) train[i] += offset;
    // Exact duplicates and rows equal in float32 but not in float64.
    for (let r = 0; r + 7 < nt; r += 7) train.set(train.subarray(r * d, (r + 1) * d), (r + 3) * d);
    const tr64 = Float64Array.from(train);
    for (let r = 5; r < nt; r += 11) tr64[r * d] += 1e-12;
    const queries = new Float64Array(nq * d);
    for (let q = 0; q < nq; q++) {
      // Some queries sit on training rows, some between them.
      for (let t = 0; t < d; t++) {
        queries[q * d + t] = q % 3 === 0 ? tr64[((q * 5) % nt) * d + t] : rng.normal() + offset;
      }
    }
    for (const trainM of [matrix(train, nt, d), matrix(tr64, nt, d)]) {
      const qm = matrix(queries, nq, d);
      const want = bruteForceNeighbors(trainM, qm, ks);
      for (const levels of LEVELS) {
        const got = screenedNeighborSearch(trainM, qm, ks, levels);
        assertSameNeighbors(got, want, `levels ${levels} [${nq},${nt},${d}]`);
      }
    }
  }
});

Deno.test("screened search: magnitudes the codes cannot hold are decided in float64", () => {
  const rng = new Rng(21);
  const [nq, nt, d] = [9, 150, 6];
  const train = Float64Array.from(rng.normals(nt * d));
  const queries = Float64Array.from(rng.normals(nq * d));
  // Queries whose scaled values underflow the codes (an infinite bound: every row in float64),
  // and an all-zero query.
  for (let t = 0; t < d; t++) queries[t] *= 1e-290, queries[d + t] = 0;
  const tiny = train.map((v) => v * 1e-280); // a reference the codes refuse
  for (const [tm, what] of [[train, "tiny queries"], [tiny, "tiny reference"]] as const) {
    const want = bruteForceNeighbors(matrix(tm, nt, d), matrix(queries, nq, d), [1, 4]);
    for (const levels of LEVELS) {
      const got = screenedNeighborSearch(matrix(tm, nt, d), matrix(queries, nq, d), [1, 4], levels);
      assertSameNeighbors(got, want, `${what}, levels ${levels}`);
    }
  }
});

Deno.test("screened search on worker threads: the same answer, float32 or float64", async () => {
  const rng = new Rng(13);
  const [nq, nt, d] = [50, 700, 24];
  const train = rng.normals(nt * d);
  for (let r = 0; r + 5 < nt; r += 5) train.set(train.subarray(r * d, (r + 1) * d), (r + 2) * d);
  const queries = rng.normals(nq * d);
  const threads = EvalThreads.open(2);
  try {
    for (
      const [tm, qm] of [
        [matrix(train, nt, d), matrix(queries, nq, d)],
        [matrix(Float64Array.from(train), nt, d), matrix(Float64Array.from(queries), nq, d)],
      ]
    ) {
      const want = bruteForceNeighbors(tm, qm, [1, 7]);
      for (const screened of [true, false]) {
        const got = await threadedNeighborSearch(threads, { screened })(tm, qm, [1, 7]);
        assertSameNeighbors(got, want, `screened ${screened}, ${tm.data.constructor.name}`);
      }
    }
  } finally {
    threads.close();
  }
});

Deno.test("screened search on worker threads: a kept reference is reused only while unchanged", async () => {
  const rng = new Rng(17);
  const [nq, nt, d] = [30, 400, 20];
  const train = rng.normals(nt * d);
  const tm = matrix(train, nt, d);
  const threads = EvalThreads.open(2);
  try {
    const search = threadedNeighborSearch(threads, { screened: true });
    for (let round = 0; round < 4; round++) {
      // Rounds 0, 1: the same reference (kept); 2: changed in place; 3: another matrix.
      if (round === 2) { for (let i = 0; i < train.length; i += 3) train[i] = rng.normal(); }
      const ref = round === 3 ? matrix(rng.normals(nt * d), nt, d) : tm;
      const qm = matrix(rng.normals(nq * d), nq, d);
      const got = await search(ref, qm, [1, 5]);
      assertSameNeighbors(got, bruteForceNeighbors(ref, qm, [1, 5]), `round ${round}`);
    }
  } finally {
    threads.close();
  }
});
