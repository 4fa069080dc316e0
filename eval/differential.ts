/**
 * The differential count of each sample (smear, patient): how many of its
 * cells fall in each class, as a count and a percentage with a 95 % Wilson
 * score interval, every class of the head listed even when the sample has
 * none of it. Cells flagged out of distribution are counted apart (and, on
 * request, left out of the percentages).
 *
 * Wilson interval for k of n (z = 1.959964, the 97.5 % normal quantile):
 *   centre = (p + z²/2n) / (1 + z²/n),
 *   half   = z / (1 + z²/n) · √(p(1 − p)/n + z²/4n²),  p = k/n,
 * clamped to [0, 1]; it stays inside [0, 1] and is not degenerate at k = 0
 * or k = n, unlike the normal (Wald) interval, which matters for rare cells
 * (basophils, blasts) in a 100- or 200-cell differential.
 */
import { csvField } from "../data/embeddings_file.ts";
import { type Label, uniqueSorted } from "./labels.ts";

/** z for a two-sided 95 % interval (scipy.stats.norm.ppf(0.975)). */
export const Z95 = 1.959963984540054;

/** Wilson score interval [low, high] for `k` successes of `n` (n > 0). */
export function wilsonInterval(k: number, n: number, z = Z95): [number, number] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`wilsonInterval: n=${n} must be ≥ 1`);
  if (!Number.isInteger(k) || k < 0 || k > n) {
    throw new RangeError(`wilsonInterval: k=${k} must be an integer in [0, ${n}]`);
  }
  const p = k / n;
  const z2 = z * z;
  const denom = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / denom;
  const half = (z / denom) * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n));
  // Exact ends where the formula meets them in exact arithmetic (k = 0, k = n).
  const low = k === 0 ? 0 : Math.max(0, centre - half);
  const high = k === n ? 1 : Math.min(1, centre + half);
  return [low, high];
}

/** One sample's differential. */
export interface SampleDifferential {
  sample: string;
  /** Cells of the sample. */
  cells: number;
  /** Cells counted (all, or those not flagged with `excludeFlagged`). */
  counted: number;
  /** Cells flagged out of distribution. */
  flagged: number;
  /** Per class (the table's class order): count, percentage of `counted`, 95 % Wilson bounds in %. */
  counts: number[];
  percent: number[];
  low: number[];
  high: number[];
}

/** The differential of every sample. */
export interface DifferentialTable {
  classes: Label[];
  /** Samples in sorted order (`np.unique`). */
  samples: SampleDifferential[];
  /** Whether flagged cells were left out of the counts. */
  excludeFlagged: boolean;
}

/** Options of `differentialCount`. */
export interface DifferentialOptions {
  /** Per cell: flagged out of distribution. */
  flagged?: readonly boolean[];
  /** Leave flagged cells out of the counts and percentages (they are still reported). */
  excludeFlagged?: boolean;
}

/**
 * Counts `predicted` (one class per cell) per sample (`samples`, one id per
 * cell) over `classes` (all kept, in the given order). A sample whose cells
 * are all excluded has zero counts and NaN percentages and bounds.
 */
export function differentialCount(
  predicted: readonly Label[],
  samples: readonly string[],
  classes: readonly Label[],
  opts: DifferentialOptions = {},
): DifferentialTable {
  const n = predicted.length;
  if (samples.length !== n) {
    throw new RangeError(`differentialCount: ${samples.length} sample ids for ${n} cells`);
  }
  if (opts.flagged && opts.flagged.length !== n) {
    throw new RangeError(`differentialCount: ${opts.flagged.length} flags for ${n} cells`);
  }
  const index = new Map(classes.map((c, i) => [c, i]));
  if (index.size !== classes.length) throw new RangeError("differentialCount: a class is repeated");
  const exclude = Boolean(opts.excludeFlagged);
  const bySample = new Map<string, SampleDifferential>();
  const ids = n ? uniqueSorted(samples, "differentialCount: samples") as string[] : [];
  for (const s of ids) {
    bySample.set(s, {
      sample: s,
      cells: 0,
      counted: 0,
      flagged: 0,
      counts: new Array(classes.length).fill(0),
      percent: [],
      low: [],
      high: [],
    });
  }
  for (let i = 0; i < n; i++) {
    const k = index.get(predicted[i]);
    if (k === undefined) {
      throw new RangeError(
        `differentialCount: cell ${i} is predicted ${JSON.stringify(predicted[i])}, not one of ` +
          `the classes ${JSON.stringify(classes)}`,
      );
    }
    const row = bySample.get(samples[i])!;
    row.cells++;
    const flagged = Boolean(opts.flagged?.[i]);
    if (flagged) row.flagged++;
    if (flagged && exclude) continue;
    row.counted++;
    row.counts[k]++;
  }
  for (const row of bySample.values()) {
    for (const count of row.counts) {
      if (row.counted === 0) {
        row.percent.push(NaN), row.low.push(NaN), row.high.push(NaN);
        continue;
      }
      const [lo, hi] = wilsonInterval(count, row.counted);
      row.percent.push((100 * count) / row.counted);
      row.low.push(100 * lo);
      row.high.push(100 * hi);
    }
  }
  return { classes: [...classes], samples: [...bySample.values()], excludeFlagged: exclude };
}

/** The table as csv: one row per (sample, class), plus each sample's cell and flagged counts. */
export function differentialCsv(t: DifferentialTable): string {
  const lines = ["sample,class,count,percent,ci95_low,ci95_high,cells,counted,flagged"];
  const num = (v: number) => (Number.isNaN(v) ? "" : String(Number(v.toFixed(4))));
  for (const s of t.samples) {
    t.classes.forEach((c, k) => {
      lines.push(
        [
          csvField(s.sample),
          csvField(String(c)),
          s.counts[k],
          num(s.percent[k]),
          num(s.low[k]),
          num(s.high[k]),
          s.cells,
          s.counted,
          s.flagged,
        ].join(","),
      );
    });
  }
  return lines.join("\n") + "\n";
}

/** Options of `differentialMarkdown`. */
export interface DifferentialMarkdownOptions {
  /** Lines listed under the title (thresholds, heads, inputs). */
  notes?: readonly string[];
  /** Per sample, the paths of its flagged cells (listed under its table). */
  flaggedPaths?: ReadonlyMap<string, readonly string[]>;
  /** Flagged paths listed per sample at most. Default 20. */
  maxListed?: number;
}

/** The table as Markdown: one table per sample, "count (percent, 95 % CI low–high)". */
export function differentialMarkdown(
  t: DifferentialTable,
  opts: DifferentialMarkdownOptions = {},
): string {
  const notes = opts.notes ?? [];
  const max = opts.maxListed ?? 20;
  const out: string[] = ["# Differential counts", ""];
  for (const n of notes) out.push(`- ${n}`);
  if (notes.length) out.push("");
  for (const s of t.samples) {
    const flaggedNote = s.flagged
      ? `, ${s.flagged} flagged out of distribution${t.excludeFlagged ? " (not counted)" : ""}`
      : "";
    out.push(`## ${s.sample}`, "", `${s.cells} cells${flaggedNote}.`, "");
    out.push("| Class | Count | % | 95 % CI (Wilson) |", "|---|---:|---:|---|");
    t.classes.forEach((c, k) => {
      const pct = Number.isNaN(s.percent[k]) ? "–" : s.percent[k].toFixed(1);
      const ci = Number.isNaN(s.low[k]) ? "–" : `${s.low[k].toFixed(1)}–${s.high[k].toFixed(1)}`;
      out.push(`| ${String(c).replace(/\|/g, "\\|")} | ${s.counts[k]} | ${pct} | ${ci} |`);
    });
    out.push("");
    const flagged = opts.flaggedPaths?.get(s.sample) ?? [];
    if (flagged.length) {
      out.push("Flagged cells:", "");
      for (const p of flagged.slice(0, max)) out.push(`- ${p}`);
      if (flagged.length > max) out.push(`- … and ${flagged.length - max} more`);
      out.push("");
    }
  }
  return out.join("\n");
}
