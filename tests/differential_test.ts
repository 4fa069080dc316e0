/**
 * Differential counts against a table worked out by hand: three classes, one
 * of which no cell has (kept, at 0 %), a four-cell sample and a one-cell
 * sample; 95 % Wilson intervals (z = 1.959964) to 1e-4 of a percentage
 * point, e.g. 1 of 4 → 4.56–69.94 %, 0 of 4 → 0–48.99 %, 1 of 1 → 20.66–100 %
 * (the published Wilson bounds for those counts); flagged cells counted apart
 * or left out; csv and Markdown renderings; bad input named.
 */
import {
  differentialCount,
  differentialCsv,
  differentialMarkdown,
  wilsonInterval,
} from "../eval/differential.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";

const CLASSES = ["basophil", "lymphocyte", "neutrophil"];
const PRED = ["neutrophil", "lymphocyte", "neutrophil", "lymphocyte", "neutrophil"];
const SAMPLES = ["P1", "P2", "P1", "P1", "P1"];

Deno.test("wilson interval: published bounds, exact ends at 0 and n", () => {
  const cases: [number, number, number, number][] = [
    // k, n, low, high — by hand from the formula in eval/differential.ts
    [0, 4, 0, 0.489891],
    [1, 4, 0.045587, 0.699358],
    [3, 4, 0.300642, 0.954413],
    [4, 4, 0.510109, 1],
    [1, 1, 0.206549, 1],
    [0, 1, 0, 0.793451],
    [5, 10, 0.236593, 0.763407],
  ];
  for (const [k, n, lo, hi] of cases) {
    assertClose(wilsonInterval(k, n), [lo, hi], { rtol: 0, atol: 2e-6 }, `${k}/${n}`);
  }
  assertThrows(() => wilsonInterval(3, 2), RangeError, "k=3");
  assertThrows(() => wilsonInterval(0, 0), RangeError, "n=0");
});

Deno.test("differential count: hand-computed table with an empty class and a one-cell sample", () => {
  const t = differentialCount(PRED, SAMPLES, CLASSES);
  assertEquals(t.classes, CLASSES);
  assertEquals(t.samples.map((s) => s.sample), ["P1", "P2"]);
  const [p1, p2] = t.samples;
  assertEquals([p1.cells, p1.counted, p1.flagged], [4, 4, 0]);
  assertEquals(p1.counts, [0, 1, 3], "basophil kept with 0");
  assertClose(p1.percent, [0, 25, 75], { rtol: 0, atol: 1e-12 });
  assertClose(p1.low, [0, 4.5587, 30.0642], { rtol: 0, atol: 1e-4 });
  assertClose(p1.high, [48.9891, 69.9358, 95.4413], { rtol: 0, atol: 1e-4 });
  assertEquals(p2.counts, [0, 1, 0]);
  assertEquals(p2.percent, [0, 100, 0]);
  assertClose(p2.low, [0, 20.6549, 0], { rtol: 0, atol: 1e-4 });
  assertClose(p2.high, [79.3451, 100, 79.3451], { rtol: 0, atol: 1e-4 });
});

Deno.test("differential count: flagged cells reported, and left out on request", () => {
  const flagged = [true, false, false, false, false];
  const kept = differentialCount(PRED, SAMPLES, CLASSES, { flagged });
  assertEquals(kept.samples[0].flagged, 1);
  assertEquals(kept.samples[0].counts, [0, 1, 3]);
  const out = differentialCount(PRED, SAMPLES, CLASSES, { flagged, excludeFlagged: true });
  assertEquals([out.samples[0].cells, out.samples[0].counted], [4, 3]);
  assertEquals(out.samples[0].counts, [0, 1, 2]);
  assertClose(out.samples[0].percent, [0, 100 / 3, 200 / 3], { rtol: 0, atol: 1e-12 });
  // Every cell of a sample excluded: zero counts, no percentages.
  const none = differentialCount(["neutrophil"], ["P9"], CLASSES, {
    flagged: [true],
    excludeFlagged: true,
  });
  assert(none.samples[0].percent.every(Number.isNaN));
});

Deno.test("differential count: csv and Markdown carry every class and sample", () => {
  const t = differentialCount(PRED, SAMPLES, CLASSES, {
    flagged: [true, false, false, false, false],
  });
  const csv = differentialCsv(t).trim().split("\n");
  assertEquals(csv[0], "sample,class,count,percent,ci95_low,ci95_high,cells,counted,flagged");
  assertEquals(csv.length, 1 + 2 * 3);
  assertEquals(csv[1], "P1,basophil,0,0,0,48.9891,4,4,1");
  assertEquals(csv[6], "P2,neutrophil,0,0,0,79.3451,1,1,0");
  const md = differentialMarkdown(t, {
    notes: ["threshold note"],
    flaggedPaths: new Map([["P1", ["P1/cell0.png"]]]),
  });
  assert(md.includes("## P1") && md.includes("## P2") && md.includes("- threshold note"), md);
  assert(md.includes("| lymphocyte | 1 | 25.0 | 4.6–69.9 |"), md);
  assert(md.includes("1 flagged out of distribution"), md);
  assert(md.includes("Flagged cells:\n\n- P1/cell0.png"), md);
});

Deno.test("differential count: bad input is named", () => {
  assertThrows(() => differentialCount(["x"], ["P1"], CLASSES), RangeError, '"x"');
  assertThrows(() => differentialCount(PRED, ["P1"], CLASSES), RangeError, "1 sample ids for 5");
  assertThrows(() => differentialCount(PRED, SAMPLES, ["a", "a"]), RangeError, "repeated");
});
