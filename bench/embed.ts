/**
 * End-to-end embedding throughput: a folder of JPEGs (generated 360×363
 * cells, Acevedo's size) → decode → bilinear resize to 224 → ViT-S forward →
 * features file, with bloom (`runEmbed`) next to PyTorch CPU doing the same in
 * the same run (`scripts/bench/torch_embed.py`). Goal on a software adapter:
 * ≥ 0.3 of PyTorch CPU; on a real GPU: ahead of PyTorch eager on that GPU.
 */
import { join } from "node:path";
import sharp from "sharp";
import { ParamArena } from "../graph/arena.ts";
import { vitConfig, vitParamSpecs } from "../graph/vit.ts";
import { runEmbed } from "../pipelines/embed_run.ts";
import { renderCell, SYNTHETIC_CLASSES } from "../pipelines/synthetic.ts";
import { initialValue, seeded } from "../pipelines/train/trainer.ts";
import type { BenchRow, BenchSuite } from "./harness.ts";

const TORCH = new URL("../scripts/bench/torch_embed.py", import.meta.url).pathname;

/** `n` synthetic cells as 360×363 JPEGs in class folders. */
async function makeFolder(dir: string, n: number): Promise<void> {
  const rand = seeded(1);
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

async function torchRate(input: string, out: string, batch: number): Promise<number | null> {
  try {
    const r = await new Deno.Command("/usr/bin/python3", {
      args: [TORCH, "--input", input, "--out", out, "--batch", String(batch), "--repeat", "1"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!r.success) {
      console.warn(
        `torch_embed.py failed: ${new TextDecoder().decode(r.stderr).trim().slice(-400)}`,
      );
      return null;
    }
    return JSON.parse(new TextDecoder().decode(r.stdout)).rate;
  } catch {
    return null;
  }
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
      const rand = seeded(0);
      for (const s of specs) arena.set(s.name, initialValue(s, rand));
      const model = { arena, config };
      const opts = {
        model,
        weights: "random:vit_small",
        input: join(dir, "cells"),
        batch,
        quiet: true,
        log: () => {},
      };
      // Warm-up (pipelines, autotuning), then the timed run.
      await runEmbed(gpu, { ...opts, out: join(dir, "warm.safetensors") });
      const t0 = performance.now();
      const r = await runEmbed(gpu, {
        ...opts,
        out: join(dir, "features.safetensors"),
        autotune: false,
      });
      const rate = r.rows / ((performance.now() - t0) / 1000);
      arena.destroy();
      const peer = await torchRate(join(dir, "cells"), join(dir, "torch.npy"), batch);
      return [{
        name: `embed vit_small ${n} JPEGs 360×363 → 224, batch ${batch}`,
        ms: 1000 / rate,
        rate,
        peak: peer ?? NaN,
        peakName: "pytorch cpu",
        ratio: peer ? rate / peer : NaN,
        note: peer
          ? "ms per image; decode+resize+forward+write on both sides"
          : "torch missing: no peer",
      }];
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
};
