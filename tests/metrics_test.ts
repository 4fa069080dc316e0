/**
 * Metrics against scikit-learn 1.2 (fixtures from scripts/fixtures/eval.py):
 * accuracy, balanced accuracy, weighted and macro F1, per-class
 * precision/recall/F1/support with zero_division "warn" (→ 0) and 1, and the
 * confusion matrix, on cases with classes absent from the predictions or from
 * the truth. Scores agree to 1e-12 (numpy sums pairwise, we sum in order).
 * Also mean ± std over folds, the report's JSON and Markdown, and the
 * protocol runner (its probe row scores scikit-learn's own predictions).
 */
import { assertClose, assertEquals, assertStrictEquals, assertThrows } from "./assert.ts";
import { readFixture } from "./fixtures.ts";
import {
  accuracy,
  balancedAccuracy,
  classificationMetrics,
  confusionMatrix,
  meanStd,
  precisionRecallF1,
  weightedF1,
} from "../eval/metrics.ts";
import { markdownTable, perClassTable, reportJson, reportRow } from "../eval/report.ts";
import { evaluateEmbeddings } from "../eval/protocols.ts";
import { KNeighborsClassifier } from "../eval/knn.ts";
import { matrix } from "../eval/matrix.ts";

const fixture = await readFixture("eval/metrics.json");
const TOL = { rtol: 1e-12, atol: 1e-12 };

for (const c of fixture.cases) {
  Deno.test(`metrics match scikit-learn: ${c.name}`, () => {
    const m = classificationMetrics(c.yTrue, c.yPred);
    assertEquals(m.perClass.labels, c.labels, "label set");
    assertClose([m.accuracy], [c.accuracy], TOL, "accuracy");
    assertClose([m.balancedAccuracy], [c.balancedAccuracy], TOL, "balanced accuracy");
    assertClose([m.weightedF1], [c.weightedF1], TOL, "weighted F1");
    assertClose([m.macroF1], [c.macroF1], TOL, "macro F1");
    assertClose(m.perClass.precision, c.precision, TOL, "precision");
    assertClose(m.perClass.recall, c.recall, TOL, "recall");
    assertClose(m.perClass.f1, c.f1, TOL, "f1");
    assertEquals(m.perClass.support, c.support, "support");
    assertEquals(m.confusion.matrix, c.confusion, "confusion");

    const z1 = precisionRecallF1(c.yTrue, c.yPred, { zeroDivision: 1 });
    assertClose(z1.precision, c.precisionZd1, TOL, "precision, zero_division=1");
    assertClose(z1.recall, c.recallZd1, TOL, "recall, zero_division=1");
    assertClose(z1.f1, c.f1Zd1, TOL, "f1, zero_division=1");
    assertClose([weightedF1(c.yTrue, c.yPred, { zeroDivision: 1 })], [c.weightedF1Zd1], TOL);
    assertClose([accuracy(c.yTrue, c.yPred)], [c.accuracy], TOL);
    assertClose([balancedAccuracy(c.yTrue, c.yPred)], [c.balancedAccuracy], TOL);
  });
}

Deno.test("mean ± std over folds: population std (numpy ddof=0) by default, sample on request", () => {
  const s0 = meanStd(fixture.folds);
  assertClose([s0.mean, s0.std], [fixture.foldMean, fixture.foldStd], TOL);
  const s1 = meanStd(fixture.folds, 1);
  assertClose([s1.std], [fixture.foldStdDdof1], TOL);
  assertThrows(() => meanStd([]), RangeError, "no values");
  assertThrows(() => meanStd([1], 1), RangeError, "too few");
});

Deno.test("metrics reject unpaired or mixed-type labels", () => {
  assertThrows(() => accuracy(["a"], ["a", "b"]), RangeError, "y_true has 1 labels");
  assertThrows(() => classificationMetrics(["a", "b"], ["a", 1]), TypeError, "mix of string");
  assertThrows(
    () => confusionMatrix(["a", "b"], ["a", "c"], ["a", "b"]),
    RangeError,
    `y_pred[1] = "c" is not one of the classes`,
  );
});

Deno.test("report: JSON round-trips and the Markdown table reads like the paper's", () => {
  const yTrue = ["a", "a", "b", "b", "c"];
  // Per class (P, R, F1): a (1, 1/2, 2/3), b (2/3, 1, 4/5), c (1, 1, 1): weighted F1 0.787.
  const single = reportRow(
    "DinoBloom-S",
    "1-NN",
    classificationMetrics(yTrue, ["a", "b", "b", "b", "c"]),
  );
  const folds = [
    classificationMetrics(yTrue, ["a", "a", "b", "b", "c"]),
    classificationMetrics(yTrue, ["a", "b", "b", "a", "c"]),
  ];
  const cv = reportRow("DinoBloom|S", "ABMIL", folds);
  // Fold accuracies 1.0 and 0.6: mean 0.8, population std 0.2.
  assertClose([cv.accuracy.mean, cv.accuracy.std], [0.8, 0.2], TOL);
  const report = { title: "Acevedo", rows: [single, cv], meta: { seed: 42 } };
  assertEquals(JSON.parse(reportJson(report)), report);
  const md = markdownTable(report);
  const lines = md.trim().split("\n");
  assertStrictEquals(lines[2], "| Method | Protocol | Acc | Bal. acc | Weighted F1 |");
  assertStrictEquals(lines[4], "| DinoBloom-S | 1-NN | 80.0 | 83.3 | 78.7 |");
  assertStrictEquals(lines[5].startsWith("| DinoBloom\\|S | ABMIL | 80.0 ± 20.0 |"), true);
  const pc = perClassTable(single.runs[0]).trim().split("\n");
  assertStrictEquals(pc[2], "| a | 100.0 | 50.0 | 66.7 | 2 |");
});

Deno.test("evaluateEmbeddings: kNN and probe rows score scikit-learn's predictions", async () => {
  const lr = (await readFixture("eval/logreg.json")).cases[0];
  const train = matrix(Float32Array.from(lr.train), lr.n, lr.m);
  const test = matrix(Float32Array.from(lr.test), lr.test.length / lr.m, lr.m);
  const stages: string[] = [];
  const { results, rows } = await evaluateEmbeddings(train, lr.labels, test, lr.testLabels, {
    method: "fixture",
    onStage: (s) => stages.push(s),
  });
  assertEquals(rows.map((r) => r.protocol), ["1-NN", "20-NN", "linear probe"]);
  assertEquals(stages.length, 2);
  // The probe predicts what scikit-learn predicted, so its row is sklearn's score.
  assertEquals(results[2].predictions, lr.sklearn.predict);
  assertClose([rows[2].accuracy.mean], [lr.sklearn.testAccuracy], TOL, "probe accuracy");
  const knn = new KNeighborsClassifier(train, lr.labels);
  for (const [i, k] of [[0, 1], [1, 20]]) {
    const want = classificationMetrics(lr.testLabels, await knn.predict(test, k));
    assertClose([rows[i].weightedF1.mean], [want.weightedF1], TOL, `${k}-NN weighted F1`);
  }
});
