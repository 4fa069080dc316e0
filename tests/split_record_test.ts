/**
 * Splits carried from ingest to eval (eval/split_record.ts, eval/run.ts,
 * eval/saved_heads.ts, eval/report.ts), on small embeddings files written
 * directly (no GPU):
 * - the membership hash is SHA-256 of the sorted `id<TAB>split` lines
 *   (checked against node:crypto), independent of row order;
 * - eval tests on the rows the file marks `test` and records the file's
 *   origin and the hash; a file without a split gets eval's own 80/20 split
 *   and a report that says so, with seed and fractions; `--resplit` too;
 * - `--load` scores a file's test rows and flags a file whose split is not
 *   the heads' own;
 * - a class absent from the test rows keeps its per-class row (support 0);
 * - a manifest whose split record is damaged is refused, naming the field.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { writeEmbeddings } from "../data/embeddings_file.ts";
import { perClassTable } from "../eval/report.ts";
import { runEval } from "../eval/run.ts";
import { evaluateSavedHeads } from "../eval/saved_heads.ts";
import { carriedSplit, splitRecord, splitSha256 } from "../eval/split_record.ts";
import { MANIFEST_FORMAT, MANIFEST_VERSION, readManifest } from "../pipelines/dataset/manifest.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { Rng } from "./helpers.ts";

Deno.test("split hash: SHA-256 of the sorted id<TAB>split lines, whatever the row order", async () => {
  const ids = ["b", "a", "c", "a2"];
  const splits = ["train", "test", "train", "val"];
  const lines = ["a\ttest\n", "a2\tval\n", "b\ttrain\n", "c\ttrain\n"].join("");
  const want = createHash("sha256").update(lines).digest("hex");
  assertEquals(await splitSha256(ids, splits), want);
  assertEquals(await splitSha256([...ids].reverse(), [...splits].reverse()), want);
  // Moving one row to the other side changes it.
  assert(want !== await splitSha256(ids, ["train", "train", "train", "val"]));
  const r = await splitRecord("somewhere", ids, splits);
  assertEquals(r.rows, { test: 1, train: 2, val: 1 });
  assertEquals(carriedSplit(splits), { train: [0, 2], test: [1], other: [3] });
  assertEquals(carriedSplit(["all", "all"]), null);
});

/**
 * 60 cells of three classes in 6-d, row i labelled by i % 3; `splits` per row or none; only
 * the rows `keep` keeps (a file of part of the cells).
 */
async function file(
  path: string,
  splits: string[] | null,
  labels?: string[],
  keep: (row: number) => boolean = () => true,
) {
  const rng = new Rng(3);
  const rows = 60;
  const lab = labels ?? Array.from({ length: rows }, (_, i) => ["neu", "lym", "mon"][i % 3]);
  const features = new Float32Array(rows * 6);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < 6; j++) {
      features[i * 6 + j] = (j === ["neu", "lym", "mon", "eos"].indexOf(lab[i]) ? 3 : 0) +
        rng.normal();
    }
  }
  const kept = lab.flatMap((_, i) => (keep(i) ? [i] : []));
  await writeEmbeddings(path, {
    features: Float32Array.from(kept.flatMap((i) => [...features.subarray(i * 6, i * 6 + 6)])),
    dim: 6,
    paths: kept.map((i) => `${lab[i]}/cell${i}.png`),
    labels: kept.map((i) => lab[i]),
    splits: splits && kept.map((i) => splits[i]),
    keys: splits ? kept.map((i) => `${lab[i]}_cell${i}`) : null,
    meta: {
      arch: "vit_small",
      weights: "w.pth",
      extra: splits ? { "bloom.split": "ingest manifest data/x: stratified 75/25, seed 1" } : {},
    },
  });
}

const opts = {
  protocols: ["knn" as const, "linear" as const],
  threads: 1,
  seed: 42,
  device: "cpu" as const,
  mil: { epochs: 1, lr: 1e-3, patience: 1, valFraction: 0 },
  quiet: true,
};

Deno.test("eval tests on the rows the file marks test, and says where the split came from", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-split-" });
  try {
    // Rows 0–44 train, 45–59 test, the last two rows "val" (left out).
    const splits = Array.from({ length: 60 }, (_, i) => i < 45 ? "train" : i < 58 ? "test" : "val");
    const carried = join(dir, "carried.safetensors");
    await file(carried, splits);
    const r = await runEval({ ...opts, train: carried, save: join(dir, "heads") });
    const keys = Array.from({ length: 60 }, (_, i) => `${["neu", "lym", "mon"][i % 3]}_cell${i}`);
    assertEquals(r.split?.origin, "ingest manifest data/x: stratified 75/25, seed 1");
    assertEquals(r.split?.sha256, await splitSha256(keys, splits));
    assertEquals(r.split?.rows, { test: 13, train: 45, val: 2 });
    for (const row of r.rows) assertEquals(row.runs[0].n, 13, row.protocol);
    assert(String(r.meta?.split).includes("2 rows of other splits (val) left out"));

    // --load on the same file: its test rows, no warning; the numbers are eval's.
    const same = await evaluateSavedHeads({ heads: join(dir, "heads"), test: carried });
    assertEquals(same.split?.sha256, r.split?.sha256);
    assertEquals(same.meta?.["split.warning"], undefined);
    const probe = (x: typeof r) => x.rows.find((row) => row.protocol === "linear probe")!;
    assertEquals(probe(same).runs[0].n, 13);
    assertEquals(probe(same).accuracy.mean, probe(r).accuracy.mean);

    // Another split of the same cells: flagged.
    const other = join(dir, "other.safetensors");
    await file(other, splits.map((_, i) => (i < 15 ? "test" : "train")));
    const flagged = await evaluateSavedHeads({ heads: join(dir, "heads"), test: other });
    assert(
      String(flagged.meta?.["split.warning"]).includes("was trained on another split"),
      String(flagged.meta?.["split.warning"]),
    );

    // No split in the file: eval's own, named with seed, fractions and why.
    const plain = join(dir, "plain.safetensors");
    await file(plain, null);
    const own = await runEval({ ...opts, train: plain });
    assertEquals(
      own.split?.origin,
      "eval: stratified 80/20, seed 42 (plain.safetensors carries no split)",
    );
    assertEquals(own.split?.rows, { test: 12, train: 48 });
    // --resplit ignores a carried split.
    const re = await runEval({ ...opts, train: carried, resplit: true });
    assertEquals(re.split?.origin, "eval: stratified 80/20, seed 42 (--resplit)");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--test files and --folds record their split; an ingest's two halves hash as its split", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-split-" });
  try {
    const splits = Array.from({ length: 60 }, (_, i) => (i < 45 ? "train" : "test"));
    const whole = join(dir, "whole.safetensors");
    const [tr, te] = [join(dir, "train.safetensors"), join(dir, "test.safetensors")];
    await file(whole, splits);
    await file(tr, splits, undefined, (i) => i < 45);
    await file(te, splits, undefined, (i) => i >= 45);
    // The carried split of one file, and its train and test cells as two files (as embedding
    // ingest's two shards gives): the same membership, so the same hash and the same numbers.
    const carried = await runEval({ ...opts, train: whole });
    const files = await runEval({ ...opts, train: tr, test: te });
    assertEquals(files.split?.origin, `files: --train ${tr}, --test ${te}`);
    assertEquals(files.split?.rows, { test: 15, train: 45 });
    assertEquals(files.split?.sha256, carried.split?.sha256);
    assertEquals(
      files.rows.map((r) => [r.protocol, r.accuracy.mean]),
      carried.rows.map((r) => [r.protocol, r.accuracy.mean]),
    );
    // --folds: eval's own folds, named, each row's fold its membership.
    const folds = await runEval({ ...opts, train: whole, folds: 3, protocols: ["knn"] });
    assertEquals(
      folds.split?.origin,
      "eval: 3-fold stratified cross-validation, seed 42 (--folds: the file's ingest split not used)",
    );
    assertEquals(folds.split?.rows, { fold1: 20, fold2: 20, fold3: 20 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("per-class tables keep a class the test rows lack (support 0)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-split-" });
  try {
    // "eos" only in training rows 0–3; the test rows (45–59) have none.
    const labels = Array.from(
      { length: 60 },
      (_, i) => i < 4 ? "eos" : ["neu", "lym", "mon"][i % 3],
    );
    const splits = Array.from({ length: 60 }, (_, i) => (i < 45 ? "train" : "test"));
    const path = join(dir, "e.safetensors");
    await file(path, splits, labels);
    const r = await runEval({ ...opts, train: path, protocols: ["knn"] });
    const run = r.rows[0].runs[0];
    assertEquals(run.labels, ["eos", "lym", "mon", "neu"]);
    assertEquals(run.support[0], 0);
    assertEquals(run.confusion.length, 4);
    const eos = perClassTable(run).split("\n").find((l) => l.startsWith("| eos |"))!;
    assert(/\| eos \| (–|[\d.]+) \| – \| – \| 0 \|/.test(eos), eos);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a manifest's split record is checked: origin and a 64-hex SHA-256", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-split-" });
  try {
    const base = {
      format: MANIFEST_FORMAT,
      version: MANIFEST_VERSION,
      classes: ["a"],
      size: 24,
      counts: {},
      shards: [],
    };
    const write = (split: unknown) =>
      Deno.writeTextFile(join(dir, "manifest.json"), JSON.stringify({ ...base, split }));
    await write({ origin: "stratified 80/20, seed 42", sha256: "ab".repeat(32), rows: {} });
    assertEquals((await readManifest(dir)).split?.origin, "stratified 80/20, seed 42");
    await write({ origin: "x", sha256: "not a hash" });
    await assertRejects(() => readManifest(dir), Error, "'split' must be an object");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
