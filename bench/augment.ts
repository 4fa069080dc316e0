/**
 * Augmentation benchmarks: DinoBloom's two global crops for a batch of 32
 * synthetic 224 px cells (64 crops of 224², every op drawn as in training),
 * and the eval transform. Rows are crops (images) per second, each against
 * a reference measured in the same run:
 * - "copy-bound": the rate at which the adapter's measured copy bandwidth could
 *   move the bytes a crop must touch at least (its share of the source image
 *   read once, its f32 output written once). The kernels also write and read
 *   two intermediate planes per crop, so a ratio of ~0.3 is already near what
 *   this design can reach.
 * - "cpu reference": the float64 CPU reference (`augmentRef`) on the same
 *   parameters, on a few crops; the ratio is the GPU's speed-up over it.
 */
import type { Gpu } from "../kernels/runtime.ts";
import {
  applyCropParams,
  augmentRef,
  DINOBLOOM_AUGMENT,
  drawBatchParams,
  evalTransform,
} from "../pipelines/augment.ts";
import { syntheticDataset } from "../pipelines/synthetic.ts";
import {
  type BenchContext,
  type BenchRow,
  type BenchSuite,
  type Peaks,
  timeGpu,
  timeHost,
} from "./harness.ts";

/** `count` synthetic cells of side `size`, packed as one [B, S, S, 3] byte array. */
function cells(count: number, size: number): Uint8Array {
  const px = new Uint8Array(count * size * size * 3);
  let i = 0;
  for (const s of syntheticDataset({ count, size, seed: 1 })) {
    px.set(s.pixels, i++ * s.pixels.length);
  }
  return px;
}

/** A rate row against the copy-bound rate for `bytesPerItem`. */
function copyBoundRow(
  name: string,
  items: number,
  ms: number,
  bytesPerItem: number,
  peaks: Peaks,
  note: string,
): BenchRow {
  const rate = items / (ms / 1000);
  const peak = (peaks.copyGbps * 1e9) / bytesPerItem;
  return { name, ms, rate, peak, peakName: "copy-bound rate", ratio: rate / peak, note };
}

async function cropRows(ctx: BenchContext, gpu: Gpu): Promise<BenchRow[]> {
  const B = ctx.quick ? 8 : 32;
  const S = 224;
  const N = DINOBLOOM_AUGMENT.outSize;
  const px = cells(B, S);
  const images = gpu.uploadBytes(px);
  const ids = Array.from({ length: B }, (_, i) => i);
  const params = drawBatchParams(7, ids, S);
  const iters = ctx.quick ? 2 : 5;
  const ms = await timeGpu(gpu, () => {
    gpu.release(applyCropParams(gpu, images, params, { count: B, size: S }));
  }, { iters, warmup: 1 });
  gpu.release(images);
  const crops = 2 * B;
  // Per crop: half of its source image (two crops share one), its f32 output.
  const bytes = (S * S * 3) / 2 + 3 * N * N * 4;
  const rows = [
    copyBoundRow(
      `augment b${B} → ${crops} crops ${N}²`,
      crops,
      ms,
      bytes,
      ctx.peaks,
      "unpack, luma pre-pass, warp+colour, blur rows, blur cols+solarize+normalise",
    ),
  ];
  // The CPU reference on a few of the same crops (it is slow: float64 JS, one thread).
  const few = params.slice(0, ctx.quick ? 1 : 2).concat(params.slice(B, B + (ctx.quick ? 1 : 2)));
  const refMs = await timeHost(() => augmentRef(px, { count: B, size: S }, few), {
    warmup: 0,
    iters: 1,
  });
  const refRate = few.length / (refMs / 1000);
  const rate = crops / (ms / 1000);
  rows.push({
    name: `augment b${B} vs CPU reference`,
    ms,
    rate,
    peak: refRate,
    peakName: "cpu reference crops/s",
    ratio: rate / refRate,
    note: `reference timed on ${few.length} crops (float64, one thread)`,
  });
  return rows;
}

async function evalRows(ctx: BenchContext, gpu: Gpu): Promise<BenchRow[]> {
  const B = ctx.quick ? 8 : 32;
  const rows: BenchRow[] = [];
  // 224 → 224 is what `deno task embed` runs on ingested data; 288 → 224 shrinks (antialiased).
  for (const S of [224, 288]) {
    const images = gpu.uploadBytes(cells(B, S));
    const ms = await timeGpu(gpu, () => {
      gpu.release(evalTransform(gpu, images, { count: B, size: S }));
    }, { iters: ctx.quick ? 2 : 5, warmup: 1 });
    gpu.release(images);
    const bytes = S * S * 3 + 3 * 224 * 224 * 4;
    rows.push(copyBoundRow(`eval transform b${B} ${S}→224`, B, ms, bytes, ctx.peaks, "images/s"));
  }
  return rows;
}

/** The augmentation suite: training crops and the eval transform. */
export const augmentSuite: BenchSuite = {
  name: "augment",
  async run(ctx: BenchContext): Promise<BenchRow[]> {
    return [...await cropRows(ctx, ctx.gpu), ...await evalRows(ctx, ctx.gpu)];
  },
};
