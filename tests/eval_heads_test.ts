/**
 * `eval --save`, `eval --load`, `eval --batch-effects` and the figures'
 * `--color-by`, as subprocesses on small embeddings files of two sites (the
 * second shifted, a batch effect):
 * - `--save` writes the probe and kNN reference with the test predictions;
 *   `--load` scores them on the same test file without retraining and gets
 *   eval's numbers exactly; k-fold heads are saved per fold and loaded as
 *   mean ± std; `predict` refuses an ambiguous folder of fold heads; both MIL
 *   heads are saved and, loaded, classify the test patients as eval did;
 * - `--batch-effects` prints one verdict per source, the shifted site
 *   separating by source;
 * - `--figures --color-by` draws the UMAP coloured by source and by
 *   predicted class.
 */
import { join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import { writeEmbeddings } from "../data/embeddings_file.ts";
import type { EvalReport } from "../eval/report.ts";
import { assert, assertEquals } from "./assert.ts";
import { Rng } from "./helpers.ts";

const dec = new TextDecoder();
const root = new URL("..", import.meta.url).pathname;

async function run(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", join(root, script), ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Three cell types in 8-d; `shift` moves every cell (another scanner). */
function site(seed: number, rows: number, shift: number) {
  const rng = new Rng(seed);
  const means = new Rng(5).normals(24, 2.5);
  const features = new Float32Array(rows * 8);
  const labels: string[] = [];
  for (let i = 0; i < rows; i++) {
    const k = i % 3;
    for (let j = 0; j < 8; j++) {
      features[i * 8 + j] = means[k * 8 + j] + rng.normal() + shift;
    }
    labels.push(["lymphocyte", "monocyte", "neutrophil"][k]);
  }
  return {
    features,
    dim: 8,
    labels,
    paths: labels.map((l, i) => `site${shift ? "B" : "A"}/${l}/${i}.png`),
    meta: { arch: "vit_small", weights: "/w/DinoBloom-S.pth", pool: "cls" as const },
  };
}

const dir = await Deno.makeTempDir({ prefix: "bloom-eval-heads-" });
const train = join(dir, "siteA.safetensors");
const test = join(dir, "siteB.safetensors");
await writeEmbeddings(train, site(1, 60, 0));
await writeEmbeddings(test, site(2, 30, 12));

Deno.test("eval --save writes the heads; --load scores them without retraining", async () => {
  const saved = join(dir, "heads");
  const a = await run("cli/eval.ts", [
    "--train",
    train,
    "--test",
    test,
    "--threads",
    "1",
    "--save",
    saved,
    "--out",
    join(dir, "trained.json"),
    "--quiet",
  ]);
  assertEquals(a.code, 0, a.stderr);
  const index = JSON.parse(await Deno.readTextFile(join(saved, "heads.json")));
  assertEquals(index.heads.map((h: { file: string }) => h.file), [
    "probe.safetensors",
    "knn.safetensors",
  ]);
  assertEquals(index.embedding.weights, "DinoBloom-S.pth");
  const preds = (await Deno.readTextFile(join(saved, "test_predictions.csv"))).trim().split("\n");
  assertEquals(preds[0], "fold,path,label,1-NN,20-NN,linear probe");
  assertEquals(preds.length, 31);
  const b = await run("cli/eval.ts", [
    "--load",
    saved,
    "--test",
    test,
    "--out",
    join(dir, "loaded.json"),
    "--quiet",
  ]);
  assertEquals(b.code, 0, b.stderr);
  const trained = JSON.parse(await Deno.readTextFile(join(dir, "trained.json"))) as EvalReport;
  const loaded = JSON.parse(await Deno.readTextFile(join(dir, "loaded.json"))) as EvalReport;
  const score = (r: EvalReport) =>
    Object.fromEntries(r.rows.map((x) => [x.protocol, [x.accuracy.mean, x.weightedF1.mean]]));
  assertEquals(score(loaded), score(trained), "the saved heads give eval's numbers");
});

Deno.test("eval --folds --save: one head per fold; --load averages them; predict wants one", async () => {
  const saved = join(dir, "folds");
  const a = await run("cli/eval.ts", [
    "--train",
    train,
    "--folds",
    "3",
    "--protocol",
    "linear",
    "--threads",
    "1",
    "--save",
    saved,
    "--quiet",
  ]);
  assertEquals(a.code, 0, a.stderr);
  const files = [...Deno.readDirSync(saved)].map((e) => e.name).sort();
  assertEquals(files.filter((f) => f.startsWith("probe.fold")), [
    "probe.fold1.safetensors",
    "probe.fold2.safetensors",
    "probe.fold3.safetensors",
  ]);
  const b = await run("cli/eval.ts", ["--load", saved, "--test", test, "--quiet"]);
  assertEquals(b.code, 0, b.stderr);
  assert(/\| linear probe \| [\d.]+ ± [\d.]+ \|/.test(b.stdout), b.stdout);
  const p = await run("cli/predict.ts", [
    "--head",
    saved,
    "--input",
    test,
    "--out",
    join(dir, "p.csv"),
  ]);
  assertEquals(p.code, 2, p.stderr);
  assert(p.stderr.includes("3 probe heads") && p.stderr.includes("--head FILE"), p.stderr);
});

Deno.test("eval --batch-effects: one verdict per source; the shifted site separates by source", async () => {
  const r = await run("cli/eval.ts", [
    "--train",
    train,
    "--test",
    test,
    "--batch-effects",
    "--threads",
    "1",
    "--quiet",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const verdicts = r.stdout.split("\n").filter((l) => /^- site[AB]\.safetensors: /.test(l));
  assertEquals(verdicts.length, 2, r.stdout);
  assert(verdicts.every((l) => l.includes("separate by source more than by cell type")), r.stdout);
  assert(/\| all \| [\d.-]+ \| [\d.-]+ \| 100\.0% \|/.test(r.stdout), r.stdout);
  // One file, sources from the paths; a missing rule is named.
  const one = await run("cli/eval.ts", ["--train", train, "--batch-effects", "--quiet"]);
  assertEquals(one.code, 2, one.stderr);
  assert(one.stderr.includes("--source-by"), one.stderr);
});

Deno.test("eval --figures --color-by source and predicted", async () => {
  for (const by of ["source", "predicted"]) {
    const figs = join(dir, `figs_${by}`);
    const r = await run("cli/eval.ts", [
      "--train",
      train,
      "--test",
      test,
      "--protocol",
      "linear",
      "--threads",
      "1",
      "--figures",
      figs,
      "--color-by",
      by,
      "--quiet",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const meta = await sharp(join(figs, `umap_${by}.png`)).metadata();
    assert((meta.width ?? 0) > 100, `${by}: ${meta.width}`);
    const svg = await Deno.readTextFile(join(figs, `umap_${by}.svg`));
    // Sources: both files, every cell; predictions: the 30 test cells, in the classes' names.
    if (by === "source") {
      assert(svg.includes("siteA.safetensors (60)") && svg.includes("siteB.safetensors (30)"));
    } else {
      assert(svg.includes("coloured by predicted class"), svg.slice(0, 400));
      const counts = [...svg.matchAll(/>(lymphocyte|monocyte|neutrophil) \((\d+)\)</g)];
      assertEquals(counts.reduce((a, m) => a + Number(m[2]), 0), 30);
    }
  }
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch { /* already gone */ }
});

Deno.test({
  name:
    "eval --protocol mil --save: both MIL heads saved; --load gives eval's patient-level scores",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    // Patient-level files: 5 cells per patient, each cell near its patient's class mean.
    const patients = (seed: number, n: number, prefix: string) => {
      const rng = new Rng(seed);
      const means = new Rng(5).normals(24, 2.5);
      const features = new Float32Array(n * 5 * 8);
      const labels: string[] = [];
      const ids: string[] = [];
      for (let i = 0; i < n * 5; i++) {
        const p = Math.floor(i / 5);
        const k = p % 3;
        for (let j = 0; j < 8; j++) features[i * 8 + j] = means[k * 8 + j] + rng.normal();
        labels.push(["lymphocyte", "monocyte", "neutrophil"][k]);
        ids.push(`${prefix}${p}`);
      }
      const paths = ids.map((p, i) => `${p}/${i}.png`);
      return { features, dim: 8, labels, patients: ids, paths, meta: site(1, 1, 0).meta };
    };
    const trainP = join(dir, "mil_train.safetensors");
    const testP = join(dir, "mil_test.safetensors");
    await writeEmbeddings(trainP, patients(3, 12, "T"));
    await writeEmbeddings(testP, patients(4, 6, "V"));
    const saved = join(dir, "mil_heads");
    const a = await run("cli/eval.ts", [
      "--train",
      trainP,
      "--test",
      testP,
      "--protocol",
      "mil",
      "--mil-epochs",
      "3",
      "--mil-val",
      "0",
      "--save",
      saved,
      "--out",
      join(dir, "mil_trained.json"),
      "--quiet",
    ]);
    assertEquals(a.code, 0, a.stderr);
    for (const f of ["mil_multicolumn.safetensors", "mil_gated.safetensors"]) {
      assert((await Deno.stat(join(saved, f))).isFile, f);
    }
    const b = await run("cli/eval.ts", [
      "--load",
      saved,
      "--test",
      testP,
      "--out",
      join(dir, "mil_loaded.json"),
      "--quiet",
    ]);
    assertEquals(b.code, 0, b.stderr);
    const trained = JSON.parse(
      await Deno.readTextFile(join(dir, "mil_trained.json")),
    ) as EvalReport;
    const loaded = JSON.parse(await Deno.readTextFile(join(dir, "mil_loaded.json"))) as EvalReport;
    const confusion = (r: EvalReport) =>
      Object.fromEntries(r.rows.map((x) => [x.protocol, x.runs[0].confusion]));
    assertEquals(confusion(loaded), confusion(trained), "the saved heads classify as eval's did");
  },
});
