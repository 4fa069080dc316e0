/**
 * `deno task eval` as a subprocess on small embeddings files the tests
 * write: the metrics JSON and Markdown for train → test, k-fold and the
 * default 80/20 split (numbers equal to the in-process protocols on the same
 * split), MIL on patient-level files, and every bad input failing with its
 * exit code and a message naming the file or flag and the fix.
 */
import { writeEmbeddings } from "../data/embeddings_file.ts";
import { matrix } from "../eval/matrix.ts";
import { evaluateEmbeddings } from "../eval/protocols.ts";
import type { EvalReport } from "../eval/report.ts";
import { trainTestSplit } from "../eval/split.ts";
import { assert, assertClose, assertEquals } from "./assert.ts";
import { Rng } from "./helpers.ts";

const CLI = new URL("../cli/eval.ts", import.meta.url).pathname;

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Class means shared by a train and a test file. */
const MEANS = new Rng(99).normals(3 * 12, 1.5);

/**
 * Gaussian blobs: class k around MEANS[k] (first `dim` coordinates); rows go
 * in runs of 6 per class, and with `patients` each run is one patient.
 */
function blobs(rng: Rng, rows: number, dim: number, classes: number, patients = false) {
  const means = Float32Array.from(
    { length: classes * dim },
    (_, i) => MEANS[Math.floor(i / dim) * 12 + (i % dim)],
  );
  const features = new Float32Array(rows * dim);
  const labels: string[] = [];
  const ids: string[] = [];
  for (let i = 0; i < rows; i++) {
    const k = Math.floor(i / 6) % classes;
    for (let j = 0; j < dim; j++) features[i * dim + j] = means[k * dim + j] + rng.normal();
    labels.push(`class${k}`);
    ids.push(`P${String(Math.floor(i / 6)).padStart(3, "0")}`);
  }
  return {
    features,
    dim,
    paths: labels.map((l, i) => `${l}/${i}.png`),
    labels,
    patients: patients ? ids : null,
    meta: { arch: "vit_small", weights: "/ckpt/DinoBloom-S.pth", pool: "cls" as const },
  };
}

const dir = await Deno.makeTempDir({ prefix: "bloom-eval-cli-" });
const rng = new Rng(11);
const trainData = blobs(rng, 96, 12, 3);
await writeEmbeddings(`${dir}/train.safetensors`, trainData);
await writeEmbeddings(`${dir}/test.npy`, blobs(rng, 48, 12, 3));

Deno.test("eval cli: train → test writes the metrics JSON and the paper's table", async () => {
  const r = await run([
    "--train",
    `${dir}/train.safetensors`,
    "--test",
    `${dir}/test.npy`,
    "--protocol",
    "knn,linear",
    "--threads",
    "1",
    "--out",
    `${dir}/m.json`,
    "--markdown",
    `${dir}/t.md`,
  ]);
  assertEquals(r.code, 0, r.stderr);
  const report = JSON.parse(await Deno.readTextFile(`${dir}/m.json`)) as EvalReport;
  assertEquals(report.rows.map((x) => x.protocol), ["1-NN", "20-NN", "linear probe"]);
  assertEquals(report.rows[0].method, "DinoBloom-S", "method from the weights' file name");
  const run0 = report.rows[2].runs[0];
  assertEquals(run0.n, 48);
  assertEquals(run0.labels, ["class0", "class1", "class2"]);
  assertEquals(run0.confusion.flat().reduce((a, b) => a + b, 0), 48);
  assertEquals(run0.precision.length, 3);
  assertEquals(report.meta?.["knn.device"], "cpu", "small sets stay on the CPU");
  assert(report.rows[0].accuracy.mean > 0.9, "blobs are separable: 1-NN nearly perfect");
  assert(
    /\| DinoBloom-S \| linear probe \| [\d.]+ \| [\d.]+ \| [\d.]+ \|/.test(r.stdout),
    r.stdout,
  );
  assert((await Deno.readTextFile(`${dir}/t.md`)).includes("| Class | Precision |"));
  assert(/eval \[[\d.]+s\] kNN/.test(r.stderr), `progress on stderr: ${r.stderr}`);
});

Deno.test("eval cli: --folds and the default 80/20 split", async () => {
  const [folds, split] = await Promise.all([
    run(["--train", `${dir}/train.safetensors`, "--folds", "3", "--threads", "1", "--quiet"]),
    run([
      "--train",
      `${dir}/train.safetensors`,
      "--protocol",
      "linear",
      "--threads",
      "1",
      "--out",
      `${dir}/split.json`,
      "--quiet",
    ]),
  ]);
  assertEquals(folds.code, 0, folds.stderr);
  assertEquals(folds.stderr, "", "--quiet");
  assert(/\| 1-NN \| [\d.]+ ± [\d.]+ \|/.test(folds.stdout), folds.stdout);
  assertEquals(split.code, 0, split.stderr);
  const report = JSON.parse(await Deno.readTextFile(`${dir}/split.json`)) as EvalReport;
  assertEquals(report.meta?.split, "80/20 stratified split (seed 42)");
  // The same numbers as the in-process protocol on scikit-learn's split.
  const s = trainTestSplit(trainData.labels, { trainSize: 0.8, seed: 42 });
  const pick = (idx: number[]) => {
    const d = new Float32Array(idx.length * 12);
    idx.forEach((r, i) => d.set(trainData.features.subarray(r * 12, (r + 1) * 12), i * 12));
    return matrix(d, idx.length, 12);
  };
  const want = await evaluateEmbeddings(
    pick(s.train),
    s.train.map((i) => trainData.labels[i]),
    pick(s.test),
    s.test.map((i) => trainData.labels[i]),
    { method: "x", ks: [] },
  );
  const got = report.rows[0];
  assertEquals(got.runs[0].n, s.test.length);
  assertClose([got.accuracy.mean, got.weightedF1.mean], [
    want.rows[0].accuracy.mean,
    want.rows[0].weightedF1.mean,
  ], { rtol: 0, atol: 0 });
});

Deno.test({
  name: "eval cli: patient-level files: MIL (both heads), kNN and probe with --device gpu",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const r2 = new Rng(4);
    const tr = blobs(r2, 72, 8, 2, true);
    const te = blobs(r2, 36, 8, 2, true);
    te.patients = te.patients!.map((p) => `T${p}`);
    await writeEmbeddings(`${dir}/ptrain.safetensors`, tr);
    await writeEmbeddings(`${dir}/ptest.safetensors`, te);
    const r = await run([
      "--train",
      `${dir}/ptrain.safetensors`,
      "--test",
      `${dir}/ptest.safetensors`,
      "--device",
      "gpu",
      "--mil-epochs",
      "3",
      "--mil-val",
      "0",
      "--out",
      `${dir}/mil.json`,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const report = JSON.parse(await Deno.readTextFile(`${dir}/mil.json`)) as EvalReport;
    assertEquals(report.rows.map((x) => x.protocol), [
      "1-NN",
      "20-NN",
      "linear probe",
      "ABMIL (multi-column)",
      "ABMIL (gated)",
    ], "patients present: mil joins the default protocols");
    assertEquals(report.rows[3].runs[0].n, 6, "one prediction per test patient");
    assert(r.stderr.includes("ABMIL (gated): 12 training, 6 test patients"), r.stderr);
    assertEquals([report.meta?.["knn.device"], report.meta?.["probe.device"]], ["gpu", "gpu"]);
    // The GPU kNN gives the CPU protocol's predictions on this data: same scores.
    const want = await evaluateEmbeddings(
      matrix(tr.features, 72, 8),
      tr.labels,
      matrix(te.features, 36, 8),
      te.labels,
      { method: "x", probe: false },
    );
    for (const i of [0, 1]) {
      assertEquals(report.rows[i].runs[0].confusion, want.rows[i].runs[0].confusion);
    }
  },
});

Deno.test("eval cli: bad inputs exit 2 with the file or flag and the fix", async () => {
  const rng2 = new Rng(2);
  const unl = blobs(rng2, 30, 12, 3);
  await writeEmbeddings(`${dir}/unlabelled.safetensors`, { ...unl, labels: null });
  await writeEmbeddings(`${dir}/narrow.safetensors`, blobs(rng2, 30, 5, 3));
  await writeEmbeddings(`${dir}/empty.safetensors`, {
    features: new Float32Array(0),
    dim: 12,
    paths: [],
  });
  const one = blobs(rng2, 30, 12, 1);
  await writeEmbeddings(`${dir}/one.safetensors`, one);
  const tr = `${dir}/train.safetensors`;
  const cases: [string[], number, RegExp][] = [
    [
      ["--train", `${dir}/unlabelled.safetensors`],
      2,
      /unlabelled\.safetensors: labels: no labels in the metadata, and the kNN protocol needs.*embed a labelled layout/s,
    ],
    [
      ["--train", tr, "--test", `${dir}/narrow.safetensors`],
      2,
      /narrow\.safetensors: features: 5 features per row, but --train .*train\.safetensors has 12.*same model/s,
    ],
    [
      ["--train", `${dir}/empty.safetensors`],
      2,
      /empty\.safetensors: features: --train holds no embeddings \(0 rows\)/,
    ],
    [
      ["--train", `${dir}/one.safetensors`],
      2,
      /one\.safetensors: labels: every row of --train is labelled "class0"; classification needs at least 2 classes/,
    ],
    [
      ["--train", tr, "--protocol", "knn,svm"],
      2,
      /--protocol must be a comma-separated list of knn, linear, mil, got 'svm'/,
    ],
    [
      ["--train", tr, "--test", tr, "--folds", "3"],
      2,
      /--folds cross-validates the --train file alone/,
    ],
    [
      ["--train", tr, "--protocol", "mil"],
      2,
      /train\.safetensors: patients: no patients in the metadata, and the MIL protocol.*--layout mil/s,
    ],
    [["--test", tr], 2, /--train is required/],
    [
      ["--train", `${dir}/nope.safetensors`],
      2,
      /nope\.safetensors: file: cannot open: no such file/,
    ],
    [["--train", tr, "--device", "tpu"], 2, /--device must be one of cpu, gpu, auto, got 'tpu'/],
    [["--train", tr, "--device", "gpuu"], 2, /got 'gpuu'; did you mean 'gpu'\?/],
    [["--trian", tr], 2, /unknown flag --trian; did you mean --train\?/],
    [["--train", tr, "--folds", "1"], 2, /--folds must be an integer ≥ 2, got '1'/],
    [["--train", tr, tr], 2, /unexpected argument '.*'; pass files with --train and --test/],
  ];
  const results = await Promise.all(cases.map(([args]) => run([...args, "--threads", "1"])));
  results.forEach((r, i) => {
    const [args, code, pattern] = cases[i];
    assertEquals(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    assert(pattern.test(r.stderr), `${args.join(" ")}: stderr was ${r.stderr}`);
  });
});

globalThis.addEventListener("unload", () => {
  Deno.removeSync(dir, { recursive: true });
});
