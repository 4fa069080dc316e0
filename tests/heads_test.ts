/**
 * Saved heads (eval/head_file.ts, probe.ts, knn_index.ts, mil_head.ts):
 *
 * - a probe round-trips bit for bit (weights, predictions, probabilities equal
 *   the fitted model's exactly), with and without standardisation;
 * - a kNN reference set round-trips copied and as a pointer to its features
 *   file; its votes equal KNeighborsClassifier's, its nearest distances and
 *   OOD threshold (the 0.99 quantile of leave-one-out nearest distances)
 *   equal a direct computation; a pointer to a changed file is refused;
 * - a MIL head's CPU forward gives PyTorch's logits (tests/fixtures/eval/mil.json,
 *   the reference's weights and bags; atol 2e-5, as the GPU forward), its
 *   attention sums to 1 over the bag, and it round-trips;
 * - the embedding-model check refuses another architecture, weights hash or
 *   pooling, naming both models, and accepts a renamed checkpoint;
 * - corrupt, truncated, foreign and wrong-kind files are clear errors.
 */
import { join } from "node:path";
import { writeEmbeddings } from "../data/embeddings_file.ts";
import { openSafetensors, writeSafetensors } from "../data/safetensors.ts";
import {
  checkSameEmbedding,
  type EmbeddingModel,
  embeddingModelFromMeta,
  HeadFileError,
  headKindOf,
  HeadMismatchError,
} from "../eval/head_file.ts";
import { KNeighborsClassifier } from "../eval/knn.ts";
import { KnnIndex, quantile } from "../eval/knn_index.ts";
import { LogisticRegression } from "../eval/logreg.ts";
import { matrix } from "../eval/matrix.ts";
import { MilHead } from "../eval/mil_head.ts";
import type { MilHeadKind } from "../eval/mil.ts";
import { Probe } from "../eval/probe.ts";
import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { readFixture } from "./fixtures.ts";
import { Rng } from "./helpers.ts";

const dir = await Deno.makeTempDir({ prefix: "bloom-heads-" });

const MODEL: EmbeddingModel = {
  arch: "vit_small",
  weights: "DinoBloom-S.pth",
  weightsSha256: "a".repeat(64),
  pool: "cls",
  inputSize: 224,
  dim: 10,
};

/** Three Gaussian classes in 10-d. */
function blobs(seed: number, rows: number) {
  const rng = new Rng(seed);
  const means = new Rng(1).normals(30, 2);
  const data = new Float32Array(rows * 10);
  const labels: string[] = [];
  for (let i = 0; i < rows; i++) {
    const k = i % 3;
    for (let j = 0; j < 10; j++) data[i * 10 + j] = means[k * 10 + j] + rng.normal();
    labels.push(["eosinophil", "lymphocyte", "neutrophil"][k]);
  }
  return { x: matrix(data, rows, 10), labels };
}

const train = blobs(2, 60);
const test = blobs(3, 25);

Deno.test("probe: save → load predicts exactly what the fitted model does", async () => {
  const lr = LogisticRegression.fit(train.x, train.labels);
  const probe = Probe.fromModel(lr, MODEL, { trainedOn: { file: "train.safetensors" } });
  const path = join(dir, "probe.safetensors");
  await probe.save(path);
  assertEquals(await headKindOf(path), "probe");
  const back = await Probe.load(path);
  assertEquals([...back.model.coef], [...lr.coef]);
  assertEquals([...back.model.intercept], [...lr.intercept]);
  assertEquals(back.C, lr.C);
  assertEquals(back.classes, lr.classes);
  assertEquals(back.embedding, MODEL);
  assertEquals(back.trainedOn, { file: "train.safetensors" });
  assertEquals(back.minConfidence, 0.5);
  const p = back.predict(test.x);
  assertEquals(p.labels, lr.predict(test.x));
  assertEquals([...p.proba], [...lr.predictProba(test.x)]);
  for (let i = 0; i < test.x.rows; i++) {
    assertEquals(p.confidence[i], p.proba[i * 3 + p.codes[i]]);
    assertEquals(p.classes[p.codes[i]], p.labels[i]);
  }
  assertThrows(() => back.predict(matrix(new Float32Array(9), 1, 9)), RangeError, "10-d");
});

Deno.test("probe: standardised features round-trip too", async () => {
  const probe = await Probe.fit(train.x, train.labels, MODEL, { standardize: true });
  assert(probe.scaler, "scaler fitted");
  const path = join(dir, "probe_std.safetensors");
  await probe.save(path);
  const back = await Probe.load(path);
  assertEquals([...back.scaler!.mean], [...probe.scaler.mean]);
  assertEquals([...back.scaler!.scale], [...probe.scaler.scale]);
  assertEquals([...back.predictProba(test.x)], [...probe.predictProba(test.x)]);
  // z-scored columns: mean 0, population std 1 on the training rows.
  const m = probe.scaler.mean;
  for (let j = 0; j < 10; j++) {
    let s = 0;
    for (let i = 0; i < 60; i++) s += train.x.data[i * 10 + j];
    assertClose([m[j]], [s / 60], { rtol: 0, atol: 1e-12 });
  }
});

Deno.test("knn index: votes, nearest distances and the OOD threshold; copy and pointer forms", async () => {
  const index = await KnnIndex.build(train.x, train.labels, MODEL, { k: 5 });
  const q = await index.query(test.x);
  const clf = new KNeighborsClassifier(train.x, train.labels);
  assertEquals(q.labels, await clf.predict(test.x, 5));
  const [nb] = await clf.kneighbors(test.x, [5]);
  assertEquals([...q.proba], [...clf.voteProba(nb)]);
  // Nearest distance, directly.
  const dist = (
    a: Float32Array | Float64Array,
    i: number,
    b: Float32Array | Float64Array,
    j: number,
  ) => {
    let s = 0;
    for (let t = 0; t < 10; t++) s += (a[i * 10 + t] - b[j * 10 + t]) ** 2;
    return Math.sqrt(s);
  };
  for (let i = 0; i < test.x.rows; i++) {
    let best = Infinity;
    for (let j = 0; j < 60; j++) best = Math.min(best, dist(test.x.data, i, train.x.data, j));
    assertClose([q.nearestDistance[i]], [best], { rtol: 1e-9, atol: 1e-9 }, `nearest of ${i}`);
  }
  // Threshold: 0.99 quantile of each reference cell's distance to its nearest other cell.
  const own = Array.from({ length: 60 }, (_, i) => {
    let best = Infinity;
    for (let j = 0; j < 60; j++) {
      if (j !== i) best = Math.min(best, dist(train.x.data, i, train.x.data, j));
    }
    return best;
  });
  assertClose([index.ood.threshold], [quantile(own, 0.99)], { rtol: 1e-9, atol: 1e-9 });
  assertEquals(quantile([1, 2, 3, 4], 0.5), 2.5, "numpy's linear quantile");
  // Copy form.
  await index.save(join(dir, "knn.safetensors"));
  const copy = await KnnIndex.load(join(dir, "knn.safetensors"));
  assertEquals(copy.k, 5);
  assertEquals(copy.ood, index.ood);
  assertEquals((await copy.query(test.x)).labels, q.labels);
  // Pointer form: rows 0..59 of a 70-row features file.
  const big = blobs(2, 70);
  const feats = join(dir, "train_feats.safetensors");
  await writeEmbeddings(feats, {
    features: big.x.data as Float32Array,
    dim: 10,
    paths: big.labels.map((_, i) => `c${i}.png`),
    labels: big.labels,
  });
  const rows = Array.from({ length: 60 }, (_, i) => i);
  await index.save(join(dir, "knn_ptr.safetensors"), { pointer: { file: feats, rows } });
  const ptr = await KnnIndex.load(join(dir, "knn_ptr.safetensors"));
  assertEquals([...ptr.reference.data], [...train.x.data]);
  assertEquals(ptr.pointer?.rows, rows);
  assertEquals((await ptr.query(test.x)).labels, q.labels);
  // The pointed-to file changes: refused, naming it.
  await writeEmbeddings(feats, {
    features: blobs(9, 70).x.data as Float32Array,
    dim: 10,
    paths: big.labels.map((_, i) => `c${i}.png`),
  });
  await assertRejects(
    () => KnnIndex.load(join(dir, "knn_ptr.safetensors")),
    HeadFileError,
    "has changed since the head was saved",
  );
});

const mil = await readFixture("eval/mil.json");

for (const kind of ["multicolumn", "gated"] as MilHeadKind[]) {
  Deno.test(`mil head ${kind}: CPU forward gives PyTorch's logits; attention sums to 1; round trip`, async () => {
    const shape = {
      kind,
      dim: mil.dim,
      classes: mil.classes,
      attentionHidden: mil.attentionHidden,
      classifierHidden: mil.classifierHidden,
    };
    const params = new Map<string, Float32Array>(
      Object.entries(mil.heads[kind].init as Record<string, number[]>).map(([k, v]) => [
        k,
        Float32Array.from(v),
      ]),
    );
    const classes = Array.from({ length: mil.classes }, (_, i) => `subtype${i}`);
    const model = { ...MODEL, dim: mil.dim };
    const head = new MilHead({ shape, classes, embedding: model, params });
    mil.bags.forEach((bag: number[], b: number) => {
      const out = head.predictBag(Float32Array.from(bag), bag.length / mil.dim);
      assertClose(out.logits, mil.heads[kind].logits[b], { atol: 2e-5, rtol: 1e-4 }, `bag ${b}`);
      assertClose([out.attention.reduce((a, v) => a + v, 0)], [1], { rtol: 0, atol: 1e-12 });
      assertClose([out.proba.reduce((a, v) => a + v, 0)], [1], { rtol: 0, atol: 1e-12 });
      assertEquals(out.label, classes[out.code]);
    });
    const path = join(dir, `mil_${kind}.safetensors`);
    await head.save(path);
    const back = await MilHead.load(path);
    assertEquals(back.shape, shape);
    for (const [k, v] of params) assertEquals([...back.params.get(k)!], [...v], k);
    const bag = Float32Array.from(mil.bags[0]);
    assertEquals(
      [...back.predictBag(bag, bag.length / mil.dim).proba],
      [...head.predictBag(bag, bag.length / mil.dim).proba],
    );
  });
}

Deno.test("embedding check: another arch, weights or pooling is refused naming both", () => {
  const input = { ...MODEL };
  assertEquals(checkSameEmbedding("h.safetensors", MODEL, "x.safetensors", input), []);
  // A renamed checkpoint with the same hash is the same model.
  checkSameEmbedding("h", MODEL, "x", { ...MODEL, weights: "renamed.pth" });
  const e = assertThrows(
    () =>
      checkSameEmbedding("h.safetensors", MODEL, "--weights DinoBloom-B.pth", {
        ...MODEL,
        arch: "vit_base",
        weights: "DinoBloom-B.pth",
        weightsSha256: "b".repeat(64),
      }),
    HeadMismatchError,
  );
  for (
    const s of ["vit_small DinoBloom-S.pth", "vit_base DinoBloom-B.pth", "architecture", "weights"]
  ) {
    assert(e.message.includes(s), `${s}: ${e.message}`);
  }
  assertThrows(
    () => checkSameEmbedding("h", MODEL, "x", { ...MODEL, pool: "mean" }),
    HeadMismatchError,
    "pooling cls ≠ mean",
  );
  assertThrows(
    () => checkSameEmbedding("h", MODEL, "x", { ...MODEL, dim: 12 }),
    HeadMismatchError,
    "dimension 10 ≠ 12",
  );
  // What the input does not record cannot be checked: reported, not refused.
  const unknown = embeddingModelFromMeta({}, 10);
  assertEquals(checkSameEmbedding("h", MODEL, "x", unknown), [
    "architecture",
    "weights",
    "pooling",
    "input size",
  ]);
  assertEquals(
    embeddingModelFromMeta(
      { arch: "vit_small", weights: "/ckpt/DinoBloom-S.pth", pool: "cls", "bloom.size": "224" },
      384,
    ),
    {
      arch: "vit_small",
      weights: "DinoBloom-S.pth",
      weightsSha256: null,
      pool: "cls",
      inputSize: 224,
      dim: 384,
    },
  );
});

Deno.test("head files: corrupt, truncated, foreign and wrong-kind files are clear errors", async () => {
  const lr = LogisticRegression.fit(train.x, train.labels);
  const good = join(dir, "good.safetensors");
  await Probe.fromModel(lr, MODEL).save(good);
  const bytes = await Deno.readFile(good);
  const truncated = join(dir, "truncated.safetensors");
  await Deno.writeFile(truncated, bytes.subarray(0, bytes.length - 17));
  await assertRejects(() => Probe.load(truncated), HeadFileError, "not a readable head file");
  const garbage = join(dir, "garbage.safetensors");
  await Deno.writeFile(garbage, new TextEncoder().encode("this is not a head"));
  await assertRejects(() => Probe.load(garbage), HeadFileError, garbage);
  await assertRejects(() => Probe.load(join(dir, "missing.safetensors")), HeadFileError, "missing");
  // An embeddings file is safetensors but not a head.
  const feats = join(dir, "feats.safetensors");
  await writeEmbeddings(feats, { features: new Float32Array(10), dim: 10, paths: ["a.png"] });
  await assertRejects(() => Probe.load(feats), HeadFileError, "not a bloom head");
  // A kNN head where a probe is wanted.
  const knn = join(dir, "k.safetensors");
  await (await KnnIndex.build(train.x, train.labels, MODEL, { k: 3 })).save(knn);
  await assertRejects(() => Probe.load(knn), HeadFileError, "holds a knn head, not a probe head");
  // A probe whose weights hold a NaN, or whose coef has the wrong shape.
  const f = await openSafetensors(good);
  const md = { ...f.metadata };
  f.close();
  const nan = new Float64Array(30).fill(0.1);
  nan[7] = NaN;
  await writeSafetensors(join(dir, "nan.safetensors"), {
    coef: { dtype: "f64", shape: [3, 10], data: nan },
    intercept: { dtype: "f64", shape: [3], data: new Float64Array(3) },
  }, md);
  await assertRejects(() => Probe.load(join(dir, "nan.safetensors")), HeadFileError, "coef");
  await writeSafetensors(join(dir, "shape.safetensors"), {
    coef: { dtype: "f64", shape: [3, 9], data: new Float64Array(27) },
    intercept: { dtype: "f64", shape: [3], data: new Float64Array(3) },
  }, md);
  await assertRejects(
    () => Probe.load(join(dir, "shape.safetensors")),
    HeadFileError,
    "shape [3,9] is not [3,10]",
  );
  await writeSafetensors(join(dir, "emb.safetensors"), {
    coef: { dtype: "f64", shape: [3, 10], data: new Float64Array(30) },
  }, { ...md, embedding: "{not json" });
  await assertRejects(() => Probe.load(join(dir, "emb.safetensors")), HeadFileError, "embedding");
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch { /* already gone */ }
});
