/** Measures the adapter's FMA peak and copy bandwidth for the ratios every row prints. */
import { runCopy, runFma } from "../kernels/peak.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { type Peaks, timeGpu } from "./harness.ts";

/** Best of a few sizes, so a too-small dispatch does not under-report the peak. */
export async function measurePeaks(gpu: Gpu, quick = false): Promise<Peaks> {
  const inv = gpu.adapter.isFallback ? 1 << 14 : 1 << 20;
  const out = gpu.empty([inv * 4]);
  let fmaGflops = 0;
  for (const iters of quick ? [256] : [256, 1024]) {
    let flops = 0;
    const ms = await timeGpu(gpu, () => {
      flops = runFma(gpu, out, inv, iters);
    }, { iters: 3 });
    fmaGflops = Math.max(fmaGflops, flops / ms / 1e6);
  }
  gpu.release(out);
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
