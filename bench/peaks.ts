/** Measures the adapter's FMA peak and copy bandwidth for the ratios every row prints. */
import { runCopy, runFma } from "../kernels/peak.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { type Peaks, timeGpu } from "./harness.ts";

/**
 * Best of a few sizes, so a too-small dispatch does not under-report the peak, and the best of
 * several calls at each: on a shared machine other processes only ever slow a call down, so the
 * fastest is the adapter's peak (a median moved by 2× between runs here).
 */
export async function measurePeaks(gpu: Gpu, quick = false): Promise<Peaks> {
  const fmaGflops = await fmaPeak(gpu, quick ? [256] : [256, 1024]);
  let copyGbps = 0;
  for (const mb of quick ? [32] : [16, 64]) {
    const n = (mb * 2 ** 20) / 4;
    const src = gpu.zeros([n]);
    const dst = gpu.empty([n]);
    let bytes = 0;
    const ms = await timeGpu(gpu, () => {
      bytes = runCopy(gpu, src, dst);
    }, { iters: 3 });
    copyGbps = Math.max(copyGbps, bytes / ms / 1e6);
    gpu.release(src, dst);
  }
  return { fmaGflops, copyGbps };
}

/** The FMA peak in GFLOP/s: the fastest of `calls` calls at each loop length in `lengths`. */
export async function fmaPeak(
  gpu: Gpu,
  lengths: readonly number[] = [256],
  calls = 5,
): Promise<number> {
  const inv = gpu.adapter.isFallback ? 1 << 14 : 1 << 20;
  const out = gpu.empty([inv * 4]);
  let best = 0;
  try {
    for (const iters of lengths) {
      const flops = runFma(gpu, out, inv, iters); // compiles and warms up
      await gpu.sync();
      for (let i = 0; i < calls; i++) {
        const t = await gpu.time(() => {
          runFma(gpu, out, inv, iters);
        });
        best = Math.max(best, flops / (t.gpuMs ?? t.wallMs) / 1e6);
      }
    }
  } finally {
    gpu.release(out);
  }
  return best;
}
