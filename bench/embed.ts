/**
 * End-to-end embedding throughput: a folder of JPEGs (generated 360×363
 * cells, Acevedo's size) → decode → bilinear resize to 224 → ViT-S forward →
 * features file, with bloom (`runEmbed`) next to PyTorch CPU doing the same
 * (`scripts/bench/torch_embed.py`), the two alternating full passes over the
 * folder with the same thread count. Goal on a software adapter: ≥ 0.5 of
 * PyTorch CPU; on a real GPU: ahead of PyTorch eager on that GPU.
 */
import { join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import { ParamArena } from "../graph/arena.ts";
import { vitConfig, vitParamSpecs } from "../graph/vit.ts";
import { type EmbedRunOptions, runEmbed } from "../pipelines/embed_run.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { renderCell, SYNTHETIC_CLASSES } from "../pipelines/synthetic.ts";
import { initialValue } from "../graph/init.ts";
import { mulberry32 } from "../graph/random.ts";
import type { EmbedModel } from "../pipelines/embed.ts";
import type { BenchRow, BenchSuite } from "./harness.ts";
import { forwardOnce, randomTensor, tuneFor } from "./model.ts";
import { firstRunRow } from "./first_run.ts";
import { QUIET_WAIT_MS } from "./load.ts";
import { comparisonRow, interleave, ourThreads, PeerSession, type Rounds } from "./peers.ts";

const TORCH = new URL("../scripts/bench/torch_embed.py", import.meta.url).pathname;

/** `n` synthetic cells as 360×363 JPEGs in class folders. */
async function makeFolder(dir: string, n: number): Promise<void> {
  const rand = mulberry32(1);
  for (let i = 0; i < n; i++) {
    const cls = SYNTHETIC_CLASSES[i % SYNTHETIC_CLASSES.length];
    await Deno.mkdir(join(dir, cls), { recursive: true });
    const px = renderCell(cls, rand, 363);
    await sharp(px, { raw: { width: 363, height: 363, channels: 3 } })
      .resize(360, 363, { fit: "fill" })
      .jpeg({ quality: 95 })
      .toFile(join(dir, cls, `${cls}_${String(i).padStart(5, "0")}.jpg`));
  }
}

/**
 * Images per second of an embedding run (`runEmbed`, what the embed command
 * does) over `opts.input`: a warm-up run (pipelines, autotuning), then the
 * timed one. Outputs go to `dir`.
 */
export async function embedRate(
  gpu: Gpu,
  dir: string,
  opts: Omit<EmbedRunOptions, "out" | "quiet" | "log" | "autotune">,
): Promise<number> {
  const base = { ...opts, quiet: true, log: () => {} };
  await runEmbed(gpu, { ...base, out: join(dir, "warm.safetensors") });
  const t0 = performance.now();
  const r = await runEmbed(gpu, {
    ...base,
    out: join(dir, "features.safetensors"),
    autotune: false,
  });
  return r.rows / ((performance.now() - t0) / 1000);
}

/**
 * Our side of the PyTorch row: `runEmbed` over the folder (what the embed command does: decode,
 * resize, forward, write), one full pass per round, each into a fresh output file.
 */
function embedRound(
  gpu: Gpu,
  dir: string,
  opts: Omit<EmbedRunOptions, "out" | "quiet" | "log" | "autotune">,
): () => Promise<number> {
  let round = 0;
  return async () => {
    const out = join(dir, `round-${round++}.safetensors`);
    const t0 = performance.now();
    await runEmbed(gpu, { ...opts, out, quiet: true, log: () => {}, autotune: false });
    const ms = performance.now() - t0;
    await Deno.remove(out).catch(() => {});
    return ms;
  };
}

/**
 * The embed path against the forward alone, in interleaved rounds (embed, forward, embed,
 * forward, …): `runEmbed` over the folder (decode, resize, upload, transform, forward,
 * read-back, writing) against the same model's forward over as many images at the same batch
 * on images already on the GPU, each batch's CLS rows read back — wall time on both sides, as
 * the model suite times the forward. Goal: embed ≥ 0.9 × the forward's images/s. Run it after
 * a warm-up embed (pipelines compiled, files in the page cache), as the suite does.
 */
export async function embedVsForwardRow(
  gpu: Gpu,
  dir: string,
  opts: {
    model: EmbedModel;
    input: string;
    images: number;
    batch: number;
    rounds: number;
    maxRounds?: number;
    /** Wait before each round for a quiet machine (bench/load.ts). */
    quietWaitMs?: number;
  },
): Promise<BenchRow> {
  const { model, batch: B } = opts;
  const images = randomTensor(gpu, [B, 3, 224, 224]);
  const sink = gpu.empty([B, model.config.dim]);
  const batches = Math.ceil(opts.images / B);
  const embed = () => {
    const t0 = performance.now();
    return runEmbed(gpu, {
      model,
      weights: "random:vit_small",
      input: opts.input,
      batch: B,
      out: join(dir, "vs-forward.safetensors"),
      quiet: true,
      log: () => {},
      autotune: false,
    }).then((r) => {
      if (r.rows !== opts.images) throw new Error(`embedded ${r.rows} of ${opts.images} images`);
      return performance.now() - t0;
    });
  };
  const forward = {
    name: "forward only",
    run: async () => {
      const t0 = performance.now();
      for (let b = 0; b < batches; b++) {
        forwardOnce(gpu, model.arena, model.config, images, sink);
        await gpu.readF32(sink);
      }
      return performance.now() - t0;
    },
  };
  let rounds: Rounds;
  try {
    await forward.run(); // warm-up outside the rounds
    rounds = await interleave(opts.rounds, embed, forward, {
      maxRounds: opts.maxRounds,
      quietWaitMs: opts.quietWaitMs,
    });
  } finally {
    gpu.release(images, sink);
  }
  return comparisonRow(
    `embed vs forward only, vit_small ${opts.images} JPEGs → 224, batch ${B}`,
    { ours: opts.images, peer: batches * B },
    rounds,
    "forward only",
    { ours: ourThreads(), peer: ourThreads() },
    `img/s; decode+resize+upload+forward+read-back+write against ${batches} forwards of ` +
      `${B} images on the GPU with their CLS rows read back, wall time both; goal ≥ 0.9`,
  );
}

export const embedSuite: BenchSuite = {
  name: "embed",
  async run({ gpu, quick }): Promise<BenchRow[]> {
    const n = quick ? 16 : 96;
    const batch = quick ? 8 : 32;
    const dir = await Deno.makeTempDir({ prefix: "bloom-bench-embed-" });
    try {
      await makeFolder(join(dir, "cells"), n);
      const config = vitConfig("vit_small");
      const specs = vitParamSpecs(config);
      const arena = ParamArena.create(gpu, specs);
      const rand = mulberry32(0);
      for (const s of specs) arena.set(s.name, initialValue(s, rand));
      const model = { arena, config };
      // Tuned as a machine is after its first runs (the command's budget would stop earlier).
      const tuned = await tuneFor(gpu, config, { images: batch, image: 224, training: false });
      const threads = ourThreads();
      const peer = await PeerSession.open(TORCH, [
        ...["--input", join(dir, "cells"), "--out", join(dir, "torch.npy")],
        ...["--batch", String(batch), "--threads", String(threads), "--warmup", "1"],
      ]);
      let rounds: Rounds;
      try {
        const ours = embedRound(gpu, dir, {
          model,
          weights: "random:vit_small",
          input: join(dir, "cells"),
          batch,
        });
        await ours(); // warm-up: pipelines compiled, files in the page cache
        rounds = await interleave(quick ? 5 : 7, ours, peer, {
          maxRounds: quick ? 5 : 11,
          quietWaitMs: quick ? 0 : QUIET_WAIT_MS,
        });
      } finally {
        if (peer instanceof PeerSession) await peer.close();
      }
      const vsForward = await embedVsForwardRow(gpu, dir, {
        model,
        input: join(dir, "cells"),
        images: n,
        batch,
        rounds: quick ? 3 : 5,
        maxRounds: quick ? 3 : 9,
        quietWaitMs: quick ? 0 : QUIET_WAIT_MS,
      });
      arena.destroy();
      const torchRow = comparisonRow(
        `embed vit_small ${n} JPEGs 360×363 → 224, batch ${batch}`,
        { ours: n, peer: peer instanceof PeerSession ? peer.items : n },
        rounds,
        "pytorch cpu",
        { ours: threads, peer: peer instanceof PeerSession ? Number(peer.info.threads) : threads },
        `ms per folder; decode+resize+forward+write on both sides; ${tuned}; target ≥ 0.5`,
      );
      // A new user's first run, in a fresh process with empty caches (bench/first_run.ts).
      await makeFolder(join(dir, "first"), 2 * batch);
      const first = await firstRunRow(batch, join(dir, "first"), {
        quietWaitMs: quick ? 0 : QUIET_WAIT_MS,
      });
      return [vsForward, torchRow, first];
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
};
