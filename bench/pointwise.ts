/**
 * Pointwise kernels at DINOv2 shapes (257 tokens, batch 32; dims 384/768, MLP hidden
 * 1536/3072): bias add, GELU, SwiGLU, row, column and whole-tensor sums, the attention head
 * permute, a transpose and the gather of masked rows. All are memory-bound: each row reports bytes read +
 * written per call against the copy bandwidth measured in the same run (target ≥ 0.5).
 */
import { add, gelu, swiglu } from "../kernels/elementwise.ts";
import { gatherRows, permute, transpose } from "../kernels/layout/mod.ts";
import { sum } from "../kernels/reduce.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import {
  type BenchContext,
  type BenchRow,
  type BenchSuite,
  memoryRow,
  timeGpu,
} from "./harness.ts";

const TOKENS = 257;

/** One measured op: inputs it reads, what it runs, and the bytes one call moves. */
interface Case {
  name: string;
  inputs: GpuTensor[];
  run: () => GpuTensor;
  bytes: number;
  note: string;
}

/** Times `c.run` (its output released after each call) and releases the inputs. */
async function measure(ctx: BenchContext, c: Case): Promise<BenchRow> {
  const { gpu } = ctx;
  const ms = await timeGpu(gpu, () => gpu.release(c.run()), {
    warmup: 2,
    iters: ctx.quick ? 3 : 7,
  });
  gpu.release(...c.inputs);
  return memoryRow(c.name, c.bytes, ms, ctx.peaks, c.note);
}

function random(gpu: Gpu, shape: number[]): GpuTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n);
  // A cheap deterministic fill; values only need to be finite and varied.
  for (let i = 0; i < n; i++) x[i] = ((i * 2654435761) % 1000) / 500 - 1;
  return gpu.tensor(x, shape);
}

function cases(gpu: Gpu, batch: number, d: number, hidden: number): (() => Case)[] {
  const n = batch * TOKENS;
  const tag = `B${batch}×${TOKENS}`;
  const heads = d / 64;
  return [
    () => {
      const x = random(gpu, [n, d]);
      const b = random(gpu, [d]);
      return {
        name: `add bias [${n},${d}]+[${d}]`,
        inputs: [x, b],
        run: () => add(gpu, x, b),
        bytes: (2 * n * d + d) * 4,
        note: `${tag}, broadcast over rows`,
      };
    },
    () => {
      const x = random(gpu, [n, hidden]);
      return {
        name: `gelu [${n},${hidden}]`,
        inputs: [x],
        run: () => gelu(gpu, x),
        bytes: 2 * n * hidden * 4,
        note: `${tag}, MLP hidden, exact erf`,
      };
    },
    () => {
      const x = random(gpu, [n, 2 * hidden]);
      return {
        name: `swiglu [${n},${2 * hidden}]`,
        inputs: [x],
        run: () => swiglu(gpu, x),
        bytes: 3 * n * hidden * 4,
        note: `${tag}, silu(x1)·x2`,
      };
    },
    () => {
      const x = random(gpu, [n, d]);
      return {
        name: `sum rows [${n},${d}]`,
        inputs: [x],
        run: () => sum(gpu, x, { axis: -1 }),
        bytes: (n * d + n) * 4,
        note: `${tag}, axis -1`,
      };
    },
    () => {
      const x = random(gpu, [n, hidden]);
      return {
        name: `sum axis 0 [${n},${hidden}]`,
        inputs: [x],
        run: () => sum(gpu, x, { axis: 0 }),
        bytes: (n * hidden + hidden) * 4,
        note: `${tag}, bias gradient, two-stage`,
      };
    },
    () => {
      const x = random(gpu, [n, hidden]);
      return {
        name: `sum all [${n}·${hidden}]`,
        inputs: [x],
        run: () => sum(gpu, x, { axis: "all" }),
        bytes: (n * hidden + 1) * 4,
        note: `${tag}, ${((n * hidden) / 1e6).toFixed(1)} M values, multi-stage`,
      };
    },
    () => {
      const x = random(gpu, [batch, TOKENS, 3, heads, 64]);
      return {
        name: `permute qkv [${batch},${TOKENS},3,${heads},64]`,
        inputs: [x],
        run: () => permute(gpu, x, [2, 0, 3, 1, 4]),
        bytes: 2 * n * 3 * d * 4,
        note: "→ [3,B,H,T,64], a 64-wide row per invocation",
      };
    },
    () => {
      const x = random(gpu, [batch, TOKENS - 1, d]);
      return {
        name: `transpose [${batch},${TOKENS - 1},${d}]`,
        inputs: [x],
        run: () => transpose(gpu, x),
        bytes: 2 * batch * (TOKENS - 1) * d * 4,
        note: "patch tokens ↔ channels, 4×4 blocks",
      };
    },
    () => {
      const x = random(gpu, [n, d]);
      // iBOT masks about 30 % of patch tokens in half the images: ~15 % of rows, ascending.
      const idx: number[] = [];
      for (let i = 0; i < n; i++) if ((i * 7919) % 100 < 15) idx.push(i);
      const ti = gpu.tensor(Uint32Array.from(idx));
      return {
        name: `gather masked rows [${n},${d}]→[${idx.length},${d}]`,
        inputs: [x, ti],
        run: () => gatherRows(gpu, x, ti),
        bytes: (2 * idx.length * d + idx.length) * 4,
        note: `${tag}, 15 % of rows`,
      };
    },
  ];
}

/** The pointwise suite (`deno task bench --only pointwise`). */
export const pointwiseSuite: BenchSuite = {
  name: "pointwise",
  async run(ctx: BenchContext): Promise<BenchRow[]> {
    const batch = ctx.quick ? 8 : 32;
    const rows: BenchRow[] = [];
    const shapes: [number, number][] = ctx.quick ? [[384, 1536]] : [[384, 1536], [768, 3072]];
    for (const [d, hidden] of shapes) {
      for (const make of cases(ctx.gpu, batch, d, hidden)) rows.push(await measure(ctx, make()));
    }
    return rows;
  },
};
