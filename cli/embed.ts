/**
 * `deno task embed`: cell images → embeddings with DINOv2 / DinoBloom
 * weights, as the paper's evaluation does (224×224 bilinear, ImageNet
 * normalisation, CLS after the final norm).
 */
import { join } from "node:path";
import { parseFormat, POOLINGS, readEmbeddings } from "../data/embeddings_file.ts";
import { matrix } from "../eval/matrix.ts";
import { writePatchPcaFigure } from "../eval/patch_pca_figure.ts";
import { writeUmapFigure } from "../eval/umap_figure.ts";
import { ParamArena } from "../graph/arena.ts";
import { loadCheckpoint } from "../graph/checkpoint.ts";
import { ARCHS, type VitArch, vitConfig, vitParamSpecs } from "../graph/vit.ts";
import { getGpu } from "../kernels/runtime.ts";
import { embedBatch, type EmbedModel, type Pool } from "../pipelines/embed.ts";
import { mergeParts, parsePart, runEmbed } from "../pipelines/embed_run.ts";
import { openLoader } from "../pipelines/loader.ts";
import { initialValue, seeded } from "../pipelines/train/trainer.ts";
import { type FlagSpec, numberFlag, parseFlags, runMain, usage, UsageError } from "./args.ts";

const SUMMARY = `Embeds cell images with DINOv2 or DinoBloom weights: resized to 224×224 (bilinear),
ImageNet-normalised, CLS token after the final norm (DINOv2's x_norm_clstoken), in input order.`;

const WEIGHTS_HELP = `bloom needs model weights: --weights FILE. It reads
  - DinoBloom checkpoints DinoBloom-S.pth, -B, -L, -G ({"teacher": …}; github.com/marrlab/DinoBloom,
    released on Zenodo and Hugging Face),
  - DINOv2 hub checkpoints dinov2_vits14_pretrain.pth, vitb14, vitl14, vitg14
    (github.com/facebookresearch/dinov2, dl.fbaipublicfiles.com/dinov2/…),
  - timm-style model.safetensors exports of those, and bloom's own checkpoints (deno task train).
To try the pipeline without weights, pass --random-weights [--arch vit_small]: the embeddings are
then meaningless.`;

const FLAGS: Record<string, FlagSpec> = {
  weights: { type: "string", help: "checkpoint: DinoBloom/DINOv2 .pth, .safetensors, bloom's own" },
  arch: {
    type: "string",
    help: `check the weights are this size: ${Object.keys(ARCHS).join(", ")}`,
  },
  heads: { type: "string", help: "attention heads, for custom-size checkpoints only" },
  input: {
    type: "string",
    help: "images: ingested shards (dir with manifest.json), a folder, a list file",
  },
  out: { type: "string", help: "output file (.safetensors, .npy or .csv)" },
  format: { type: "string", help: "safetensors, npy or csv (default: from --out's extension)" },
  batch: { type: "string", help: "images per forward pass", default: "32" },
  pool: { type: "string", help: "cls, mean (patch tokens) or cls+mean", default: "cls" },
  "patch-tokens": {
    type: "boolean",
    help: "also store patch tokens [N, Np, D] (safetensors; small sets)",
  },
  size: { type: "string", help: "input side in pixels (multiple of 14)", default: "224" },
  part: {
    type: "string",
    help: "embed part i/n only (i from JOB_COMPLETION_INDEX when written /n)",
  },
  merge: { type: "boolean", help: "join the part files of --out in order" },
  "random-weights": { type: "boolean", help: "random weights of --arch (to try the pipeline)" },
  figures: { type: "string", help: "write a UMAP of the embeddings and the patch-PCA figure here" },
  workers: { type: "string", help: "image decoding threads (default: cores)" },
  quiet: { type: "boolean", help: "no progress line" },
  "no-autotune": {
    type: "boolean",
    help: "skip measuring kernel variants for this model (done once per adapter, then cached)",
  },
};

async function loadModel(
  v: Record<string, unknown>,
): Promise<{ model: EmbedModel; weights: string }> {
  const arch = v.arch as string | undefined;
  if (arch !== undefined && !(arch in ARCHS)) {
    throw new UsageError(
      `--arch ${arch} is unknown; choose one of ${Object.keys(ARCHS).join(", ")}`,
    );
  }
  const gpu = await getGpu();
  if (typeof v.weights === "string") {
    const m = await loadCheckpoint(gpu, v.weights, {
      arch: arch as VitArch | undefined,
      heads: numberFlag(v as never, "heads", { integer: true, min: 1 }),
    });
    return { model: { arena: m.arena, config: m.config }, weights: v.weights };
  }
  if (!v["random-weights"]) throw new UsageError(WEIGHTS_HELP);
  const config = vitConfig((arch ?? "vit_small") as VitArch);
  const specs = vitParamSpecs(config);
  const arena = ParamArena.create(gpu, specs);
  const rand = seeded(0);
  for (const s of specs) arena.set(s.name, initialValue(s, rand));
  console.error(`warning: random ${config.arch} weights; the embeddings carry no meaning`);
  return { model: { arena, config }, weights: `random:${config.arch}` };
}

async function figures(dir: string, out: string, input: string, model: EmbedModel, size: number) {
  await Deno.mkdir(dir, { recursive: true });
  const emb = await readEmbeddings(out);
  const gpu = await getGpu();
  if (emb.labels) {
    const f = await writeUmapFigure(
      join(dir, "umap"),
      matrix(emb.features, emb.rows, emb.dim),
      emb.labels,
      {
        title: "UMAP of cell embeddings",
        subtitle: `${emb.meta.weights ?? ""} · ${emb.rows} cells`,
      },
    );
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
  await writePatchPcaFigure(path, images, {
    data: e.patchTokens!,
    images: pixels.length,
    tokens: e.patches,
    dim: model.config.dim,
  });
  console.error(`wrote ${path}`);
}

async function main(): Promise<number> {
  const parsed = parseFlags("embed", SUMMARY, FLAGS, Deno.args);
  if (parsed === "help") {
    console.log(usage("embed", SUMMARY, FLAGS) + "\n\n" + WEIGHTS_HELP);
    return 0;
  }
  const v = parsed.values;
  if (parsed.positionals.length) {
    throw new UsageError(`unexpected argument '${parsed.positionals[0]}' (flags start with --)`);
  }
  if (typeof v.out !== "string") {
    throw new UsageError("--out FILE is required (.safetensors, .npy or .csv)");
  }
  let format;
  try {
    format = typeof v.format === "string" ? parseFormat(v.format, "--format") : undefined;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (v.merge) {
    const r = await mergeParts(v.out, format);
    console.error(`merged ${r.parts} parts (${r.rows} rows) into ${v.out}`);
    return 0;
  }
  if (typeof v.input !== "string") {
    throw new UsageError("--input is required: ingested shards, an image folder or a list file");
  }
  const pool = v.pool as string;
  if (!(POOLINGS as readonly string[]).includes(pool)) {
    throw new UsageError(`--pool must be one of ${POOLINGS.join(", ")}, got '${pool}'`);
  }
  const size = numberFlag(v, "size", { integer: true, min: 14 })!;
  if (size % 14 !== 0) {
    throw new UsageError(`--size must be a multiple of the patch size 14, got ${size}`);
  }
  let part;
  if (typeof v.part === "string") {
    try {
      part = parsePart(v.part, (k) => Deno.env.get(k));
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  const { model, weights } = await loadModel(v);
  const gpu = await getGpu();
  console.error(
    `bloom embed on ${gpu.describe()}: ${model.config.arch} (dim ${model.config.dim}) from ${weights}`,
  );
  const summary = await runEmbed(gpu, {
    model,
    weights,
    input: v.input,
    out: v.out,
    format,
    batch: numberFlag(v, "batch", { integer: true, min: 1 }),
    pool: pool as Pool,
    patchTokens: Boolean(v["patch-tokens"]),
    size,
    part,
    workers: numberFlag(v, "workers", { integer: true, min: 1 }),
    quiet: Boolean(v.quiet),
    autotune: !v["no-autotune"],
  });
  console.error(
    `wrote ${summary.out}: ${summary.rows} × ${summary.dim}` +
      (summary.resumedRows ? ` (${summary.resumedRows} resumed)` : "") +
      (summary.failed ? `, ${summary.failed} images skipped` : "") +
      ` at ${summary.imagesPerSecond.toFixed(1)} images/s`,
  );
  if (typeof v.figures === "string") await figures(v.figures, summary.out, v.input, model, size);
  model.arena.destroy();
  return 0;
}

if (import.meta.main) runMain(main);
