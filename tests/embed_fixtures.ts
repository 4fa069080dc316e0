/**
 * What the embed tests build from: folders of small synthetic cells and a
 * run of the tiny DINOv2-layout checkpoint (fixtures.ts, width 16, 2 heads)
 * that embeds in milliseconds on llvmpipe.
 */
import { join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import { loadCheckpoint } from "../graph/checkpoint.ts";
import { mulberry32 } from "../graph/random.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { EmbedRunOptions } from "../pipelines/embed_run.ts";
import { renderCell, SYNTHETIC_CLASSES } from "../pipelines/synthetic.ts";
import { writeTinyCheckpoint } from "./fixtures.ts";

/**
 * A folder per class (the first `classes` synthetic ones) of `perClass`
 * cells, PNG and JPEG in turn, with sides taken in turn from `sides`.
 * Returns the paths in the loader's order.
 */
export async function cellFolder(
  dir: string,
  perClass = 3,
  opts: { classes?: number; sides?: number[]; seed?: number } = {},
): Promise<string[]> {
  const rand = mulberry32(opts.seed ?? 9);
  const sides = opts.sides ?? [70, 48, 90];
  const files: string[] = [];
  for (const cls of SYNTHETIC_CLASSES.slice(0, opts.classes ?? 3)) {
    await Deno.mkdir(join(dir, cls), { recursive: true });
    for (let i = 0; i < perClass; i++) {
      const side = sides[i % sides.length];
      const px = renderCell(cls, rand, side);
      const ext = i % 2 ? "jpg" : "png";
      const path = join(dir, cls, `${cls}_${String(i).padStart(3, "0")}.${ext}`);
      const img = sharp(px, { raw: { width: side, height: side, channels: 3 } });
      await (ext === "png" ? img.png() : img.jpeg({ quality: 92 })).toFile(path);
      files.push(path);
    }
  }
  return files;
}

/**
 * `runEmbed`'s options (all but `out`) for the cells in `dir/cells` at 28 px
 * with a tiny model, written to `dir/tiny.pth` and loaded; `dispose` frees it.
 */
export async function tinyEmbedRun(
  gpu: Gpu,
  dir: string,
  batch: number,
): Promise<{ base: Omit<EmbedRunOptions, "out">; dispose(): void }> {
  await writeTinyCheckpoint(join(dir, "tiny.pth"));
  const m = await loadCheckpoint(gpu, join(dir, "tiny.pth"), { heads: 2 });
  return {
    base: {
      model: { arena: m.arena, config: m.config },
      weights: "tiny.pth",
      input: join(dir, "cells"),
      size: 28,
      batch,
      quiet: true,
      log: () => {},
      autotune: false,
    },
    dispose: () => m.arena.destroy(),
  };
}
