/**
 * The README's typical session, verbatim: the commands of its no-weights
 * block (ingest with a split, ingest a VOC set, embed with random weights,
 * eval, train with --eval, embed with the trained teacher), each run through
 * the checkout's `bloom` script from a temporary folder of the user's, as
 * the README says (the script runs the task in the checkout; relative paths
 * are the user's folder's), on generated cells. Only sizes shrink: flags
 * appended per task (smaller images, two training steps); the commands and
 * their own flags are the README's, read from it.
 *
 * Checks that one split runs from end to end: the features file carries
 * ingest's split; eval's test set is ingest's test set (its support per
 * class is the manifest's test counts) and its JSON and Markdown name the
 * split's origin and hash, the manifest's; train's kNN lines in
 * metrics.jsonl do too. That the steps agree: the last command embeds the
 * model train scored (its heads, its image side), so eval's 20-NN on it is
 * train's last kNN score. That nothing lands in the checkout. And that the
 * README's weights block is the same session with named weights.
 */
import { join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import { readEmbeddings } from "../data/embeddings_file.ts";
import type { EvalReport } from "../eval/report.ts";
import { readManifest } from "../pipelines/dataset/manifest.ts";
import { syntheticDataset, writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import { assert, assertEquals } from "./assert.ts";

const root = new URL("..", import.meta.url).pathname;
const dec = new TextDecoder();

/** What the session writes, relative to the folder it runs in. */
const OUTPUTS = [
  "data/acevedo",
  "data/bccd",
  "acevedo.safetensors",
  "figs",
  "table.md",
  "metrics.json",
  "runs/s1",
  "acevedo-s1.safetensors",
  "s1.json",
];

/** The session's outputs present in the checkout (where relative paths went before `bloom` kept the caller's folder). */
function outputsInCheckout(): string[] {
  return OUTPUTS.filter((p) => {
    try {
      Deno.statSync(join(root, p));
      return true;
    } catch {
      return false;
    }
  });
}

/** The `bloom` command lines of the README's typical-session block holding `marker`. */
function sessionBlock(readme: string, marker: string): string[][] {
  const at = readme.indexOf("## A typical session");
  assert(at >= 0, "README has no '## A typical session'");
  const section = readme.slice(at, readme.indexOf("\n## ", at + 1));
  const block = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1])
    .find((b) => b.includes(marker));
  assert(block, `no sh block with ${marker} in the README's typical session`);
  return block.split("\n").filter((l) => l.startsWith("bloom ")).map((l) => l.trim().split(/\s+/));
}

/** Flags appended per task so the session runs in seconds on llvmpipe (sizes only). */
const SMALL: Record<string, string[]> = {
  ingest: ["--size", "28", "--quiet"],
  embed: ["--size", "28", "--no-autotune", "--quiet"],
  eval: ["--quiet"],
  train: ["--steps", "2", "--batch", "8", "--no-autotune", "--quiet"],
};

/** A Pascal-VOC smear set: each generated cell an image with one WBC box and one RBC box. */
async function writeVoc(dir: string, n: number): Promise<void> {
  await Deno.mkdir(join(dir, "Annotations"), { recursive: true });
  await Deno.mkdir(join(dir, "JPEGImages"), { recursive: true });
  let i = 0;
  for (const s of syntheticDataset({ count: n, size: 48, seed: 7 })) {
    const name = `BloodImage_${String(i++).padStart(5, "0")}`;
    await sharp(s.pixels, { raw: { width: 48, height: 48, channels: 3 } }).jpeg({ quality: 95 })
      .toFile(join(dir, "JPEGImages", `${name}.jpg`));
    const box = (label: string, [x0, y0, x1, y1]: number[]) =>
      `<object><name>${label}</name><bndbox><xmin>${x0}</xmin><ymin>${y0}</ymin>` +
      `<xmax>${x1}</xmax><ymax>${y1}</ymax></bndbox></object>`;
    await Deno.writeTextFile(
      join(dir, "Annotations", `${name}.xml`),
      `<annotation><filename>${name}.jpg</filename><size><width>48</width><height>48</height>` +
        `<depth>3</depth></size>${box("WBC", [12, 12, 36, 36])}${box("RBC", [0, 0, 10, 10])}` +
        `</annotation>`,
    );
  }
}

Deno.test("README's typical session, verbatim: one split from ingest to eval and train --eval", async () => {
  const readme = await Deno.readTextFile(join(root, "README.md"));
  const session = sessionBlock(readme, "--random-weights");
  assertEquals(session.map((c) => c[1]), ["ingest", "ingest", "embed", "eval", "train", "embed"]);
  // The weights block is the same session with named weights.
  const withWeights = sessionBlock(readme, "--weights dinobloom-s").map((c) =>
    c.join(" ").replace("--weights dinobloom-s", "--random-weights")
      .replace(" --init dinov2-vits14", "")
  );
  assertEquals(withWeights, session.map((c) => c.join(" ")));
  const before = outputsInCheckout();

  const dir = await Deno.makeTempDir({ prefix: "bloom-session-" });
  try {
    // The README's inputs, generated: Acevedo's class folders and BCCD's VOC smears.
    const inputs: Record<string, string> = {
      PBC_dataset_normal_DIB: join(dir, "inputs", "PBC_dataset_normal_DIB"),
      BCCD: join(dir, "inputs", "BCCD"),
    };
    await writeSyntheticImageFolder(inputs.PBC_dataset_normal_DIB, {
      perClass: 8,
      size: 28,
      seed: 1,
    });
    await writeVoc(inputs.BCCD, 8);

    /** `bloom TASK ARGS` (the README's PATH line: the checkout's script) in the user's folder. */
    const bloom = async (task: string, args: string[]) => {
      const out = await new Deno.Command("bash", {
        args: [join(root, "bloom"), task, ...args],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
        env: { BLOOM_CWD: "", BLOOM_CLI: "" },
      }).output();
      const stderr = dec.decode(out.stderr);
      assert(out.success, `bloom ${task} ${args.join(" ")} failed (${out.code}):\n${stderr}`);
      // First runs used to show Deno's "Ignored build scripts" box for npm:sharp.
      assert(!/build script/i.test(stderr), stderr);
      return stderr;
    };
    for (const [, task, ...flags] of session) {
      // The trained teacher embeds at its own side (the point of the check below), not --size.
      const small = flags.includes("--weights") ? ["--no-autotune", "--quiet"] : SMALL[task];
      await bloom(task, [...flags.map((f) => inputs[f] ?? f), ...small]);
    }

    const m = await readManifest(join(dir, "data/acevedo"));
    assertEquals(m.split?.origin, "stratified 80/20, seed 42");
    const origin = "ingest manifest data/acevedo: stratified 80/20, seed 42";

    // The features file carries each row's ingest split, by key.
    const emb = await readEmbeddings(join(dir, "acevedo.safetensors"));
    assertEquals(emb.meta["bloom.split"], origin);
    const keysOf = (s: string) => emb.keys!.filter((_, i) => emb.splits![i] === s).sort();
    assertEquals(keysOf("test"), [...m.splits.test].sort());
    assertEquals(keysOf("train"), [...m.splits.train].sort());

    // Eval's test set is ingest's: per class, its support is the manifest's test count.
    const report: EvalReport = JSON.parse(await Deno.readTextFile(join(dir, "metrics.json")));
    assertEquals(report.split?.origin, origin);
    assertEquals(report.split?.sha256, m.split!.sha256);
    assertEquals(report.split?.rows, {
      test: m.counts.test.samples,
      train: m.counts.train.samples,
    });
    assertEquals(report.rows.map((r) => r.protocol), ["1-NN", "20-NN", "linear probe"]);
    for (const row of report.rows) {
      const run = row.runs[0];
      const support = Object.fromEntries(
        run.labels.map((l, k) => [String(l), run.support[k]]).filter(([, n]) => n),
      );
      assertEquals(support, m.counts.test.perClass, row.protocol);
    }
    const table = await Deno.readTextFile(join(dir, "table.md"));
    assert(
      table.includes(
        `Split: ${origin} (test ${m.counts.test.samples}, train ` +
          `${m.counts.train.samples}; sha256 ${m.split!.sha256.slice(0, 12)})`,
      ),
      table,
    );

    // train --eval scored kNN on the same split, and says so in every kNN line.
    const knn = (await Deno.readTextFile(join(dir, "runs/s1/metrics.jsonl"))).split("\n")
      .filter((l) => l.includes('"kind":"knn"')).map((l) => JSON.parse(l));
    assertEquals(knn.length, 2);
    for (const k of knn) {
      assertEquals([k.split.origin, k.split.sha256], [origin, m.split!.sha256]);
    }

    // The last command embedded the model train scored: its heads and its image side (the
    // demo's 84 px, not the default 224), so eval's 20-NN on it is train's last kNN score.
    const last = knn[knn.length - 1];
    assertEquals(last.k, 20);
    const s1 = await readEmbeddings(join(dir, "acevedo-s1.safetensors"));
    assertEquals(s1.meta["bloom.size"], "84");
    await bloom("eval", [
      "--train",
      "acevedo-s1.safetensors",
      "--protocol",
      "knn",
      "--out",
      "s1.json",
    ]);
    const s1Report: EvalReport = JSON.parse(await Deno.readTextFile(join(dir, "s1.json")));
    const nn20 = s1Report.rows.find((r) => r.protocol === "20-NN")!.runs[0];
    assertEquals(s1Report.split?.sha256, m.split!.sha256);
    assertEquals(
      [nn20.accuracy, nn20.balancedAccuracy],
      [last.accuracy, last.balancedAccuracy],
      "eval's 20-NN on the trained teacher's embeddings vs train's last kNN",
    );

    // The rest of the session's outputs, all in the user's folder and none in the checkout.
    assertEquals(outputsInCheckout(), before, "outputs the session left in the checkout");
    const bccd = await readManifest(join(dir, "data/bccd"));
    assertEquals([bccd.classes, bccd.samples], [["WBC"], 8]);
    const tuned = await readEmbeddings(join(dir, "acevedo-s1.safetensors"));
    assertEquals([tuned.rows, tuned.meta["bloom.split"]], [m.samples, origin]);
    for (const f of ["figs/umap.png", "figs/patch_pca.png", "runs/s1/teacher_final.pth"]) {
      assert((await Deno.stat(join(dir, f))).size > 0, f);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
