/**
 * The web page's embedding throughput against the command line's, in the same
 * run: a folder of synthetic cells (JPEG, 360 px) embedded by the page in
 * Chromium (its engine worker: browser decoding, bloom's kernels on the
 * browser's WebGPU) and by `runEmbed` (the `embed` command's pipeline:
 * libvips decoding, the same kernels on Deno's WebGPU). Both time decoding,
 * resizing, the ViT and reading back; both are warmed up first (kernel
 * compilation, the command line's autotuning, the page's check pass and one
 * cell) and then timed. The page runs on the same adapter class as Deno: SwiftShader where
 * Deno has a software adapter (llvmpipe), the system GPU otherwise; the note
 * names both adapters.
 */
import { join } from "node:path";
import { loadCheckpoint } from "../graph/checkpoint.ts";
import { type VitConfig, vitConfig } from "../graph/vit.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import {
  findChromium,
  loadWeights,
  openPage,
  snapshot,
  waitSettled,
  writeRandomCheckpoint,
} from "../app/driver.ts";
import { embedRate } from "./embed.ts";
import type { BenchRow, BenchSuite } from "./harness.ts";

/** What one run measures. */
export interface AppBenchPlan {
  name: string;
  config: VitConfig;
  /** Cells per class (five classes), their side on disk, the side the model sees, the batch. */
  perClass: number;
  imageSide: number;
  inputSize: number;
  batch: number;
  /** Heads, for custom sizes. */
  heads?: number;
}

/** The suite for `plan` (the smoke test runs a tiny one). */
export function makeAppSuite(plan: (quick: boolean) => AppBenchPlan): BenchSuite {
  return {
    name: "app",
    async run({ gpu, quick }): Promise<BenchRow[]> {
      const chromium = findChromium();
      if (!chromium) {
        console.warn("bench app: no Chromium (install Debian's chromium): suite skipped");
        return [];
      }
      const p = plan(quick);
      const dir = await Deno.makeTempDir({ prefix: "bloom-bench-app-" });
      try {
        const weights = join(dir, "weights.pth");
        await writeRandomCheckpoint(weights, p.config, 0, 0);
        const cells = join(dir, "cells");
        const folder = await writeSyntheticImageFolder(cells, {
          perClass: p.perClass,
          size: p.imageSide,
          format: "jpg",
        });
        const n = p.perClass * 5;

        // The command line: warm-up (kernels, autotuning), then the timed pass.
        const m = await loadCheckpoint(gpu, weights, { heads: p.heads });
        const cliRate = await embedRate(gpu, dir, {
          model: { arena: m.arena, config: m.config },
          weights: "weights.pth",
          input: cells,
          batch: p.batch,
          size: p.inputSize,
        });
        m.arena.destroy();

        // The page: loading compiles and checks the model; one cell warms up; then the timed pass.
        const s = await openPage(chromium, {
          adapter: gpu.adapter.isFallback ? "software" : "gpu",
        });
        try {
          const loaded = await loadWeights(s.page, weights, {
            size: p.inputSize,
            heads: p.heads,
            batch: p.batch,
          });
          if (loaded !== "loaded") {
            const why = await s.page.textContent("#messages");
            throw new Error(`bench app: the page could not load the weights: ${why}`);
          }
          // Warm-up: one cell (the load already compiled every kernel with a check pass).
          await s.page.setInputFiles("#files-input", folder.files[0]);
          await waitSettled(s.page);
          await s.page.click("#clear-cells");
          await s.page.setInputFiles("#folder-input", cells);
          await waitSettled(s.page);
          const timed = (await snapshot(s.page)).lastJob;
          if (!timed || timed.cells !== n) {
            throw new Error(
              `bench app: the page embedded ${timed?.cells ?? 0} of ${n} cells: ` +
                (await s.page.textContent("#messages")),
            );
          }
          const snap = await snapshot(s.page);
          const pageRate = timed.cells / timed.seconds;
          return [{
            name:
              `app embed ${p.name}: ${n} JPEGs ${p.imageSide} px → ${p.inputSize}, batch ${p.batch}`,
            ms: 1000 / pageRate,
            rate: pageRate,
            peak: cliRate,
            peakName: "deno cli",
            ratio: pageRate / cliRate,
            note: `ms per cell; page on ${snap.adapter?.name ?? "?"} (Chromium), CLI on ` +
              `${gpu.adapter.name}; decode+resize+forward+read-back on both sides`,
          }];
        } finally {
          await s.close();
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  };
}

export const appSuite = makeAppSuite((quick) =>
  quick
    ? {
      name: "vit_small",
      config: vitConfig("vit_small"),
      perClass: 1,
      imageSide: 360,
      inputSize: 112,
      batch: 5,
    }
    : {
      name: "vit_small",
      config: vitConfig("vit_small"),
      perClass: 4,
      imageSide: 360,
      inputSize: 224,
      batch: 10,
    }
);
