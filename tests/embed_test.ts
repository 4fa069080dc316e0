/**
 * deno task embed end to end: a folder of cells and a small PyTorch-made
 * checkpoint give PyTorch's features (PIL bilinear resize, ImageNet
 * normalisation, DINOv2 forward: scripts/oracles/embed_reference.py; 1e-4
 * relative per image in the norm sense), outputs numpy reads, resume after a
 * crash, parts and merge, and the errors a user meets first; the overlap of
 * batches (same bits as one at a time), resizing on worker threads (same
 * bytes) and the row journal's crash safety.
 */
import { join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import { readEmbeddings } from "../data/embeddings_file.ts";
import { InputError } from "../data/errors.ts";
import { loadCheckpoint } from "../graph/checkpoint.ts";
import { getGpu } from "../kernels/runtime.ts";
import { evalTransformRef } from "../pipelines/augment.ts";
import { embedBatch, prepareEmbedBatch } from "../pipelines/embed.ts";
import { mergeParts, runEmbed } from "../pipelines/embed_run.ts";
import { Model } from "../pipelines/model.ts";
import { openLoader } from "../pipelines/loader.ts";
import { resizeRgb } from "../pipelines/dataset/resample.ts";
import { ResizePool } from "../pipelines/dataset/resize_pool.ts";
import { renderCell, SYNTHETIC_CLASSES } from "../pipelines/synthetic.ts";
import { mulberry32 } from "../graph/random.ts";
import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { writeTinyCheckpoint } from "./fixtures.ts";
import { hasPython } from "./helpers.ts";
import { cellFolder, tinyEmbedRun } from "./embed_fixtures.ts";
import { relErr, runVitOracle } from "./vit_oracle.ts";

const torch = await hasPython("torch", "numpy", "PIL");
const CLI = new URL("../cli/embed.ts", import.meta.url).pathname;
const dec = new TextDecoder();

/** A folder per class of synthetic cells of assorted sizes (PNG and JPEG). */
function cells(dir: string, perClass = 3): Promise<string[]> {
  return cellFolder(dir, perClass);
}

async function embedCli(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", CLI, "--quiet", "--no-autotune", ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: dec.decode(out.stderr) };
}

Deno.test({
  name:
    "embed: a folder and a torch-made checkpoint give PyTorch's features; numpy reads the output",
  ignore: !torch,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const orc = await runVitOracle({ image: 56, posGrid: 4, batch: 1 });
    const dir = join(orc.dir, "cells");
    const files = await cells(dir);
    const out = join(orc.dir, "features.safetensors");
    const r = await embedCli([
      "--weights",
      `${orc.dir}/hub.pth`,
      "--heads",
      "2",
      "--input",
      dir,
      "--out",
      out,
      "--size",
      "56",
      "--batch",
      "4",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const emb = await readEmbeddings(out);
    assertEquals(emb.rows, files.length);
    assertEquals(emb.dim, 32);
    assertEquals(new Set(emb.labels), new Set(SYNTHETIC_CLASSES.slice(0, 3)));
    assertEquals(emb.meta.pool, "cls");
    const refPath = join(orc.dir, "ref.json");
    const py = await new Deno.Command("/usr/bin/python3", {
      args: [
        new URL("../scripts/oracles/embed_reference.py", import.meta.url).pathname,
        `${orc.dir}/hub.pth`,
        "56",
        refPath,
        ...files,
      ],
      env: { BLOOM_HEADS: "2" },
      stderr: "piped",
    }).output();
    assert(py.success, dec.decode(py.stderr));
    const ref: Record<string, number[]> = JSON.parse(await Deno.readTextFile(refPath));
    for (let i = 0; i < emb.rows; i++) {
      const want = ref[emb.paths[i]] ?? ref[join(dir, emb.paths[i])];
      assert(want, `no reference for ${emb.paths[i]}`);
      const got = emb.features.subarray(i * 32, (i + 1) * 32);
      const err = relErr(got, want);
      assert(err < 1e-4, `${emb.paths[i]}: differs from torch by ${err.toExponential(2)}`);
    }
    // npy for numpy users, with the metadata in a sidecar.
    const npy = join(orc.dir, "features.npy");
    assertEquals(
      (await embedCli([
        "--weights",
        `${orc.dir}/hub.pth`,
        "--heads",
        "2",
        "--input",
        dir,
        "--out",
        npy,
        "--size",
        "56",
      ])).code,
      0,
    );
    const np = await new Deno.Command("/usr/bin/python3", {
      args: [
        "-c",
        "import sys, numpy as np; a = np.load(sys.argv[1]); print(a.shape, a.dtype)",
        npy,
      ],
      stdout: "piped",
    }).output();
    assertEquals(dec.decode(np.stdout).trim(), `(${files.length}, 32) float32`);
    await Deno.remove(orc.dir, { recursive: true });
  },
});

Deno.test({
  name:
    "embed: a crashed run resumes; parts merge into the same file; --figures draws both figures",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const gpu = await getGpu();
    const dir = await Deno.makeTempDir({ prefix: "bloom-embed-" });
    await cells(join(dir, "cells"), 4);
    const { base, dispose } = await tinyEmbedRun(gpu, dir, 2);
    const full = await runEmbed(gpu, { ...base, out: join(dir, "full.safetensors") });
    assertEquals(full.rows, 12);
    const out = join(dir, "resumed.safetensors");
    await assertRejects(
      () => runEmbed(gpu, { ...base, out, crashAfterBatches: 2 }),
      Error,
      "simulated crash",
    );
    await assertRejects(() => Deno.stat(out), Deno.errors.NotFound, undefined);
    const again = await runEmbed(gpu, { ...base, out });
    assertEquals(again.resumedRows, 4);
    const a = await readEmbeddings(join(dir, "full.safetensors"));
    const b = await readEmbeddings(out);
    assertEquals(b.paths, a.paths);
    assertEquals([...b.features], [...a.features]);
    for (const i of [0, 1, 2]) {
      await runEmbed(gpu, {
        ...base,
        out: join(dir, "parts.safetensors"),
        part: { index: i, count: 3 },
      });
    }
    await assertRejects(() => mergeParts(join(dir, "nothing.safetensors")), Error, "no part files");
    await mergeParts(join(dir, "parts.safetensors"));
    const c = await readEmbeddings(join(dir, "parts.safetensors"));
    assertEquals(c.paths, a.paths);
    assertEquals([...c.features], [...a.features]);
    dispose();
    // --figures: the UMAP (SVG + PNG) coloured by label and the patch-PCA figure.
    const fig = join(dir, "figs");
    const r = await embedCli([
      "--weights",
      join(dir, "tiny.pth"),
      "--heads",
      "2",
      "--input",
      join(dir, "cells"),
      "--out",
      join(dir, "cli.safetensors"),
      "--size",
      "28",
      "--figures",
      fig,
    ]);
    assertEquals(r.code, 0, r.stderr);
    for (const f of ["umap.svg", "umap.png", "patch_pca.png"]) {
      const info = await sharp(join(fig, f)).metadata();
      assert(
        (info.width ?? 0) > 100 && (info.height ?? 0) > 50,
        `${f}: ${info.width}×${info.height}`,
      );
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "embed CLI: missing weights, bad flags and empty input are clear errors",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-embed-cli-" });
    const input = join(dir, "in"); // an --out inside --input is refused
    await Deno.mkdir(input);
    const out = ["--out", join(dir, "x.safetensors")];
    const random = ["--random-weights", "--input", input, ...out];
    // [arguments, exit code, what stderr must name]
    const cases: [string[], number, string[]][] = [
      [["--input", input, ...out], 2, ["DinoBloom-S.pth", "--random-weights"]],
      [[...random, "--size", "100"], 2, ["--size", "14"]],
      [[...random, "--part", "5/3"], 2, ["--part"]],
      [[...random, "--part", "/4"], 2, ["JOB_COMPLETION_INDEX"]],
      [[...out, "--merge"], 2, ["no part files"]],
      [[...random, "--pool", "maen"], 2, ["--pool", "did you mean 'mean'?"]],
      [[...random, "--wieghts", "w.pth"], 2, ["did you mean --weights?"]],
      [[...random, "--weights", "w.pth"], 2, ["--weights and --random-weights"]],
    ];
    for (const [args, code, named] of cases) {
      const r = await embedCli(args);
      assertEquals(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      for (const n of named) assert(r.stderr.includes(n), `${args.join(" ")}: ${r.stderr}`);
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "Model: embed, embedPixels and embedBatch are one path; sides the patches do not tile " +
    "are refused",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const gpu = await getGpu();
    const dir = await Deno.makeTempDir({ prefix: "bloom-model-" });
    await writeTinyCheckpoint(join(dir, "tiny.pth"));
    const model = await Model.load(join(dir, "tiny.pth"), { heads: 2, gpu });
    const rand = mulberry32(4);
    const cell = (side: number) => renderCell("monocyte", rand, side);
    const pixels = new Uint8Array([...cell(40), ...cell(40)]);
    const opts = { inputSize: 28 };
    const e = await model.embedPixels(pixels, 2, 40, opts);
    // Patches are counted whether or not the tokens are read back (Model used to say 0).
    assertEquals([e.count, e.dim, e.patches, e.pool, e.patchTokens], [2, 16, 4, "cls", undefined]);
    // The loader's path, with the same weights loaded again, gives the same bits.
    const loaded = await loadCheckpoint(gpu, join(dir, "tiny.pth"), { heads: 2 });
    const batch = { pixels, count: 2, size: 40 };
    const b = await embedBatch(gpu, { arena: loaded.arena, config: loaded.config }, batch, opts);
    loaded.arena.destroy();
    assertEquals([...b.features], [...e.features]);
    // Normalised images through `embed` (the CPU reference of the transform) agree.
    const images = evalTransformRef(pixels, { count: 2, size: 40, outSize: 28 });
    const n = await model.embed(images, [2, 3, 28, 28]);
    assertEquals([n.count, n.dim, n.patches], [2, 16, 4]);
    assertClose(n.features, e.features, { rtol: 1e-4, atol: 1e-5 });
    // cls+mean: CLS, then the mean of the patch tokens that come back with it.
    const both = await model.embedPixels(pixels, 2, 40, {
      ...opts,
      pool: "cls+mean",
      patchTokens: true,
    });
    assertEquals([both.dim, both.patchTokens!.length], [32, 2 * 4 * 16]);
    for (let i = 0; i < 2; i++) {
      assertEquals([...both.features.subarray(32 * i, 32 * i + 16)], [
        ...e.features.subarray(16 * i, 16 * i + 16),
      ]);
      const mean = new Float32Array(16);
      for (let p = 0; p < 4; p++) {
        for (let d = 0; d < 16; d++) mean[d] += both.patchTokens![(i * 4 + p) * 16 + d] / 4;
      }
      assertClose(both.features.subarray(32 * i + 16, 32 * i + 32), mean, {
        rtol: 1e-5,
        atol: 1e-6,
      });
    }
    // A 100 px source is resized to the model's side (224 by default: 16 × 16 patches).
    const big = await model.embedPixels(cell(100), 1, 100);
    assertEquals([big.count, big.patches], [1, 256]);
    // Sides the 14 px patches do not tile are refused, not cropped to 7 × 7 patches.
    await assertRejects(
      () => model.embedPixels(cell(100), 1, 100, { inputSize: 100 }),
      InputError,
      "inputSize (the side the cells are resized to) is 100, but the model's patches are 14 px: " +
        "the side must be a multiple of 14 and at least 14 (use 98 or 112",
    );
    await assertRejects(
      () => model.embed(new Float32Array(3 * 100 * 100), [1, 3, 100, 100]),
      InputError,
      "the image height is 100",
    );
    await assertRejects(
      () => model.embed(new Float32Array(3 * 28 * 7), [1, 3, 28, 7]),
      InputError,
      "the image width is 7, but the model's patches are 14 px: the side must be a multiple of " +
        "14 and at least 14 (use 14;",
    );
    await assertRejects(() => model.embedPixels(pixels, 3, 40), InputError, "expected 3·40·40·3");
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "embed overlap: batches recorded while the previous one runs, collected in order, give " +
    "the bits of one batch at a time; a dropped batch is given back",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const gpu = await getGpu();
    const dir = await Deno.makeTempDir({ prefix: "bloom-embed-ovl-" });
    await writeTinyCheckpoint(join(dir, "tiny.pth"));
    const m = await loadCheckpoint(gpu, join(dir, "tiny.pth"), { heads: 2 });
    const model = { arena: m.arena, config: m.config };
    const rand = mulberry32(5);
    const batches = [0, 1, 2].map(() => ({
      pixels: new Uint8Array([
        ...renderCell("neutrophil", rand, 30),
        ...renderCell("eosinophil", rand, 30),
      ]),
      count: 2,
      size: 30,
    }));
    const opts = { inputSize: 28, patchTokens: true, pool: "cls+mean" as const };
    const one = [];
    for (const b of batches) one.push(await embedBatch(gpu, model, b, opts));
    // The run's order: record k+1 while k runs, collect k, submit k+1.
    const submits = gpu.stats().submits;
    const jobs = [prepareEmbedBatch(gpu, model, batches[0], opts)];
    jobs[0].submit();
    const got = [];
    for (let k = 1; k <= batches.length; k++) {
      if (k < batches.length) jobs.push(prepareEmbedBatch(gpu, model, batches[k], opts));
      got.push(await jobs[k - 1].collect());
      jobs[k]?.submit();
    }
    assertEquals(gpu.stats().submits - submits, 3, "one submit per batch: work and read-backs");
    for (let k = 0; k < batches.length; k++) {
      assertEquals([...got[k].features], [...one[k].features]);
      assertEquals([...got[k].patchTokens!], [...one[k].patchTokens!]);
    }
    // Dropped unread (a run that stops), then the GPU goes on as usual.
    const dropped = prepareEmbedBatch(gpu, model, batches[0], opts);
    dropped.submit();
    dropped.discard();
    assertEquals([...(await embedBatch(gpu, model, batches[1], opts)).features], [
      ...one[1].features,
    ]);
    m.arena.destroy();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "loader: resizes on worker threads give the bytes of the calling thread",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-resize-pool-" });
    await cellFolder(join(dir, "cells"), 4, { sides: [70, 23, 90, 41] });
    const pixels = async (resizeThreads: number) => {
      const l = await openLoader(join(dir, "cells"), {
        batchSize: 12,
        size: 28,
        resample: "bilinear",
        workers: 3,
        resizeThreads,
      });
      const out: number[][] = [];
      for await (const b of l.batches()) out.push([...b.pixels]);
      return out;
    };
    assertEquals(await pixels(2), await pixels(0));
    const pool = new ResizePool(2);
    try {
      const src = renderCell("monocyte", mulberry32(2), 37);
      for (const filter of ["bilinear", "lanczos"] as const) {
        assertEquals(
          [...await pool.resize(src, 37, 37, 20, 50, filter)],
          [...resizeRgb(src, 37, 37, 20, 50, filter)],
        );
      }
      await assertRejects(
        () => pool.resize(src, 36, 37, 20, 20, "bilinear"),
        RangeError,
        "36x37x3",
      );
    } finally {
      pool.close();
    }
    await assertRejects(
      () => pool.resize(new Uint8Array(3), 1, 1, 2, 2, "bilinear"),
      Error,
      "closed",
    );
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "embed journal: rows appended after the last commit (a crash) are cut off on resume",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const gpu = await getGpu();
    const dir = await Deno.makeTempDir({ prefix: "bloom-embed-journal-" });
    await cellFolder(join(dir, "cells"), 4, { sides: [30] });
    const tiny = await tinyEmbedRun(gpu, dir, 2);
    const base = { ...tiny.base, patchTokens: true };
    const full = join(dir, "full.safetensors");
    await runEmbed(gpu, { ...base, out: full });
    const out = join(dir, "out.safetensors");
    await assertRejects(
      () => runEmbed(gpu, { ...base, out, crashAfterBatches: 3 }),
      Error,
      "crash",
    );
    // A crash between an append and its commit leaves bytes past progress.json in every file.
    for (const f of ["features.f32", "patch_tokens.f32", "rows.jsonl", "errors.jsonl"]) {
      await Deno.writeFile(join(`${out}.partial`, f), new Uint8Array(13).fill(7), { append: true });
    }
    const logs: string[] = [];
    const r = await runEmbed(gpu, { ...base, out, log: (l) => logs.push(l) });
    assertEquals(r.resumedRows, 6, logs.join("\n"));
    assertEquals(await Deno.readFile(out), await Deno.readFile(full));
    // Another run's journal (other options) is not continued.
    await assertRejects(
      () => runEmbed(gpu, { ...base, out, crashAfterBatches: 1 }),
      Error,
      "crash",
    );
    const other = await runEmbed(gpu, { ...base, out, batch: 3, log: (l) => logs.push(l) });
    assertEquals(other.resumedRows, 0);
    assert(logs.some((l) => /from a run with other inputs or options; starting over/.test(l)));
    tiny.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});
