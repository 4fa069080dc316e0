/**
 * `deno task train`: DinoBloom finetuning (docs/recipe.md). With no arguments
 * it finetunes a small ViT on built-in synthetic blood cells and prints kNN
 * accuracy before and after. Every flag, path and the output directory's
 * state are checked before the GPU starts or anything is written.
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
import { checkRunInputs, runTraining } from "../pipelines/train/run.ts";
import { Interrupted } from "../pipelines/interrupt.ts";
import { resumeHint, stopOnSignals } from "./interrupt.ts";
import { resolveWeights } from "../pipelines/weights/download.ts";
import { type Comm, shareFromRoot } from "../pipelines/mpi/comm.ts";
import { ranked } from "../pipelines/mpi/world.ts";
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
import { InputError } from "../data/errors.ts";
import { exists } from "../data/file.ts";
import { openLoader } from "../pipelines/loader.ts";
import { checkOutputFree } from "../pipelines/output_lock.ts";
import { verifySha256 } from "../data/hash.ts";

/** `deno task train`: its flags and help. */
export const TRAIN = command({
  name: "train",
  summary: `Finetunes DINOv2 the DinoBloom way (two global crops; DINO + iBOT + KoLeo; EMA teacher).
Without --data it trains a small ViT on built-in synthetic blood cells and reports kNN accuracy
before and after. Checkpoints are {"teacher": state_dict} files DinoBloom's PyTorch code loads.`,
  epilog: `Without --init a ViT preset starts from random weights; DinoBloom finetunes DINOv2's
pretrained weights (--init dinov2-vits14 for dinobloom-s: a name is downloaded, verified and cached
on first use, docs/weights.md; or a checkpoint file). See docs/recipe.md.`,
  flags: {
    config: {
      type: "string",
      value: "FILE",
      help: 'JSON config: {"preset": NAME, …overrides} (docs/recipe.md)',
    },
    preset: {
      type: "choice",
      choices: Object.keys(PRESETS),
      help: "model and recipe (default: from --init's architecture, else demo)",
    },
    data: {
      type: "string",
      value: "PATH",
      help: "training images: ingested shards, a folder (per class or flat) or a list file",
    },
    init: {
      type: "string",
      value: "NAME|FILE",
      help: "initial weights: a name (dinov2-vits14, dinobloom-s, …) or a checkpoint file",
    },
    offline: { type: "boolean", help: "named weights from the cache only (or BLOOM_OFFLINE=1)" },
    out: { type: "string", value: "DIR", help: "output directory (default runs/train-<date>)" },
    steps: {
      type: "int",
      min: 1,
      help: "optimiser steps (default: epochs × epoch length of the config)",
    },
    resume: { type: "boolean", help: "continue the run in --out from its resume file" },
    batch: { type: "int", min: 2, help: "images per step (both crops of each are used)" },
    "micro-batch": {
      type: "int",
      min: 2,
      help: "images per forward/backward pass (gradient accumulation)",
    },
    eval: { type: "string", value: "PATH", help: "labelled images for periodic kNN evaluation" },
    "eval-every": {
      type: "int",
      min: 0,
      help: "evaluate every N steps (default: start and end only)",
    },
    "save-every": { type: "int", min: 1, help: "checkpoint every N steps (default 1000)" },
    format: {
      type: "choice",
      choices: ["pth", "safetensors"],
      default: "pth",
      help: "checkpoint format",
    },
    seed: {
      type: "int",
      min: 0,
      max: 0xffffffff,
      help: "random seed (data order, augmentation, masks)",
    },
    ...RUN_FLAGS,
    ...VERIFY_FLAGS,
    ...WAIT_FLAGS,
  },
});

type Flags = FlagValues<typeof TRAIN.flags>;

/** The preset DinoBloom trains for each architecture. */
const PRESET_OF_ARCH: Partial<Record<VitArch | "custom", string>> = {
  vit_small: "dinobloom-s",
  vit_base: "dinobloom-b",
  vit_large: "dinobloom-l",
  vit_giant2: "dinobloom-g",
};

/**
 * The preset `--init`'s architecture calls for, when neither --config nor --preset names one;
 * checks the checkpoint's header. Rank 0 reads it and tells the other ranks, which never open
 * --init (it may be on rank 0's machine only). Every rank calls this at the same point.
 */
async function presetOfInit(f: Flags, comm: Comm): Promise<string | undefined> {
  let preset: string | null = null;
  if (comm.rank === 0 && f.init !== undefined && f.config === undefined) {
    const ck = await openCheckpoint(f.init);
    ck.file.close();
    if (f.preset === undefined) {
      preset = PRESET_OF_ARCH[ck.config.arch] ?? null;
      if (!preset) {
        throw new UsageError(
          `--init ${f.init} holds a custom-size ViT (dim ${ck.config.dim}); give --config with its shapes`,
        );
      }
    }
  }
  return (await shareFromRoot(comm, preset)) ?? undefined;
}

/** The training config the flags ask for (`initPreset`: what --init's architecture calls for). */
async function pickConfig(f: Flags, initPreset: string | undefined): Promise<TrainConfig> {
  if (f.config !== undefined && f.preset !== undefined) {
    throw new UsageError("--config and --preset: give one (a config names its preset)");
  }
  let cfg: TrainConfig;
  if (f.config !== undefined) {
    let text: string;
    try {
      text = await Deno.readTextFile(f.config);
    } catch (e) {
      throw new UsageError(`--config ${f.config}: cannot read it (${(e as Error).message})`);
    }
    cfg = parseConfig(text, f.config);
  } else {
    cfg = PRESETS[f.preset ?? initPreset ?? "demo"]();
  }
  if (f.batch !== undefined) {
    cfg = { ...cfg, batch: f.batch, microBatch: Math.min(cfg.microBatch, f.batch) };
  }
  if (f["micro-batch"] !== undefined) cfg = { ...cfg, microBatch: f["micro-batch"] };
  if (f.seed !== undefined) cfg = { ...cfg, seed: f.seed };
  return validateConfig(cfg, "training config");
}

/** InputError unless `data` holds at least one batch of images (when its size is known). */
async function checkOneBatch(data: string, batch: number, followLinks: boolean): Promise<void> {
  let n: number | null;
  try {
    n = (await openLoader(data, { batchSize: batch, followLinks })).length;
  } catch (e) {
    // The loader words its errors for library callers ("openLoader: …"); name the flag.
    if (!(e instanceof InputError && e.message.startsWith("openLoader: "))) throw e;
    throw new InputError(`--data: ${e.message.slice("openLoader: ".length)}`);
  }
  if (n !== null && n < batch) {
    throw new InputError(
      `--data ${data}: ${n} images are fewer than one batch of ${batch}; lower --batch or add data`,
    );
  }
}

if (import.meta.main) {
  // Under a launcher (mpirun, srun, an MPIJob) every rank runs this; alone, one process does.
  const train = ranked(async (f: Flags, comm: Comm) => {
    const root = comm.rank === 0;
    if (f.resume && f.out === undefined) {
      throw new UsageError("--resume needs --out DIR: the run directory to continue");
    }
    const sha = verifyHash(f["verify-sha256"], f.init, "--init");
    // Paths and the state of --out first: before a download, a config or the GPU.
    const out = f.out ??
      join("runs", `train-${new Date().toISOString().replace(/[:T]/g, "-").slice(0, 19)}`);
    // --out is rank 0's (the others write nothing); runTraining checks --data on every rank.
    if (root) {
      await checkRunInputs({ out, resume: f.resume, data: f.data, evalData: f.eval });
      // Another run writing --out stops this one now, not after the weights load.
      await checkOutputFree(out, "directory", { wait: f.wait });
    }
    if (f.init !== undefined && root) {
      // Only rank 0 reads --init (a name is downloaded first): the others receive the weights.
      f.init = await resolveWeights(f.init, { offline: f.offline, progress: { silent: f.quiet } });
      if (sha !== undefined) await verifySha256(f.init, sha);
    }
    const cfg = await pickConfig(f, await presetOfInit(f, comm));
    if (root && f.init === undefined && !f.resume && cfg.vit.arch !== "custom") {
      console.error(
        `warning: no --init: the ${cfg.vit.arch} backbone starts from random weights; ` +
          "DinoBloom finetunes DINOv2's pretrained weights (pass --init with a DINOv2 hub checkpoint)",
      );
    }
    // One step's images, counted before the GPU starts (runTraining checks each rank's share).
    if (root && f.data !== undefined) await checkOneBatch(f.data, cfg.batch, f["follow-links"]);
    let data = f.data;
    let evalData = f.eval;
    if (data === undefined) {
      // Built-in data: a few hundred synthetic cells, and a held-out labelled set for kNN.
      const size = Math.max(cfg.imageSize, 112);
      // Each rank of a data-parallel run writes (and reads) its own copy; rank 0 evaluates.
      const train = join(out, "synthetic", comm.size > 1 ? `train-rank${comm.rank}` : "train");
      const val = join(out, "synthetic", "val");
      const written = await exists(train);
      if (!f.resume || (comm.size > 1 && !written)) {
        if (root) {
          console.error(
            `no --data: writing built-in synthetic blood cells to ${join(out, "synthetic")}`,
          );
        }
        await writeSyntheticImageFolder(train, { perClass: 48, size, seed: cfg.seed + 1 });
        if (root) await writeSyntheticImageFolder(val, { perClass: 60, size, seed: cfg.seed + 2 });
      }
      data = train;
      evalData ??= val;
    }
    const gpu = await getGpu();
    console.error(`bloom train on ${gpu.describe()}${comm.size > 1 ? ` (${comm.where})` : ""}`);
    // Ctrl-C, SIGTERM: a checkpoint after this step, then the command that resumes. Under MPI a
    // signal stops every rank at once instead (runTraining's handlers).
    const resume = [
      ...Deno.args,
      ...(f.out === undefined ? ["--out", out] : []),
      ...(f.resume ? [] : ["--resume"]),
    ];
    const stop = comm.size === 1
      ? stopOnSignals("train", resume, "a checkpoint after this step")
      : null;
    try {
      const summary = await runTraining(gpu, {
        config: cfg,
        data,
        init: f.init,
        out,
        steps: f.steps,
        resume: f.resume,
        evalData,
        evalEvery: f["eval-every"],
        saveEvery: f["save-every"],
        format: f.format,
        workers: f.workers,
        followLinks: f["follow-links"],
        quiet: f.quiet,
        autotune: !f["no-autotune"],
        signal: stop?.signal,
        comm,
        wait: f.wait,
      });
      if (!root) return 0;
      if (summary.knn.length >= 2) {
        const a = summary.knn[0];
        const b = summary.knn[summary.knn.length - 1];
        const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
        console.log(
          `kNN (k=${b.k}) accuracy on held-out cells: ${pct(a.accuracy)} at step ${a.step} → ` +
            `${pct(b.accuracy)} at step ${b.step} ` +
            `(balanced ${pct(a.balancedAccuracy)} → ${pct(b.balancedAccuracy)})`,
        );
      }
      console.log(`teacher checkpoint: ${summary.finalCheckpoint}`);
      console.log(`metrics: ${join(out, "metrics.jsonl")}`);
      return 0;
    } catch (e) {
      if (!(e instanceof Interrupted)) throw e;
      console.error(resumeHint("train", resume));
      return stop?.exitCode() ?? 130;
    } finally {
      stop?.close();
    }
  });
  runCommand(TRAIN, train);
}
