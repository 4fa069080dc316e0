/**
 * `bloom predict` (pipelines/predict_run.ts, cli/predict.ts):
 *
 * - Round trip on generated cells: images → a tiny ViT (random weights,
 *   28 px) → `eval --save` trains the probe and kNN reference on one part
 *   → `predict` embeds the held-out part itself and predicts: every cell's
 *   class equals eval's test prediction exactly, and the probabilities equal
 *   scikit-learn's `LogisticRegression(C = M·c/100).predict_proba` (solved to
 *   its optimum) within 1e-5 (skipped without /usr/bin/python3 + sklearn). The same on the BCCD
 *   crops when ../shared/data is present (skipped otherwise).
 * - On a features file: rows equal the probe applied directly (bitwise, the
 *   csv keeps float64's shortest repr), far-away cells are flagged with the
 *   threshold stated in every row, the differential summary (csv, Markdown)
 *   counts each sample, and a run killed after one block resumes to a file
 *   identical to an uninterrupted run's.
 * - `embed --figures --color-by predicted --head` colours the UMAP by the
 *   saved probe's predictions (its legend counts are predict's).
 * - MIL heads: one row per patient with the head's probabilities and its 16
 *   most-attended cells, and a PNG grid of them.
 * - Bad input: a head from another model (named both), a features file of
 *   another width, a corrupt head file, a sample folder with no readable
 *   image (an errors.jsonl entry; the other samples still predicted).
 */
import { basename, join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import { CsvParser, readEmbeddings, writeEmbeddings } from "../data/embeddings_file.ts";
import { writeNpy } from "../data/npy.ts";
import type { EmbeddingModel } from "../eval/head_file.ts";
import { KnnIndex } from "../eval/knn_index.ts";
import { probeC } from "../eval/logreg.ts";
import { matrix } from "../eval/matrix.ts";
import { MilHead } from "../eval/mil_head.ts";
import { milInit } from "../eval/mil.ts";
import { Probe } from "../eval/probe.ts";
import { loadCheckpoint } from "../graph/checkpoint.ts";
import { getGpu } from "../kernels/runtime.ts";
import { runEmbed } from "../pipelines/embed_run.ts";
import { Interrupted } from "../pipelines/interrupt.ts";
import { runPredict } from "../pipelines/predict_run.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { writeTinyCheckpoint } from "./fixtures.ts";
import { hasPython, Rng, sharedData } from "./helpers.ts";

const PREDICT = new URL("../cli/predict.ts", import.meta.url).pathname;
const EVAL = new URL("../cli/eval.ts", import.meta.url).pathname;
const EMBED = new URL("../cli/embed.ts", import.meta.url).pathname;
const dec = new TextDecoder();
const sklearn = await hasPython("sklearn", "numpy");

async function cli(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A csv file as objects keyed by its header. */
async function readCsv(path: string): Promise<Record<string, string>[]> {
  const rows: string[][] = [];
  const p = new CsvParser((r) => rows.push(r));
  p.push(await Deno.readTextFile(path));
  p.end();
  const [head, ...body] = rows.filter((r) => !(r.length === 1 && r[0] === ""));
  return body.map((r) => Object.fromEntries(head.map((h, i) => [h, r[i]])));
}

/** Embeds a folder with the tiny model, as `embed` does. */
async function embedFolder(weights: string, input: string, out: string): Promise<void> {
  const gpu = await getGpu();
  const m = await loadCheckpoint(gpu, weights, { heads: 2 });
  try {
    await runEmbed(gpu, {
      model: { arena: m.arena, config: m.config },
      weights,
      input,
      out,
      size: 28,
      batch: 8,
      quiet: true,
      log: () => {},
      autotune: false,
    });
  } finally {
    m.arena.destroy();
  }
}

/**
 * scikit-learn's predict_proba for the probe eval fits (same C, same objective), solved to its
 * optimum (newton-cg, tol 1e-12), or null without python. scikit-learn's default lbfgs stops on
 * its relative-decrease rule, on the BCCD crops' tiny-ViT features 1.5e-5 from that optimum
 * (eval's probe: 4.6e-6), so the optimum is the oracle that tells the two objectives apart.
 */
async function sklearnProba(
  dir: string,
  train: { features: Float32Array; rows: number; dim: number; labels: string[] },
  test: { features: Float32Array; rows: number; dim: number },
): Promise<{ classes: string[]; proba: number[][] } | null> {
  if (!sklearn) return null;
  await writeNpy(join(dir, "sk_train.npy"), {
    dtype: "f32",
    shape: [train.rows, train.dim],
    data: train.features,
  });
  await writeNpy(join(dir, "sk_test.npy"), {
    dtype: "f32",
    shape: [test.rows, test.dim],
    data: test.features,
  });
  await Deno.writeTextFile(join(dir, "sk_labels.json"), JSON.stringify(train.labels));
  const C = probeC(train.dim, new Set(train.labels).size);
  const code = `
import json, sys, numpy as np
from sklearn.linear_model import LogisticRegression
d = sys.argv[1]
X = np.load(d + "/sk_train.npy").astype(np.float64)
y = np.array(json.load(open(d + "/sk_labels.json")))
T = np.load(d + "/sk_test.npy").astype(np.float64)
m = LogisticRegression(C=${C}, multi_class="multinomial", solver="newton-cg", tol=1e-12,
                       max_iter=10000).fit(X, y)
print(json.dumps({"classes": m.classes_.tolist(), "proba": m.predict_proba(T).tolist()}))`;
  const out = await new Deno.Command("/usr/bin/python3", {
    args: ["-c", code, dir],
    env: { OMP_NUM_THREADS: "1", OPENBLAS_NUM_THREADS: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, dec.decode(out.stderr));
  return JSON.parse(dec.decode(out.stdout));
}

/**
 * eval --save on `train` features (test: `heldout` features), then predict
 * on the held-out images: eval's test predictions exactly, sklearn's
 * probabilities within 1e-5.
 */
async function roundTrip(dir: string, weights: string, trainDir: string, heldoutDir: string) {
  await embedFolder(weights, trainDir, join(dir, "train.safetensors"));
  await embedFolder(weights, heldoutDir, join(dir, "heldout.safetensors"));
  const saved = join(dir, "heads");
  const ev = await cli(EVAL, [
    "--train",
    join(dir, "train.safetensors"),
    "--test",
    join(dir, "heldout.safetensors"),
    "--protocol",
    "knn,linear",
    "--threads",
    "1",
    "--save",
    saved,
    "--quiet",
  ]);
  assertEquals(ev.code, 0, ev.stderr);
  const evalPreds = await readCsv(join(saved, "test_predictions.csv"));
  const out = join(dir, "predictions.csv");
  const pr = await cli(PREDICT, [
    "--head",
    saved,
    "--input",
    heldoutDir,
    "--weights",
    weights,
    "--attention-heads",
    "2",
    "--out",
    out,
    "--summary",
    join(dir, "summary.md"),
    "--quiet",
    "--no-autotune",
  ]);
  assertEquals(pr.code, 0, pr.stderr);
  const rows = await readCsv(out);
  assertEquals(rows.length, evalPreds.length);
  const byPath = new Map(evalPreds.map((r) => [r.path, r]));
  for (const r of rows) {
    const want = byPath.get(r.path);
    assert(want, `${r.path} is not among eval's test cells`);
    assertEquals(r.predicted, want["linear probe"], r.path);
  }
  const train = await readEmbeddings(join(dir, "train.safetensors"));
  const held = await readEmbeddings(join(dir, "heldout.safetensors"));
  const sk = await sklearnProba(dir, { ...train, labels: train.labels! }, held);
  if (sk) {
    const row = new Map(rows.map((r) => [r.path, r]));
    held.paths.forEach((p, i) => {
      const got = sk.classes.map((c) => Number(row.get(p)![`p_${c}`]));
      assertClose(got, sk.proba[i], { rtol: 0, atol: 1e-5 }, `probabilities of ${p}`);
    });
  }
  const md = await Deno.readTextFile(join(dir, "summary.md"));
  assert(md.includes("95 % CI (Wilson)") && md.includes("out of distribution:"), md);
  return { rows, evalPreds };
}

Deno.test({
  name: "predict round trip on generated cells: eval's test predictions, sklearn's probabilities",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-predict-rt-" });
    const classes = ["eosinophil", "lymphocyte", "neutrophil"] as const;
    await writeSyntheticImageFolder(join(dir, "train"), { perClass: 10, size: 32, classes });
    await writeSyntheticImageFolder(join(dir, "heldout"), {
      perClass: 4,
      size: 32,
      seed: 7,
      classes,
    });
    const weights = join(dir, "tiny.pth");
    await writeTinyCheckpoint(weights, { jitter: 0.2 });
    const { rows } = await roundTrip(dir, weights, join(dir, "train"), join(dir, "heldout"));
    assertEquals(rows.length, 12);
    assertEquals(new Set(rows.map((r) => r.sample)), new Set(classes), "sample = folder");
    // embed --figures coloured by the saved probe's predictions.
    const emb = await cli(EMBED, [
      "--weights",
      weights,
      "--heads",
      "2",
      "--input",
      join(dir, "heldout"),
      "--out",
      join(dir, "again.safetensors"),
      "--size",
      "28",
      "--figures",
      join(dir, "figs"),
      "--color-by",
      "predicted",
      "--head",
      join(dir, "heads", "probe.safetensors"),
      "--quiet",
      "--no-autotune",
    ]);
    assertEquals(emb.code, 0, emb.stderr);
    const svg = await Deno.readTextFile(join(dir, "figs", "umap_predicted.svg"));
    const counted = [...svg.matchAll(/>(eosinophil|lymphocyte|neutrophil) \((\d+)\)</g)];
    const predictedCounts = Object.fromEntries(
      classes.map((c) => [c, rows.filter((r) => r.predicted === c).length]),
    );
    assert(counted.length > 0, "legend with counts");
    for (const m of counted) assertEquals(Number(m[2]), predictedCounts[m[1]], `legend ${m[1]}`);

    // A head of other weights is refused before any embedding, naming both models.
    const other = join(dir, "other.pth");
    await writeTinyCheckpoint(other, { seed: 4, jitter: 0.2 });
    const bad = await cli(PREDICT, [
      "--head",
      join(dir, "heads"),
      "--input",
      join(dir, "heldout"),
      "--weights",
      other,
      "--attention-heads",
      "2",
      "--out",
      join(dir, "x.csv"),
    ]);
    assertEquals(bad.code, 2, bad.stderr);
    for (const s of ["tiny.pth", "other.pth", "weights", "eval --save"]) {
      assert(bad.stderr.includes(s), `${s}: ${bad.stderr}`);
    }
    await assertRejects(() => Deno.stat(join(dir, "x.csv")), Deno.errors.NotFound);

    // A sample folder with no readable image: an errors.jsonl entry; the other sample predicted.
    const smear = join(dir, "smear");
    await Deno.mkdir(join(smear, "P1"), { recursive: true });
    await Deno.mkdir(join(smear, "P2"), { recursive: true });
    for (const f of ["eosinophil_000000.png", "lymphocyte_000001.png"]) {
      const cls = f.split("_")[0];
      await Deno.copyFile(join(dir, "heldout", cls, f), join(smear, "P1", f));
    }
    await Deno.writeTextFile(join(smear, "P2", "broken.png"), "not an image");
    const sm = await cli(PREDICT, [
      "--head",
      join(dir, "heads", "probe.safetensors"),
      "--input",
      smear,
      "--weights",
      weights,
      "--attention-heads",
      "2",
      "--out",
      join(dir, "smear.csv"),
      "--quiet",
      "--no-autotune",
    ]);
    assertEquals(sm.code, 0, sm.stderr);
    const smRows = await readCsv(join(dir, "smear.csv"));
    assertEquals(smRows.map((r) => r.sample), ["P1", "P1"]);
    const errors = (await Deno.readTextFile(join(dir, "smear.errors.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    assert(
      errors.some((e) => e.sample === "P2" && /no readable image/.test(e.error)),
      JSON.stringify(errors),
    );
    assert(errors.some((e) => String(e.path).endsWith("broken.png")), JSON.stringify(errors));

    // Ctrl-C while the cells are embedded: Interrupted, saying what it kept; no predictions.
    await assertRejects(
      () =>
        runPredict({
          heads: [join(dir, "heads", "probe.safetensors")],
          input: join(dir, "heldout"),
          weights,
          attentionHeads: 2,
          out: join(dir, "stopped.csv"),
          quiet: true,
          autotune: false,
          log: () => {},
          signal: AbortSignal.abort(),
        }),
      Interrupted,
      "kept 0 of 12 rows",
    );
    await assertRejects(() => Deno.stat(join(dir, "stopped.csv")), Deno.errors.NotFound);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "predict round trip on the BCCD crops (skipped without ../shared/data)",
  ignore: sharedData() === null,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const crops = join(sharedData()!, "bccd-cropped", "BCCD_cropped");
    const dir = await Deno.makeTempDir({ prefix: "bloom-predict-bccd-" });
    // Half the crops (a small test): of each class's, every 4th is held out, the 2nd of 4 trains.
    for (
      const cls of [...Deno.readDirSync(crops)].filter((e) => e.isDirectory).map((e) => e.name)
    ) {
      const files = [...Deno.readDirSync(join(crops, cls))].map((e) => e.name).sort();
      for (const [i, f] of files.entries()) {
        if (i % 2 === 0) continue;
        const to = join(dir, i % 4 === 3 ? "heldout" : "train", cls);
        await Deno.mkdir(to, { recursive: true });
        await Deno.copyFile(join(crops, cls, f), join(to, f));
      }
    }
    const weights = join(dir, "tiny.pth");
    await writeTinyCheckpoint(weights, { jitter: 0.2 });
    const { rows } = await roundTrip(dir, weights, join(dir, "train"), join(dir, "heldout"));
    assert(rows.length > 80, `${rows.length} held-out crops`);
    await Deno.remove(dir, { recursive: true });
  },
});

// ---------------------------------------------------------------- features input

const MODEL: EmbeddingModel = {
  arch: "vit_small",
  weights: "DinoBloom-S.pth",
  weightsSha256: "c".repeat(64),
  pool: "cls",
  inputSize: 224,
  dim: 12,
};
const META = {
  arch: "vit_small",
  weights: "/models/DinoBloom-S.pth",
  pool: "cls" as const,
  extra: { "bloom.size": "224", "bloom.weights_sha256": "c".repeat(64) },
};

/** Three classes in 12-d; cells under P<i>/ folders; `far` rows shifted far away. */
function cells(seed: number, n: number, far = 0) {
  const rng = new Rng(seed);
  const means = new Rng(42).normals(36, 3);
  const features = new Float32Array(n * 12);
  const labels: string[] = [];
  const paths: string[] = [];
  for (let i = 0; i < n; i++) {
    const k = i % 3;
    for (let j = 0; j < 12; j++) {
      features[i * 12 + j] = means[k * 12 + j] + rng.normal() + (i < far ? 60 : 0);
    }
    labels.push(["basophil", "lymphocyte", "neutrophil"][k]);
    paths.push(`P${i % 2}/cell_${String(i).padStart(3, "0")}.png`);
  }
  return { features, dim: 12, labels, paths, meta: META };
}

Deno.test("predict on a features file: the probe's rows, OOD flags, summaries, resume", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-predict-feat-" });
  const train = cells(1, 90);
  const probe = await Probe.fit(matrix(train.features, 90, 12), train.labels, MODEL);
  await probe.save(join(dir, "probe.safetensors"));
  const index = await KnnIndex.build(matrix(train.features, 90, 12), train.labels, MODEL, { k: 5 });
  await index.save(join(dir, "knn.safetensors"));
  const test = cells(2, 41, 2);
  await writeEmbeddings(join(dir, "cells.safetensors"), test);
  const heads = [join(dir, "probe.safetensors"), join(dir, "knn.safetensors")];
  const base = {
    heads,
    input: join(dir, "cells.safetensors"),
    log: () => {},
    threads: 1,
  };
  const s = await runPredict({
    ...base,
    out: join(dir, "p.csv"),
    summary: join(dir, "summary.csv"),
  });
  assertEquals([s.cells, s.samples], [41, 2]);
  const rows = await readCsv(join(dir, "p.csv"));
  const want = probe.predict(matrix(test.features, 41, 12));
  rows.forEach((r, i) => {
    assertEquals(r.path, test.paths[i]);
    assertEquals(r.sample, `P${i % 2}`);
    assertEquals(r.label, test.labels[i]);
    assertEquals(r.predicted, want.labels[i]);
    assertEquals(
      ["basophil", "lymphocyte", "neutrophil"].map((c) => Number(r[`p_${c}`])),
      [...want.proba.subarray(i * 3, i * 3 + 3)],
      "probabilities round-trip exactly",
    );
    assertEquals(Number(r.distance_threshold), index.ood.threshold);
    assertEquals(r.min_confidence, "0.5");
    const far = Number(r.nearest_distance) > index.ood.threshold;
    assertEquals(r.ood, far || Number(r.confidence) < 0.5 ? "1" : "0");
  });
  assertEquals(rows.slice(0, 2).map((r) => r.ood_reason.includes("distance")), [true, true]);
  assert(rows.slice(2).filter((r) => r.ood === "1").length <= 3, "in-distribution cells pass");
  assertEquals(s.flagged, rows.filter((r) => r.ood === "1").length);
  const summary = await readCsv(join(dir, "summary.csv"));
  assertEquals(summary.length, 2 * 3, "every class of every sample");
  const p0 = summary.filter((r) => r.sample === "P0");
  assertEquals(p0.reduce((a, r) => a + Number(r.count), 0), 21);
  for (const r of p0) {
    const n = rows.filter((x) => x.sample === "P0" && x.predicted === r.class).length;
    assertEquals(Number(r.count), n, r.class);
  }
  // Markdown summary, and flagged cells left out of the counts.
  await runPredict({
    ...base,
    out: join(dir, "p2.csv"),
    summary: join(dir, "summary.md"),
    excludeFlagged: true,
  });
  const md = await Deno.readTextFile(join(dir, "summary.md"));
  assert(md.includes("## P0") && md.includes("(not counted)") && md.includes("Flagged cells:"), md);
  // A run killed after its first block resumes; the result is the uninterrupted run's file.
  const out = join(dir, "resumed.csv");
  await assertRejects(
    () => runPredict({ ...base, out, blockRows: 16, crashAfterBlocks: 1 }),
    Error,
    "simulated crash",
  );
  await assertRejects(() => Deno.stat(out), Deno.errors.NotFound, undefined);
  const partial = await Deno.readTextFile(`${out}.partial`);
  assertEquals(partial.trim().split("\n").length, 1 + 16, "header and the first block");
  const again = await runPredict({ ...base, out, blockRows: 16 });
  assertEquals(again.resumedRows, 16);
  assertEquals(await Deno.readTextFile(out), await Deno.readTextFile(join(dir, "p.csv")));
  await assertRejects(() => Deno.stat(`${out}.partial`), Deno.errors.NotFound, undefined);
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name: "predict with MIL heads: a row per patient, its most-attended cells, a PNG grid",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-predict-mil-" });
    const data = cells(3, 40);
    // Real cell images at the paths, for the grid.
    for (const p of data.paths) {
      await Deno.mkdir(join(dir, "img", p.split("/")[0]), { recursive: true });
      await sharp({ create: { width: 20, height: 20, channels: 3, background: "#c04080" } })
        .png().toFile(join(dir, "img", p));
    }
    await writeEmbeddings(join(dir, "cells.safetensors"), {
      ...data,
      patients: data.paths.map((p) => p.split("/")[0]),
    });
    const shape = {
      kind: "gated" as const,
      dim: 12,
      classes: 2,
      attentionHidden: 8,
      classifierHidden: 4,
    };
    const head = new MilHead({
      shape,
      classes: ["AML_A", "AML_B"],
      embedding: MODEL,
      params: milInit(shape, 5),
    });
    await head.save(join(dir, "mil_gated.safetensors"));
    const s = await runPredict({
      heads: [join(dir, "mil_gated.safetensors")],
      input: join(dir, "cells.safetensors"),
      out: join(dir, "patients.csv"),
      images: join(dir, "img"),
      log: () => {},
    });
    const rows = await readCsv(join(dir, "patients.csv"));
    assertEquals(rows.map((r) => r.patient), ["P0", "P1"]);
    for (const r of rows) {
      const idx = data.paths.flatMap((p, i) => (p.startsWith(`${r.patient}/`) ? [i] : []));
      const h = new Float32Array(idx.length * 12);
      idx.forEach((row, i) => h.set(data.features.subarray(row * 12, row * 12 + 12), i * 12));
      const want = head.predictBag(h, idx.length);
      assertEquals(r.predicted, want.label);
      assertEquals([Number(r.p_AML_A), Number(r.p_AML_B)], [...want.proba]);
      const top = r.top_cells.split(";");
      assertEquals(top.length, 16);
      const order = [...idx.keys()].sort((a, b) => want.attention[b] - want.attention[a] || a - b);
      assertEquals(top, order.slice(0, 16).map((i) => data.paths[idx[i]]));
    }
    assertEquals(s.figures.length, 2);
    const meta = await sharp(s.figures[0]).metadata();
    assert((meta.width ?? 0) > 400 && (meta.height ?? 0) > 400, `${meta.width}×${meta.height}`);
    assertEquals(basename(s.figures[0]), "P0.mil_gated.png");
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("predict: another width, a corrupt head, MIL-only summary — clear errors, nothing written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-predict-bad-" });
  const train = cells(1, 30);
  await (await Probe.fit(matrix(train.features, 30, 12), train.labels, MODEL))
    .save(join(dir, "probe.safetensors"));
  // 10 features per cell where the head wants 12.
  await writeEmbeddings(join(dir, "narrow.safetensors"), {
    features: new Float32Array(30),
    dim: 10,
    paths: ["a/1.png", "a/2.png", "a/3.png"],
    meta: META,
  });
  const bytes = await Deno.readFile(join(dir, "probe.safetensors"));
  await Deno.writeFile(join(dir, "corrupt.safetensors"), bytes.subarray(0, bytes.length - 40));
  await writeEmbeddings(join(dir, "cells.safetensors"), cells(2, 6));
  const cases: [string[], string[]][] = [
    [
      ["--head", join(dir, "probe.safetensors"), "--input", join(dir, "narrow.safetensors")],
      ["narrow.safetensors", "10 features per cell", "12-d"],
    ],
    [
      ["--head", join(dir, "corrupt.safetensors"), "--input", join(dir, "cells.safetensors")],
      ["corrupt.safetensors", "not a readable head file"],
    ],
    [
      ["--head", join(dir, "missing"), "--input", join(dir, "cells.safetensors")],
      ["--head", "does not exist"],
    ],
  ];
  for (const [args, named] of cases) {
    const r = await cli(PREDICT, [...args, "--out", join(dir, "out.csv")]);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    for (const n of named) assert(r.stderr.includes(n), `${n}: ${r.stderr}`);
    await assertRejects(() => Deno.stat(join(dir, "out.csv")), Deno.errors.NotFound);
  }
  await Deno.remove(dir, { recursive: true });
});
