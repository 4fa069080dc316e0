/**
 * Benchmark harness: every row is a measurement next to a reference measured
 * in the same run (the adapter's FMA peak, its copy bandwidth, or a peer such
 * as PyTorch or Pillow run beside it), because absolute times on shared
 * machines drift.
 */
import type { Gpu } from "../kernels/runtime.ts";

/** One printed (and JSON) row. */
export interface BenchRow {
  /** What was measured: "matmul 1024x1024x1024", "vit_small forward b32". */
  name: string;
  /** Median time of one call, in milliseconds. */
  ms: number;
  /** Achieved GFLOP/s, for compute-bound rows. */
  gflops?: number;
  /** Achieved GB/s, for memory-bound rows. */
  gbps?: number;
  /** Items per second (images/s), for pipeline rows. */
  rate?: number;
  /** The reference the ratio is taken against, in the same unit. */
  peak: number;
  /** What `peak` is: "fma peak", "copy bandwidth", "pytorch cpu", "pillow". */
  peakName: string;
  /** achieved / peak. */
  ratio: number;
  /** Free text: variant chosen, shapes, caveats. */
  note?: string;
  /** Rows against a peer (PyTorch, Pillow): both sides, measured interleaved. */
  compare?: Comparison;
}

/** One side of a comparison: its rate (from the median) and its spread of per-run times. */
export interface SideStats {
  /** Items per second at the median time. */
  rate: number;
  msMedian: number;
  msMin: number;
  msMax: number;
}

/** Both sides of a row measured against a peer in alternating rounds (A B A B …). */
export interface Comparison {
  rounds: number;
  /** Threads each side used. */
  threads: { ours: number; peer: number };
  ours: SideStats;
  peer: SideStats & { name: string };
  /** Ratio ours/peer of each round: min, median, max. */
  ratioPerRound: [number, number, number];
  /**
   * The rounds the row's figures come from (bench/load.ts `quietRounds`): their count, the
   * cores other processes used during each round (null: not measurable), and the median ratio
   * over all rounds, for comparison.
   */
  quiet?: { used: number; othersCores: (number | null)[]; ratioAllRounds: number };
}

/** What a suite gets: the GPU, the peaks of this run and a quick flag. */
export interface BenchContext {
  gpu: Gpu;
  peaks: Peaks;
  /** Smaller shapes and fewer iterations (`--quick`). */
  quick: boolean;
}

/** A named group of rows. */
export interface BenchSuite {
  name: string;
  run(ctx: BenchContext): Promise<BenchRow[]>;
}

/** The adapter's own peaks, measured at the start of the run. */
export interface Peaks {
  /** GFLOP/s of a pure-FMA kernel. */
  fmaGflops: number;
  /** GB/s of a buffer-to-buffer copy kernel (bytes read + written). */
  copyGbps: number;
}

/**
 * Median GPU time (timestamp queries where available, else wall time) of
 * `fn`, after `warmup` untimed calls. `fn` records dispatches; it is timed
 * `iters` times, each in its own submit.
 */
export async function timeGpu(
  gpu: Gpu,
  fn: () => void,
  opts: { warmup?: number; iters?: number; minMs?: number } = {},
): Promise<number> {
  const warmup = opts.warmup ?? 2;
  for (let i = 0; i < warmup; i++) fn();
  await gpu.sync();
  const times: number[] = [];
  const iters = opts.iters ?? 5;
  const minMs = opts.minMs ?? 0;
  let total = 0;
  for (let i = 0; i < iters || (total < minMs && i < 100 * iters); i++) {
    const t = await gpu.time(fn);
    const ms = t.gpuMs ?? t.wallMs;
    times.push(ms);
    total += t.wallMs;
  }
  return median(times);
}

/** Median wall time of an async host function (pipelines, PyTorch peers). */
export async function timeHost(
  fn: () => Promise<unknown> | unknown,
  opts: { warmup?: number; iters?: number } = {},
): Promise<number> {
  for (let i = 0; i < (opts.warmup ?? 1); i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < (opts.iters ?? 3); i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  return median(times);
}

/** Median of a list. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** A compute row: `flops` per call measured at `ms`, against the FMA peak. */
export function computeRow(
  name: string,
  flops: number,
  ms: number,
  peaks: Peaks,
  note?: string,
): BenchRow {
  const gflops = flops / ms / 1e6;
  return {
    name,
    ms,
    gflops,
    peak: peaks.fmaGflops,
    peakName: "fma peak",
    ratio: gflops / peaks.fmaGflops,
    note,
  };
}

/** A memory row: `bytes` moved (read + written) per call at `ms`, against copy bandwidth. */
export function memoryRow(
  name: string,
  bytes: number,
  ms: number,
  peaks: Peaks,
  note?: string,
): BenchRow {
  const gbps = bytes / ms / 1e6;
  return {
    name,
    ms,
    gbps,
    peak: peaks.copyGbps,
    peakName: "copy bandwidth",
    ratio: gbps / peaks.copyGbps,
    note,
  };
}

/** Formats rows as an aligned text table. */
export function formatRows(rows: BenchRow[]): string {
  const head = ["name", "ms", "achieved", "reference", "ratio", "note"];
  const body = rows.map((r) => [
    r.name,
    r.ms.toFixed(3),
    r.gflops !== undefined
      ? `${r.gflops.toFixed(2)} GFLOP/s`
      : r.gbps !== undefined
      ? `${r.gbps.toFixed(2)} GB/s`
      : r.rate !== undefined
      ? `${r.rate.toFixed(1)}/s`
      : "",
    `${r.peak.toPrecision(4)} (${r.peakName})`,
    r.ratio.toFixed(3),
    r.note ?? "",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

/** How one row's ratio moved over consecutive full runs (`deno task bench --repeat N`). */
export interface Stability {
  name: string;
  /** The row's ratio in each run (NaN where it was missing or skipped). */
  ratios: number[];
  /** Largest |r_i / r_(i-1) − 1| between consecutive runs with ratios. */
  maxChange: number;
  /** maxChange ≤ the tolerance. */
  holds: boolean;
}

/**
 * Per row against a peer (rows with `compare`), its ratio in each run and the largest relative
 * change between consecutive runs, against `tolerance` (0.15: ±15 %). Rows are matched by
 * name; rows without a finite ratio in at least two runs are left out.
 */
export function stability(runs: readonly (readonly BenchRow[])[], tolerance = 0.15): Stability[] {
  const names: string[] = [];
  for (const rows of runs) {
    for (const r of rows) if (r.compare && !names.includes(r.name)) names.push(r.name);
  }
  const out: Stability[] = [];
  for (const name of names) {
    const ratios = runs.map((rows) => rows.find((r) => r.name === name)?.ratio ?? NaN);
    const finite = ratios.filter((r) => Number.isFinite(r) && r > 0);
    if (finite.length < 2) continue;
    let maxChange = 0;
    for (let i = 1; i < finite.length; i++) {
      maxChange = Math.max(maxChange, Math.abs(finite[i] / finite[i - 1] - 1));
    }
    out.push({ name, ratios, maxChange, holds: maxChange <= tolerance });
  }
  return out;
}

/** The stability table as text. */
export function formatStability(rows: Stability[], tolerance = 0.15): string {
  const head = ["name", "ratio per run", "max change", `within ±${(tolerance * 100).toFixed(0)} %`];
  const body = rows.map((s) => [
    s.name,
    s.ratios.map((r) => (Number.isFinite(r) ? r.toFixed(3) : "–")).join("  "),
    `${(s.maxChange * 100).toFixed(1)} %`,
    s.holds ? "yes" : "NO",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}
