/**
 * `deno task train`: DinoBloom finetuning. With no arguments it finetunes a
 * small ViT on built-in synthetic blood cells and prints kNN accuracy before
 * and after.
 */
import { join } from "node:path";
import { openCheckpoint } from "../graph/checkpoint.ts";
import type { VitArch } from "../graph/vit.ts";
import { getGpu } from "../kernels/runtime.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import {
  parseConfig,
  PRESETS,
  type TrainConfig,
  validateConfig,
} from "../pipelines/train/config.ts";
import { InterruptedError, runTraining } from "../pipelines/train/run.ts";
import { NonFiniteLossError } from "../pipelines/train/trainer.ts";
import { type FlagSpec, numberFlag, parseFlags, runMain, usage, UsageError } from "./args.ts";

const SUMMARY =
  `Finetunes DINOv2 the DinoBloom way (two global crops; DINO + iBOT + KoLeo; EMA teacher).
Without --data it trains a small ViT on built-in synthetic blood cells and reports kNN accuracy
before and after. Checkpoints are {"teacher": state_dict} files DinoBloom's PyTorch code loads.`;

const FLAGS: Record<string, FlagSpec> = {
  config: { type: "string", help: 'JSON config: {"preset": NAME, …overrides} (see README)' },
  preset: {
    type: "string",
    help: `one of ${
      Object.keys(PRESETS).join(", ")
    } (default: from --init's architecture, else demo)`,
  },
  data: {
    type: "string",
    help: "training images: ingested shards, a folder (per class or flat) or a list file",
  },
  init: { type: "string", help: "initial weights: DINOv2 hub or DinoBloom checkpoint" },
  out: { type: "string", help: "output directory (default runs/train-<date>)" },
  steps: { type: "string", help: "optimiser steps (default: epochs × epoch length of the config)" },
  resume: { type: "boolean", help: "continue the run in --out from its resume file" },
  batch: { type: "string", help: "images per step (both crops of each are used)" },
  "micro-batch": {
    type: "string",
    help: "images per forward/backward pass (gradient accumulation)",
  },
  eval: { type: "string", help: "labelled images for periodic kNN evaluation" },
  "eval-every": { type: "string", help: "evaluate every N steps (default: start and end only)" },
  "save-every": { type: "string", help: "checkpoint every N steps (default 1000)" },
  format: { type: "string", help: "checkpoint format: pth or safetensors", default: "pth" },
  seed: { type: "string", help: "random seed (data order, augmentation, masks)" },
  workers: { type: "string", help: "image decoding threads (default: cores)" },
  quiet: { type: "boolean", help: "no progress line" },
  "no-autotune": {
    type: "boolean",
    help: "skip measuring kernel variants for this model (done once per adapter, then cached)",
  },
};

async function pickConfig(v: Record<string, unknown>): Promise<TrainConfig> {
  let cfg: TrainConfig;
  if (typeof v.config === "string") {
    let text: string;
    try {
      text = await Deno.readTextFile(v.config);
    } catch (e) {
      throw new UsageError(`--config ${v.config}: cannot read it (${(e as Error).message})`);
    }
    cfg = parseConfig(text, v.config);
  } else {
    let preset = v.preset as string | undefined;
    if (!preset && typeof v.init === "string") {
      const ck = await openCheckpoint(v.init);
      ck.file.close();
      const byArch: Partial<Record<VitArch | "custom", string>> = {
        vit_small: "dinobloom-s",
        vit_base: "dinobloom-b",
        vit_large: "dinobloom-l",
        vit_giant2: "dinobloom-g",
      };
      preset = byArch[ck.config.arch];
      if (!preset) {
        throw new UsageError(
          `--init ${v.init} holds a custom-size ViT (dim ${ck.config.dim}); give --config with its shapes`,
        );
      }
    }
    preset ??= "demo";
    if (!PRESETS[preset]) {
      throw new UsageError(
        `--preset ${preset} is unknown; choose one of ${Object.keys(PRESETS).join(", ")}`,
      );
    }
    cfg = PRESETS[preset]();
  }
  const batch = numberFlag(v as never, "batch", { integer: true, min: 2 });
  if (batch !== undefined) cfg = { ...cfg, batch, microBatch: Math.min(cfg.microBatch, batch) };
  const micro = numberFlag(v as never, "micro-batch", { integer: true, min: 2 });
  if (micro !== undefined) cfg = { ...cfg, microBatch: micro };
  const seed = numberFlag(v as never, "seed", { integer: true, min: 0 });
  if (seed !== undefined) cfg = { ...cfg, seed };
  try {
    return validateConfig(cfg, "training config");
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

async function main(): Promise<number> {
  const parsed = parseFlags("train", SUMMARY, FLAGS, Deno.args);
  if (parsed === "help") {
    console.log(usage("train", SUMMARY, FLAGS));
    return 0;
  }
  const v = parsed.values;
  if (parsed.positionals.length) {
    throw new UsageError(`unexpected argument '${parsed.positionals[0]}' (flags start with --)`);
  }
  const format = v.format as string;
  if (format !== "pth" && format !== "safetensors") {
    throw new UsageError(`--format must be pth or safetensors, got '${format}'`);
  }
  if (v.resume && typeof v.out !== "string") {
    throw new UsageError("--resume needs --out DIR: the run directory to continue");
  }
  const cfg = await pickConfig(v);
  const out = typeof v.out === "string"
    ? v.out
    : join("runs", `train-${new Date().toISOString().replace(/[:T]/g, "-").slice(0, 19)}`);
  let data = v.data as string | undefined;
  let evalData = v.eval as string | undefined;
  const demo = data === undefined;
  if (demo) {
    // Built-in data: a few hundred synthetic cells, and a held-out labelled set for kNN.
    const size = Math.max(cfg.imageSize, 112);
    const train = join(out, "synthetic", "train");
    const val = join(out, "synthetic", "val");
    if (!v.resume) {
      console.error(
        `no --data: writing built-in synthetic blood cells to ${join(out, "synthetic")}`,
      );
      await writeSyntheticImageFolder(train, { perClass: 48, size, seed: cfg.seed + 1 });
      await writeSyntheticImageFolder(val, { perClass: 60, size, seed: cfg.seed + 2 });
    }
    data = train;
    evalData ??= val;
  }
  const gpu = await getGpu();
  console.error(`bloom train on ${gpu.describe()}`);
  const controller = new AbortController();
  let interrupts = 0;
  const onSigint = () => {
    interrupts++;
    if (interrupts > 1) Deno.exit(130);
    console.error("\nstopping after this step and writing a checkpoint (Ctrl-C again to quit now)");
    controller.abort();
  };
  Deno.addSignalListener("SIGINT", onSigint);
  try {
    const summary = await runTraining(gpu, {
      config: cfg,
      data: data!,
      init: v.init as string | undefined,
      out,
      steps: numberFlag(v, "steps", { integer: true, min: 1 }),
      resume: Boolean(v.resume),
      evalData,
      evalEvery: numberFlag(v, "eval-every", { integer: true, min: 0 }),
      saveEvery: numberFlag(v, "save-every", { integer: true, min: 1 }),
      format,
      workers: numberFlag(v, "workers", { integer: true, min: 1 }),
      quiet: Boolean(v.quiet),
      autotune: !v["no-autotune"],
      signal: controller.signal,
    });
    if (summary.knn.length >= 2) {
      const a = summary.knn[0];
      const b = summary.knn[summary.knn.length - 1];
      console.log(
        `kNN (k=${b.k}) accuracy on held-out cells: ${(100 * a.accuracy).toFixed(1)}% at step ` +
          `${a.step} → ${(100 * b.accuracy).toFixed(1)}% at step ${b.step} ` +
          `(balanced ${(100 * a.balancedAccuracy).toFixed(1)}% → ${
            (100 * b.balancedAccuracy).toFixed(1)
          }%)`,
      );
    }
    console.log(`teacher checkpoint: ${summary.finalCheckpoint}`);
    console.log(`metrics: ${join(out, "metrics.jsonl")}`);
    return 0;
  } catch (e) {
    if (e instanceof InterruptedError) return 130;
    if (e instanceof NonFiniteLossError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
}

if (import.meta.main) runMain(main);
