/**
 * Splitting a dispatch so that every binding fits the adapter: the one
 * splitter every kernel, rule and pipeline uses when a tensor is larger than
 * `maxStorageBufferBindingSize` (what does not split, throws `GpuLimitError`;
 * nothing is ever truncated).
 *
 * The work is a run of items (rows, images, crops, batch elements), each
 * occupying a fixed number of contiguous bytes in every binding that is cut.
 * A span of items then binds either as a plain view, whose start must be
 * aligned (`starts: "aligned"`: span lengths are multiples of the smallest
 * item count whose bytes are a multiple of the alignment), or through a
 * `bindWindow` that may start up to alignment − 4 bytes early
 * (`starts: "window"`: any span length, a little less room).
 */
import { GpuLimitError } from "../errors.ts";
import { fmtBytes } from "../pool.ts";
import { gcd, lcm } from "./shape.ts";
import type { BindingLimits } from "./window.ts";

export type { BindingLimits };

/** Items [start, start + count) dispatched together. */
export interface Span {
  start: number;
  count: number;
}

/** [0, total) cut into spans of `per` items (the last may be shorter). */
export function spans(total: number, per: number): Span[] {
  if (total > 0 && !(per >= 1)) throw new RangeError(`spans: ${per} items per span`);
  const out: Span[] = [];
  for (let s = 0; s < total; s += per) out.push({ start: s, count: Math.min(per, total - s) });
  return out;
}

/** What `splitSpans` splits and how. */
export interface SplitSpec {
  /** The op named in the error. */
  op: string;
  /** What one item is, for the error: "row of 384 values", "batch element". */
  item: string;
  /** Items to split. */
  count: number;
  /** Bytes of one item in each binding the split cuts (items contiguous in each). */
  itemBytes: readonly number[];
  /** Bytes one binding may hold (default and cap: the adapter's limit; tests lower it). */
  maxBytes?: number;
  /** Span lengths are multiples of this (e.g. the rows a workgroup covers); default 1. */
  multiple?: number;
  /** At most this many items per span, rounded up to what keeps starts aligned. */
  maxCount?: number;
  /** How spans bind: "aligned" views (default) or "window"s (see the file comment). */
  starts?: "aligned" | "window";
  /** How the caller can avoid the error, appended to it. */
  fix: string;
}

/**
 * Spans covering [0, spec.count) whose bindings all fit (one span when the
 * whole fits). Throws `GpuLimitError` naming the op when even the smallest
 * span is too large to bind.
 */
export function splitSpans(limits: BindingLimits, spec: SplitSpec): Span[] {
  const limit = Math.min(spec.maxBytes ?? Infinity, limits.maxStorageBufferBindingSize);
  const align = limits.minStorageBufferOffsetAlignment;
  const widest = Math.max(...spec.itemBytes);
  const windowed = spec.starts === "window";
  // A window may begin up to align − 4 bytes before its data.
  const room = windowed ? limit - (align - 4) : limit;
  const fit = widest > 0 ? Math.floor(room / widest) : Infinity;
  const maxCount = spec.maxCount ?? Infinity;
  if (spec.count <= fit && spec.count <= maxCount) return spans(spec.count, spec.count);
  let step = spec.multiple ?? 1;
  if (!windowed) { for (const b of spec.itemBytes) step = lcm(step, align / gcd(b, align)); }
  const per = Math.floor(Math.min(fit, Math.max(maxCount, step)) / step) * step;
  if (per < 1) {
    const group = step > 1 ? `, and aligned offsets need blocks of ${step}` : "";
    throw new GpuLimitError(
      `${spec.op}: one ${spec.item} needs ${fmtBytes(widest)} per binding${group}: over the ` +
        `binding limit of ${fmtBytes(limit)} (maxStorageBufferBindingSize); ${spec.fix}`,
    );
  }
  return spans(spec.count, per);
}
