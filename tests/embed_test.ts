/**
 * deno task embed end to end: a folder of cells and a small PyTorch-made
 * checkpoint give PyTorch's features (PIL bilinear resize, ImageNet
 * normalisation, DINOv2 forward: scripts/oracles/embed_reference.py; 1e-4
 * relative per image in the norm sense), outputs numpy reads, resume after a
 * crash, parts and merge, and the errors a user meets first.
 */
import { join } from "node:path";
import sharp from "sharp";
import { readEmbeddings } from "../data/embeddings_file.ts";
import { loadCheckpoint } from "../graph/checkpoint.ts";
import { getGpu } from "../kernels/runtime.ts";
import { mergeParts, runEmbed } from "../pipelines/embed_run.ts";
import { renderCell, SYNTHETIC_CLASSES } from "../pipelines/synthetic.ts";
import { seeded } from "../pipelines/train/trainer.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { hasPython } from "./helpers.ts";
import { relErr, runVitOracle } from "./vit_oracle.ts";

const torch = await hasPython("torch", "numpy", "PIL");
const CLI = new URL("../cli/embed.ts", import.meta.url).pathname;
const dec = new TextDecoder();

/** A folder per class of synthetic cells of assorted sizes (PNG and JPEG). */
async function cells(dir: string, perClass = 3): Promise<string[]> {
  const rand = seeded(9);
  const files: string[] = [];
  for (const cls of SYNTHETIC_CLASSES.slice(0, 3)) {
    await Deno.mkdir(join(dir, cls), { recursive: true });
    for (let i = 0; i < perClass; i++) {
      const side = [70, 48, 90][i % 3];
      const px = renderCell(cls, rand, side);
      const ext = i % 2 ? "jpg" : "png";
      const path = join(dir, cls, `${cls}_${i}.${ext}`);
      const img = sharp(px, { raw: { width: side, height: side, channels: 3 } });
      await (ext === "png" ? img.png() : img.jpeg({ quality: 92 })).toFile(path);
      files.push(path);
    }
  }
  return files;
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
    // A tiny random DINOv2-layout model, written by bloom (the loader does not care who wrote it).
    const { vitParamSpecs } = await import("../graph/vit.ts");
    const { initialValue } = await import("../pipelines/train/trainer.ts");
    const { writePth } = await import("../data/pth_writer.ts");
    const cfg = {
      arch: "custom" as const,
      dim: 16,
      depth: 1,
      heads: 2,
      mlpHidden: 32,
      ffn: "mlp" as const,
      patch: 14,
      registers: 0,
      posGrid: 2,
      eps: 1e-6,
      posInterp: "runtime" as const,
    };
    const rand = seeded(3);
    const sd: Record<string, { dtype: "f32"; shape: readonly number[]; data: Float32Array }> = {};
    for (const s of vitParamSpecs(cfg)) {
      sd[s.name] = {
        dtype: "f32",
        shape: s.shape,
        data: initialValue(s, rand).map((x) => x + 0.1 * (rand() - 0.5)),
      };
    }
    await writePth(join(dir, "tiny.pth"), sd);
    const m = await loadCheckpoint(gpu, join(dir, "tiny.pth"), { heads: 2 });
    const model = { arena: m.arena, config: m.config };
    const base = {
      model,
      weights: "tiny.pth",
      input: join(dir, "cells"),
      size: 28,
      batch: 2,
      chunk: 4,
      quiet: true,
      log: () => {},
      autotune: false,
    };
    const full = await runEmbed(gpu, { ...base, out: join(dir, "full.safetensors") });
    assertEquals(full.rows, 12);
    const out = join(dir, "resumed.safetensors");
    await assertRejects(
      () => runEmbed(gpu, { ...base, out, crashAfterChunks: 1 }),
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
    m.arena.destroy();
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
    const out = ["--out", join(dir, "x.safetensors")];
    const random = ["--random-weights", "--input", dir, ...out];
    // [arguments, exit code, what stderr must name]
    const cases: [string[], number, string[]][] = [
      [["--input", dir, ...out], 2, ["DinoBloom-S.pth", "--random-weights"]],
      [[...random, "--size", "100"], 2, ["--size", "14"]],
      [[...random, "--part", "5/3"], 2, ["--part"]],
      [[...random, "--part", "/4"], 2, ["JOB_COMPLETION_INDEX"]],
      [[...out, "--merge"], 1, ["no part files"]],
    ];
    for (const [args, code, named] of cases) {
      const r = await embedCli(args);
      assertEquals(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      for (const n of named) assert(r.stderr.includes(n), `${args.join(" ")}: ${r.stderr}`);
    }
    await Deno.remove(dir, { recursive: true });
  },
});
