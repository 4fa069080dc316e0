/**
 * Classifying the page's cells with the evaluation's own estimators: kNN
 * (eval/knn.ts, scikit-learn's `KNeighborsClassifier`, Euclidean, uniform
 * votes) against a labelled reference, or the linear probe (eval/logreg.ts,
 * scikit-learn's multinomial `LogisticRegression`) trained on it. Pure, so
 * the page and the tests run the same code.
 *
 * The reference may hold the very cells being classified (a labelled folder
 * dropped on the page is both): a cell must not vote for itself, so
 * - kNN leaves it out (leave-one-out): it searches k + 1 neighbours and drops
 *   the cell's own row (or, when an exact duplicate took its place, the
 *   farthest one);
 * - the probe is cross-fitted: labelled cells are dealt into `folds` folds and
 *   each fold is predicted by a probe trained without it.
 * Without such rows (a reference embeddings file), both are exactly the
 * estimators' `predict`.
 */
import { KNeighborsClassifier, type Neighbors } from "../eval/knn.ts";
import { type Label, uniqueSorted } from "../eval/labels.ts";
import { LogisticRegression } from "../eval/logreg.ts";
import { type Matrix, matrix, takeRows } from "../eval/matrix.ts";

/** Labelled embeddings the cells are compared with. */
export interface Reference {
  /** [rows, dim] row-major. */
  features: Float32Array;
  dim: number;
  labels: string[];
}

/** One prediction per query row. */
export interface Predictions {
  labels: string[];
  /** kNN: the predicted class's share of the votes; probe: its probability. */
  confidence: Float64Array;
  /** The classes the classifier knows, sorted. */
  classes: string[];
  /** What was used (for the page and the predictions file). */
  method: string;
}

function referenceMatrix(ref: Reference): Matrix {
  return matrix(ref.features, ref.labels.length, ref.dim, "reference features");
}

function checkSelf(self: Int32Array | undefined, queries: number, refRows: number): void {
  if (!self) return;
  if (self.length !== queries) {
    throw new RangeError(`classify: ${self.length} self rows for ${queries} queries`);
  }
  for (const r of self) {
    if (r < -1 || r >= refRows) {
      throw new RangeError(`classify: self row ${r} outside the reference`);
    }
  }
}

/**
 * kNN with `k` neighbours. `self[i]` is the reference row that is query i
 * itself, or -1; such rows are left out of that query's neighbours. `k` is
 * capped at the neighbours available (reference rows, less one with `self`).
 */
export async function knnPredict(
  queries: Matrix,
  ref: Reference,
  k: number,
  self?: Int32Array,
): Promise<Predictions> {
  const train = referenceMatrix(ref);
  checkSelf(self, queries.rows, train.rows);
  const loo = self?.some((r) => r >= 0) ?? false;
  const available = train.rows - (loo ? 1 : 0);
  if (available < 1) {
    throw new RangeError("kNN needs at least one labelled reference cell besides the cell itself");
  }
  const kk = Math.min(k, available);
  const clf = new KNeighborsClassifier(train, ref.labels);
  const search = Math.min(kk + (loo ? 1 : 0), train.rows);
  const [nb] = await clf.kneighbors(queries, [search]);
  const kept: Neighbors = {
    k: kk,
    indices: new Int32Array(queries.rows * kk),
    distances: new Float64Array(queries.rows * kk),
  };
  for (let q = 0; q < queries.rows; q++) {
    const row = Array.from(nb.indices.subarray(q * search, (q + 1) * search));
    const dist = Array.from(nb.distances.subarray(q * search, (q + 1) * search));
    const own = self?.[q] ?? -1;
    if (search > kk) {
      // Drop the cell's own row, else the farthest (a duplicate stood in for it).
      const at = own >= 0 ? row.indexOf(own) : -1;
      const drop = at >= 0 ? at : search - 1;
      row.splice(drop, 1);
      dist.splice(drop, 1);
    }
    kept.indices.set(row.slice(0, kk), q * kk);
    kept.distances.set(dist.slice(0, kk), q * kk);
  }
  const codes = clf.vote(kept);
  const proba = clf.voteProba(kept);
  const c = clf.classes.length;
  return {
    labels: Array.from(codes, (i) => String(clf.classes[i])),
    confidence: Float64Array.from(codes, (code, q) => proba[q * c + code]),
    classes: clf.classes.map(String),
    method: `kNN, k = ${kk}${loo ? " (each labelled cell left out of its own vote)" : ""}`,
  };
}

function fitProbe(x: Matrix, labels: readonly Label[]): LogisticRegression {
  if (new Set(labels).size < 2) {
    throw new RangeError(
      "the linear probe needs labelled cells of at least two types (one folder per type)",
    );
  }
  return LogisticRegression.fit(x, labels);
}

/** Writes the probe's predictions for `rows` of `queries` into `labels` and `confidence`. */
function predictInto(
  probe: LogisticRegression,
  queries: Matrix,
  rows: readonly number[],
  labels: string[],
  confidence: Float64Array,
): void {
  if (rows.length === 0) return;
  const x = takeRows(queries, rows);
  const pred = probe.predict(x);
  const proba = probe.predictProba(x);
  const c = probe.classes.length;
  rows.forEach((q, i) => {
    labels[q] = String(pred[i]);
    confidence[q] = proba[i * c + probe.classes.indexOf(pred[i])];
  });
}

/**
 * The linear probe (scikit-learn's C = dim·classes/100, as the evaluation)
 * trained on the reference. Queries that are reference rows (`self`) are
 * predicted by a probe trained without their fold.
 */
export function probePredict(
  queries: Matrix,
  ref: Reference,
  self?: Int32Array,
  folds = 5,
): Predictions {
  const train = referenceMatrix(ref);
  checkSelf(self, queries.rows, train.rows);
  const labels = new Array<string>(queries.rows);
  const confidence = new Float64Array(queries.rows);
  const outside: number[] = [];
  const inside: number[] = [];
  for (let q = 0; q < queries.rows; q++) ((self?.[q] ?? -1) >= 0 ? inside : outside).push(q);
  const all = Array.from({ length: train.rows }, (_, i) => i);
  const classes = uniqueSorted(ref.labels, "reference labels").map(String);
  if (outside.length || inside.length === 0) {
    predictInto(fitProbe(train, ref.labels), queries, outside, labels, confidence);
  }
  const nFolds = Math.min(folds, inside.length);
  for (let f = 0; f < nFolds; f++) {
    const held = inside.filter((_, i) => i % nFolds === f);
    const out = new Set(held.map((q) => self![q]));
    const rows = all.filter((r) => !out.has(r));
    const probe = fitProbe(takeRows(train, rows), rows.map((r) => ref.labels[r]));
    predictInto(probe, queries, held, labels, confidence);
  }
  return {
    labels,
    confidence,
    classes,
    method: `linear probe${
      inside.length ? `, ${nFolds}-fold cross-fitted on the labelled cells` : ""
    }`,
  };
}
