/**
 * `deno task embed`: cell images → embeddings with DINOv2 / DinoBloom
 * weights, as the paper's evaluation does (224×224 bilinear, ImageNet
 * normalisation, CLS after the final norm; docs/evaluation.md). Every flag,
 * path and the checkpoint's header are checked before the weights load or
 * the GPU starts.
 */
import { basename, join } from "node:path";
import {
  EMBEDDINGS_FORMATS,
  formatFromPath,
  POOLINGS,
  readEmbeddings,
} from "../data/embeddings_file.ts";
import { matrix } from "../eval/matrix.ts";
import { writePatchPcaFigure } from "../eval/patch_pca_figure.ts";
import { COLOR_BY, type ColorBy } from "../eval/cell_groups.ts";
import { writeEmbeddingFigure } from "../eval/embedding_figure.ts";
import { headKindOf } from "../eval/head_file.ts";
import { KnnIndex } from "../eval/knn_index.ts";
import { Probe } from "../eval/probe.ts";
import { loadCheckpoint, openCheckpoint } from "../graph/checkpoint.ts";
import { randomArena } from "../graph/init.ts";
import { ARCHS, type VitArch, vitConfig, vitParamSpecs } from "../graph/vit.ts";
import { getGpu } from "../kernels/runtime.ts";
import { embedBatch, type EmbedModel } from "../pipelines/embed.ts";
import { mergeParts, parsePart, partPath, runEmbed } from "../pipelines/embed_run.ts";
import { checkOutputFree } from "../pipelines/output_lock.ts";
import { Interrupted } from "../pipelines/interrupt.ts";
import { checkSource, openLoader } from "../pipelines/loader.ts";
import { resolveWeights } from "../pipelines/weights/download.ts";
import {
  command,
  type FlagValues,
  RUN_FLAGS,
  runCommand,
  UsageError,
  VERIFY_FLAGS,
  verifyHash,
  WAIT_FLAGS,
} from "./args.ts";
import { verifySha256 } from "../data/hash.ts";
import type { Comm } from "../pipelines/mpi/comm.ts";
import { ranked } from "../pipelines/mpi/world.ts";
import { reportStopped, stopOnSignals } from "./interrupt.ts";

const WEIGHTS_HELP = `bloom needs model weights: --weights NAME or FILE. A name is downloaded,
verified and cached on first use: dinobloom-s|b|l|g, dinov2-vit{s,b,l,g}14[-reg4] (./bloom weights
list; docs/weights.md). As files it reads
  - DinoBloom checkpoints DinoBloom-S.pth, -B, -L, -G ({"teacher": …}; github.com/marrlab/DinoBloom,
    released on Zenodo and Hugging Face),
  - DINOv2 hub checkpoints dinov2_vits14_pretrain.pth, vitb14, vitl14, vitg14
    (github.com/facebookresearch/dinov2, dl.fbaipublicfiles.com/dinov2/…),
  - timm-style model.safetensors exports of those, and bloom's own checkpoints (train).
  docs/checkpoints.md describes each layout.
To try the pipeline without weights, pass --random-weights [--arch vit_small]: the embeddings are
then meaningless.`;

/** `deno task embed`: its flags and help. */
export const EMBED = command({
  name: "embed",
  summary: `Embeds cell images with DINOv2 or DinoBloom weights: resized to 224×224 (bilinear),
ImageNet-normalised, CLS token after the final norm (DINOv2's x_norm_clstoken), in input order.`,
  epilog: WEIGHTS_HELP,
  positionalHint: "pass the images with --input",
  flags: {
    weights: {
      type: "string",
      value: "NAME|FILE",
      help: "a name (dinobloom-s, dinov2-vitb14, …) or a checkpoint: .pth, .safetensors",
    },
    offline: { type: "boolean", help: "named weights from the cache only (or BLOOM_OFFLINE=1)" },
    arch: {
      type: "choice",
      choices: Object.keys(ARCHS) as VitArch[],
      help: "check the weights are this size (with --random-weights: the size to build)",
    },
    heads: { type: "int", min: 1, help: "attention heads, for custom-size checkpoints only" },
    input: {
      type: "string",
      value: "PATH",
      help: "images: ingested shards (dir with manifest.json or .tar), a folder, a list file",
    },
    out: {
      type: "string",
      value: "FILE",
      required: true,
      help: "output file (.safetensors, .npy or .csv)",
    },
    format: {
      type: "choice",
      choices: EMBEDDINGS_FORMATS,
      help: "output format (default: from --out's extension, else safetensors)",
    },
    batch: { type: "int", min: 1, default: 32, help: "images per forward pass" },
    pool: {
      type: "choice",
      choices: POOLINGS,
      default: "cls",
      help: "CLS token, mean of the patch tokens, or both concatenated",
    },
    "patch-tokens": {
      type: "boolean",
      help: "also store patch tokens [N, Np, D] (safetensors; small sets)",
    },
    size: {
      type: "int",
      min: 14,
      multipleOf: 14,
      help: "input side in pixels, a multiple of the patch (14) (default 224, or the side a " +
        "checkpoint from bloom train was trained at)",
    },
    part: {
      type: "string",
      value: "i/n",
      help: "embed part i of n only (i from JOB_COMPLETION_INDEX when written /n)",
    },
    merge: { type: "boolean", help: "join the part files of --out in order" },
    "random-weights": {
      type: "boolean",
      help: "random weights of --arch (to try the pipeline; meaningless embeddings)",
    },
    figures: {
      type: "string",
      value: "DIR",
      help: "write a UMAP of the embeddings and the patch-PCA figure here",
    },
    "color-by": {
      type: "choice",
      choices: COLOR_BY,
      default: "label",
      help: "what the UMAP colours: label, predicted class (with --head) or source",
    },
    "source-by": {
      type: "string",
      value: "RULE",
      help: "source of each cell for --color-by source: depth:N (N-th folder) or a regex",
    },
    head: {
      type: "string",
      value: "FILE",
      help: "a saved probe or kNN head (eval --save), for --color-by predicted",
    },
    ...RUN_FLAGS,
    ...VERIFY_FLAGS,
    ...WAIT_FLAGS,
  },
});

type Flags = FlagValues<typeof EMBED.flags>;

/** The input side when --size is not given: the paper's evaluation protocol. */
const DEFAULT_SIZE = 224;

/**
 * Checks the weights flags and the checkpoint's header (layout, shapes,
 * --arch) without loading a tensor. Returns the side a checkpoint from
 * `bloom train` was trained at (it records it), which embeds it by default.
 */
async function checkWeights(f: Flags): Promise<number | undefined> {
  if (f.weights !== undefined && f["random-weights"]) {
    throw new UsageError("--weights and --random-weights: give one");
  }
  const sha = verifyHash(f["verify-sha256"], f.weights, "--weights");
  if (f.weights === undefined) {
    if (!f["random-weights"]) throw new UsageError(WEIGHTS_HELP);
    return undefined;
  }
  f.weights = await resolveWeights(f.weights, {
    offline: f.offline,
    progress: { silent: f.quiet },
  });
  if (sha !== undefined) await verifySha256(f.weights, sha);
  const ck = await openCheckpoint(f.weights, { arch: f.arch, heads: f.heads });
  ck.file.close();
  const trained = Number(ck.meta["bloom.image_size"]);
  const patch = ck.config.patch;
  return Number.isSafeInteger(trained) && trained >= patch && trained % patch === 0
    ? trained
    : undefined;
}

/** Loads the weights (or builds random ones) onto the GPU. */
async function loadModel(f: Flags): Promise<{ model: EmbedModel; weights: string }> {
  const gpu = await getGpu();
  if (f.weights !== undefined) {
    const m = await loadCheckpoint(gpu, f.weights, { arch: f.arch, heads: f.heads });
    return { model: { arena: m.arena, config: m.config }, weights: f.weights };
  }
  const config = vitConfig(f.arch ?? "vit_small");
  const arena = randomArena(gpu, vitParamSpecs(config), 0);
  console.error(`warning: random ${config.arch} weights; the embeddings carry no meaning`);
  return { model: { arena, config }, weights: `random:${config.arch}` };
}

async function figures(
  dir: string,
  out: string,
  input: string,
  model: EmbedModel,
  size: number,
  color: { by: ColorBy; sourceBy?: string; head?: string },
) {
  await Deno.mkdir(dir, { recursive: true });
  const emb = await readEmbeddings(out);
  const gpu = await getGpu();
  if (emb.labels || color.by !== "label") {
    const x = matrix(emb.features, emb.rows, emb.dim);
    const predicted = color.by === "predicted" && color.head
      ? (await headKindOf(color.head)) === "knn"
        ? (await (await KnnIndex.load(color.head)).query(x)).labels
        : (await Probe.load(color.head)).predict(x).labels
      : undefined;
    const f = await writeEmbeddingFigure(dir, [emb], color.by, {
      sourceBy: color.sourceBy ?? "depth:0",
      predictions: predicted && [{ file: emb.path, rows: [...predicted.keys()], predicted }],
      name: color.by === "label" ? "umap" : undefined,
    });
    console.error(`wrote ${f.svg} and ${f.png}`);
  } else {
    console.error("no labels in the input: skipping the UMAP figure (it is coloured by label)");
  }
  // Fig. 3: PCA of the patch tokens of 8 cells spread over the input, shown under the cells.
  const n = emb.rows;
  const picks = [
    ...new Set(
      Array.from({ length: Math.min(8, n) }, (_, i) => Math.floor((i * n) / Math.min(8, n))),
    ),
  ];
  const pixels: Uint8Array[] = [];
  for (const i of picks) {
    const one = await openLoader(input, {
      batchSize: 1,
      size,
      resample: "bilinear",
      range: [i, i + 1],
    });
    for await (const b of one.batches()) pixels.push(b.pixels.slice(0, size * size * 3));
  }
  const all = new Uint8Array(pixels.length * size * size * 3);
  pixels.forEach((p, i) => all.set(p, i * p.length));
  const batch = {
    pixels: all,
    labels: new Int32Array(pixels.length).fill(-1),
    keys: picks.map(String),
    meta: [],
    count: pixels.length,
    size,
    indices: picks,
  };
  const e = await embedBatch(gpu, model, batch, { patchTokens: true, inputSize: size });
  const images = pixels.map((data) => ({ data, width: size, height: size, channels: 3 as const }));
  const path = join(dir, "patch_pca.png");
  const w = emb.meta.weights;
  const weights = !w
    ? `unknown weights, ${model.config.arch}`
    : w.startsWith("random:")
    ? `random ${model.config.arch} weights (meaningless)`
    : `${basename(w)}, ${model.config.arch}`;
  await writePatchPcaFigure(path, images, {
    data: e.patchTokens!,
    images: pixels.length,
    tokens: e.patches,
    dim: model.config.dim,
  }, {
    title: `Patch-token PCA (components 1-3 as RGB): ${weights}`,
    labels: picks.map((i) => emb.labels?.[i] ?? null),
  });
  console.error(`wrote ${path}`);
}

if (import.meta.main) {
  // Under a launcher every rank embeds one part (as --part i/n would) and rank 0 merges them.
  const embed = ranked(async (f: Flags, comm: Comm) => {
    const root = comm.rank === 0;
    if (f.merge) {
      if (!root) return 0;
      const r = await mergeParts(f.out, f.format);
      console.error(`merged ${r.parts} parts (${r.rows} rows) into ${f.out}`);
      return 0;
    }
    if (f.input === undefined) {
      throw new UsageError(
        "--input is required: ingested shards, an image folder or a list file",
      );
    }
    const format = f.format ?? formatFromPath(f.out) ?? "safetensors";
    if (f.figures !== undefined && f["color-by"] === "predicted" && f.head === undefined) {
      throw new UsageError(
        "--color-by predicted needs --head: a probe or kNN head from eval --save",
      );
    }
    if (f["patch-tokens"] && format !== "safetensors") {
      throw new UsageError(
        `--patch-tokens needs the safetensors format; --out ${f.out} is ${format}`,
      );
    }
    if (comm.size > 1 && f.part !== undefined) {
      throw new UsageError(
        `--part ${f.part} and ${comm.size} MPI ranks both split the input; use one of them`,
      );
    }
    const part = comm.size > 1
      ? { index: comm.rank, count: comm.size }
      : f.part === undefined
      ? undefined
      : parsePart(f.part, (k) => Deno.env.get(k));
    await checkSource(f.input, "--input", { path: f.out, flag: "--out" });
    // Another run writing --out stops this one now, not after the weights load.
    const target = part ? partPath(f.out, part.index, part.count) : f.out;
    await checkOutputFree(target, "file", { wait: f.wait });
    const trainedSize = await checkWeights(f);
    // A model bloom trained at another side (the demo: 84 px) embeds at that side, as
    // train --eval scored it; the released checkpoints at the protocol's 224.
    const size = f.size ?? trainedSize ?? DEFAULT_SIZE;
    if (f.size === undefined && size !== DEFAULT_SIZE) {
      console.error(
        `embed: ${size} px input, the side ${f.weights} was trained at (--size to change)`,
      );
    }
    const { model, weights } = await loadModel(f);
    const gpu = await getGpu();
    console.error(
      `bloom embed on ${gpu.describe()}: ${model.config.arch} (dim ${model.config.dim}) from ${weights}` +
        (comm.size > 1 ? ` (${comm.where})` : ""),
    );
    // Ctrl-C, SIGTERM: keep the rows read back, say how to resume (one process; ranks under a
    // launcher are stopped by it).
    const stop = comm.size === 1 ? stopOnSignals("embed", Deno.args, "the rows read back") : null;
    let summary;
    try {
      summary = await runEmbed(gpu, {
        model,
        weights,
        input: f.input,
        out: f.out,
        format: f.format,
        batch: f.batch,
        pool: f.pool,
        patchTokens: f["patch-tokens"],
        size,
        part,
        workers: f.workers,
        followLinks: f["follow-links"],
        quiet: f.quiet,
        autotune: !f["no-autotune"],
        wait: f.wait,
        signal: stop?.signal,
      });
    } catch (e) {
      if (!(stop && e instanceof Interrupted)) throw e;
      reportStopped("embed", Deno.args, e.kept);
      return stop.exitCode();
    } finally {
      stop?.close();
    }
    console.error(
      `wrote ${summary.out}: ${summary.rows} × ${summary.dim}` +
        (summary.resumedRows ? ` (${summary.resumedRows} resumed)` : "") +
        (summary.failed ? `, ${summary.failed} images skipped` : "") +
        ` at ${summary.imagesPerSecond.toFixed(1)} images/s`,
    );
    let out = summary.out;
    if (comm.size > 1) {
      // Every part is on disk once every rank is past here; --out must be on a shared filesystem.
      await comm.barrier();
      if (!root) return 0;
      const r = await mergeParts(f.out, f.format);
      console.error(`merged ${r.parts} parts (${r.rows} rows) into ${f.out}`);
      out = f.out;
    }
    if (f.figures !== undefined) {
      await figures(f.figures, out, f.input, model, size, {
        by: f["color-by"],
        sourceBy: f["source-by"],
        head: f.head,
      });
    }
    model.arena.destroy();
    return 0;
  });
  runCommand(EMBED, embed);
}
