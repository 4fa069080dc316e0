/**
 * Silhouettes and the batch-effect report against scikit-learn 1.2
 * (tests/fixtures/eval/batch_effects.json, made by
 * scripts/fixtures/batch_effects.py): `silhouette_samples` and
 * `silhouette_score` (sources and cell types as clusters, a single-cell
 * cluster, two identical cells, a sampled score) within 1e-10, and
 * `cross_val_predict(KNeighborsClassifier)` for the source and the cell type
 * exactly; then the report built on them: per-source means of those
 * silhouettes, accuracies from those predictions, and the verdicts (the
 * shifted site separates by source, the others by cell type).
 */
import { batchEffects, batchEffectsMarkdown, outOfFoldKnn } from "../eval/batch_effects.ts";
import { matrix } from "../eval/matrix.ts";
import { silhouetteSamples, silhouetteScore } from "../eval/silhouette.ts";
import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { readFixture } from "./fixtures.ts";

const fx = await readFixture("eval/batch_effects.json");
const x = matrix(Float32Array.from(fx.x as number[]), fx.rows, fx.dim);
const TOL = { rtol: 0, atol: 1e-10 };

Deno.test("silhouette_samples and silhouette_score equal scikit-learn's", () => {
  assertClose(silhouetteSamples(x, fx.sources), fx.sil_sources, TOL, "by source");
  assertClose(silhouetteSamples(x, fx.labels), fx.sil_labels, TOL, "by cell type");
  const single = silhouetteSamples(x, fx.single);
  assertClose(single, fx.sil_single, TOL, "with a one-cell cluster");
  assertEquals(single[10], 0, "a one-cell cluster scores 0");
  assertClose([silhouetteScore(x, fx.labels)], [fx.score_labels], TOL, "score");
  assertClose(
    [silhouetteScore(x, fx.labels, { sampleSize: 40, seed: 3 })],
    [fx.score_sampled],
    TOL,
    "sampled score (RandomState(3).permutation(n)[:40])",
  );
  assertThrows(() => silhouetteSamples(x, fx.labels.map(() => "one")), RangeError, "between 2");
});

Deno.test("out-of-fold kNN predictions equal cross_val_predict(KNeighborsClassifier)", async () => {
  const opts = { k: fx.k, folds: 5, seed: 42 };
  assertEquals(await outOfFoldKnn(x, fx.sources, opts), fx.oof_sources);
  assertEquals(await outOfFoldKnn(x, fx.labels, opts), fx.oof_labels);
});

Deno.test("batch-effect report: per-source silhouettes, accuracies and one verdict per source", async () => {
  const r = await batchEffects(x, fx.labels, fx.sources, { k: fx.k, folds: 5, seed: 42 });
  const n = fx.rows as number;
  const mean = (v: number[], keep: (i: number) => boolean) => {
    const sel = v.filter((_, i) => keep(i));
    return sel.reduce((a, b) => a + b, 0) / sel.length;
  };
  assertClose([r.sourceSilhouette], [mean(fx.sil_sources, () => true)], TOL);
  assertClose([r.labelSilhouette], [fx.score_labels], TOL);
  const hits = (pred: string[], truth: string[], keep: (i: number) => boolean) =>
    pred.filter((p, i) => keep(i) && p === truth[i]).length;
  assertEquals(r.sourceAccuracy, hits(fx.oof_sources, fx.sources, () => true) / n);
  assertEquals(r.labelAccuracy, hits(fx.oof_labels, fx.labels, () => true) / n);
  assertEquals(r.sources.map((s) => s.source), ["siteA", "siteB", "siteC"]);
  for (const s of r.sources) {
    const mine = (i: number) => fx.sources[i] === s.source;
    assertEquals(s.cells, fx.sources.filter((v: string) => v === s.source).length);
    assertClose([s.sourceSilhouette], [mean(fx.sil_sources, mine)], TOL, s.source);
    assertClose([s.labelSilhouette], [mean(fx.sil_labels, mine)], TOL, s.source);
    assertEquals(s.sourceRecall, hits(fx.oof_sources, fx.sources, mine) / s.cells);
    assertEquals(s.labelAccuracy, hits(fx.oof_labels, fx.labels, mine) / s.cells);
    assertEquals(s.chance, s.cells / n);
  }
  const byName = Object.fromEntries(r.sources.map((s) => [s.source, s]));
  assert(byName.siteC.separatesBySource, byName.siteC.verdict);
  assert(
    byName.siteC.verdict.startsWith("siteC: embeddings separate by source more than by cell type"),
  );
  assert(!byName.siteA.separatesBySource, byName.siteA.verdict);
  assert(byName.siteA.verdict.includes("separate by cell type more than by source"));
  const md = batchEffectsMarkdown(r);
  assertEquals(md.split("\n").filter((l) => /^- site[ABC]: /.test(l)).length, 3, md);
  // A sample smaller than the set: the silhouettes are those of scikit-learn on the sample.
  const sampled = await batchEffects(x, fx.labels, fx.sources, {
    k: fx.k,
    folds: 5,
    seed: 3,
    sampleSize: 40,
  });
  assertEquals(sampled.silhouetteCells, 40);
  assertClose([sampled.labelSilhouette], [fx.score_sampled], TOL, "sampled");
});

Deno.test("batch effects need two sources and two cell types", async () => {
  await assertRejects(
    () => batchEffects(x, fx.labels, fx.labels.map(() => "siteA")),
    RangeError,
    "at least 2 sources",
  );
  await assertRejects(
    () => batchEffects(x, fx.labels.map(() => "x"), fx.sources),
    RangeError,
    "2 cell types",
  );
});
