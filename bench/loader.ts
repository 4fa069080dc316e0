/**
 * Loader throughput, next to what training consumes: tar shards of 224² PNG cells (built-in
 * synthetic cells, written by the ingest) → decode on all cores → shuffle buffer → batches →
 * GPU upload, in images/s, against the fastest training step timed in the same run. The
 * loader keeps up when the ratio is ≥ 1 (issue target: at least what the ViT-S step consumes).
 */
import { join } from "node:path";
import { runIngest } from "../pipelines/ingest/run.ts";
import { openLoader, uploadBatch } from "../pipelines/loader.ts";
import { SYNTHETIC_CLASSES, writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { type BenchRow, median } from "./harness.ts";

/** The consumer the loader is compared with: a training row of the same run. */
export interface LoaderConsumer {
  name: string;
  /** Images per second it takes in. */
  rate: number;
}

/** Images per second of one pass of the loader over `shards`, uploads included. */
async function onePass(gpu: Gpu, shards: string, batch: number, epoch: number): Promise<number> {
  const loader = await openLoader(shards, { batchSize: batch, seed: 7, dropLast: true });
  const t0 = performance.now();
  let images = 0;
  for await (const b of loader.batches(epoch)) {
    gpu.release(uploadBatch(gpu, b));
    images += b.count;
  }
  await gpu.sync();
  if (images === 0) throw new Error(`loader bench: ${shards} gave no full batch of ${batch}`);
  return images / ((performance.now() - t0) / 1000);
}

/** The loader row: median of `iters` passes after one warm-up pass. */
export async function loaderRow(
  gpu: Gpu,
  consumer: LoaderConsumer | null,
  quick: boolean,
): Promise<BenchRow> {
  const perClass = quick ? 8 : 32;
  const batch = quick ? 8 : 32;
  const iters = quick ? 2 : 3;
  const tmp = await Deno.makeTempDir({ prefix: "bloom-bench-loader-" });
  try {
    await writeSyntheticImageFolder(join(tmp, "cells"), { perClass, size: 224, seed: 3 });
    const shards = join(tmp, "shards");
    const s = await runIngest(
      { input: join(tmp, "cells"), layout: "imagefolder", out: shards, shardSize: 32 },
      { progress: false },
    );
    await onePass(gpu, shards, batch, 0);
    const rates: number[] = [];
    for (let i = 0; i < iters; i++) rates.push(await onePass(gpu, shards, batch, i + 1));
    const rate = median(rates);
    const peak = consumer?.rate ?? NaN;
    const workers = navigator.hardwareConcurrency ?? 1;
    return {
      name: `loader 224² png shards → gpu, batch ${batch}`,
      ms: 1000 / rate,
      rate,
      peak,
      peakName: consumer ? `${consumer.name} img/s` : "no training row",
      ratio: rate / peak,
      note: `${s.samples} images (${SYNTHETIC_CLASSES.length} classes) in ` +
        `${s.manifest.shards.length} shards, shuffled, ${workers} decode workers, median of ` +
        `${iters} passes; ratio ≥ 1: the loader keeps up with the fastest step`,
    };
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}
