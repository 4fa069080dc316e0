/**
 * Geometry of a strided matmul and how its dispatch is split: each operand's
 * layout and the element range a block of batches and rows touches, which
 * operands can be read as vec4, and the split over batches, then rows, that
 * keeps every binding window within `maxStorageBufferBindingSize`.
 */
import { bindWindow } from "../common/window.ts";
import { spans } from "../common/split.ts";
import { GpuLimitError } from "../errors.ts";
import { fmtBytes } from "../pool.ts";
import type { Gpu } from "../runtime.ts";
import type { GpuTensor } from "../tensor.ts";

/** How one operand is laid out: base offset, row stride, two batch strides (elements). */
export interface Layout {
  t: GpuTensor;
  name: string;
  off: number;
  ld: number;
  s0: number;
  s1: number;
}

/** Normalises a one- or two-level batch spec to [outer, inner]. */
export function twoLevel(
  v: number | readonly [number, number] | undefined,
  dflt: readonly [number, number],
): [number, number] {
  if (v === undefined) return [dflt[0], dflt[1]];
  return typeof v === "number" ? [0, v] : [v[0], v[1]];
}

/** Element range [lo, hi) an operand touches for batches (o0..o1, i0..i1) and rows r0..r1. */
type Extent = (o0: number, o1: number, i0: number, i1: number, r0: number, r1: number) => [
  number,
  number,
];

export interface Operand {
  lay: Layout;
  extent: Extent;
  /** Element offset of (outer o0, inner i0, row r0) relative to `off`. */
  start: (o0: number, i0: number, r0: number) => number;
}

export function operands(
  sp: { M: number; N: number; K: number; transA: boolean; transB: boolean },
  A: Layout,
  B: Layout,
  O: Layout,
  R: Layout | null,
): Operand[] {
  const { N, K, transA, transB } = sp;
  const batch = (l: Layout, o0: number, o1: number, i0: number, i1: number) => [
    l.off + o0 * l.s1 + i0 * l.s0,
    l.off + (o1 - 1) * l.s1 + (i1 - 1) * l.s0,
  ];
  const ops: Operand[] = [
    {
      lay: A,
      extent: (o0, o1, i0, i1, r0, r1) => {
        const [lo, hi] = batch(A, o0, o1, i0, i1);
        return transA
          ? [lo + r0, hi + (K - 1) * A.ld + r1]
          : [lo + r0 * A.ld, hi + (r1 - 1) * A.ld + K];
      },
      start: (o0, i0, r0) => o0 * A.s1 + i0 * A.s0 + (transA ? r0 : r0 * A.ld),
    },
    {
      lay: B,
      extent: (o0, o1, i0, i1) => {
        const [lo, hi] = batch(B, o0, o1, i0, i1);
        return [lo, hi + (transB ? (N - 1) * B.ld + K : (K - 1) * B.ld + N)];
      },
      start: (o0, i0) => o0 * B.s1 + i0 * B.s0,
    },
  ];
  for (const l of R ? [O, R] : [O]) {
    ops.push({
      lay: l,
      extent: (o0, o1, i0, i1, r0, r1) => {
        const [lo, hi] = batch(l, o0, o1, i0, i1);
        return [lo + r0 * l.ld, hi + (r1 - 1) * l.ld + N];
      },
      start: (o0, i0, r0) => o0 * l.s1 + i0 * l.s0 + r0 * l.ld,
    });
  }
  return ops;
}

/** One dispatch: outer batches [o0, o0+no), inner [i0, i0+ni), rows [r0, r0+nr). */
export interface Chunk {
  o0: number;
  no: number;
  i0: number;
  ni: number;
  r0: number;
  nr: number;
}

/**
 * Splits the work so no binding window exceeds `maxBytes`, no grid dimension exceeds
 * `maxWg` and no dispatch has more than `maxRows` rows (texture operands: their height):
 * first over outer batches, then inner batches, then rows (in multiples of the row block,
 * which keeps vec4 row groups aligned). Throws GpuLimitError when one block row of one batch
 * already needs too large a window.
 */
export function planChunks(
  gpu: Pick<Gpu, "limits">,
  ops: Operand[],
  outer: number,
  inner: number,
  M: number,
  rowBlock: number,
  maxBytes: number,
  maxRows = Infinity,
): Chunk[] {
  // Row counts stay multiples of the row block, so a row cap rounds down to one.
  const maxWg = Math.min(
    gpu.limits.maxComputeWorkgroupsPerDimension,
    Math.max(1, Math.floor(maxRows / rowBlock)),
  );
  const windowBytes = (op: Operand, c: Chunk): number => {
    const [lo, hi] = op.extent(c.o0, c.o0 + c.no, c.i0, c.i0 + c.ni, c.r0, c.r0 + c.nr);
    return bindWindow(gpu, op.lay.t, lo, hi).view.size;
  };
  const fits = (c: Chunk) =>
    c.no * c.ni <= maxWg && Math.ceil(c.nr / rowBlock) <= maxWg &&
    ops.every((op) => windowBytes(op, c) <= maxBytes);
  const largest = (max: number, ok: (n: number) => boolean): number => {
    // Window sizes grow monotonically with the count: binary search the largest that fits.
    let lo = 0;
    let hi = max;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi + 1) / 2);
      if (ok(mid)) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  const whole: Chunk = { o0: 0, no: outer, i0: 0, ni: inner, r0: 0, nr: M };
  if (fits(whole)) return [whole];
  const no = largest(outer, (n) => fits({ ...whole, no: n }));
  if (no >= 1) return spans(outer, no).map((o) => ({ ...whole, o0: o.start, no: o.count }));
  const one: Chunk = { ...whole, no: 1 };
  const ni = largest(inner, (n) => fits({ ...one, ni: n }));
  const chunks: Chunk[] = [];
  if (ni >= 1) {
    for (let o = 0; o < outer; o++) {
      for (const i of spans(inner, ni)) chunks.push({ ...one, o0: o, i0: i.start, ni: i.count });
    }
    return chunks;
  }
  const blocks = largest(Math.ceil(M / rowBlock), (n) => fits({ ...one, ni: 1, nr: n * rowBlock }));
  if (blocks < 1) {
    const probe: Chunk = { ...one, ni: 1, nr: Math.min(M, rowBlock) };
    const worst = ops.find((op) => windowBytes(op, probe) > maxBytes) ?? ops[0];
    throw new GpuLimitError(
      `matmul: tensor '${worst.lay.name}' [${worst.lay.t.shape}] needs a ${
        fmtBytes(windowBytes(worst, probe))
      } binding even for one batch and ${probe.nr} rows, over the ${
        fmtBytes(maxBytes)
      } binding limit (maxStorageBufferBindingSize); split '${worst.lay.name}' ` +
        `(e.g. over its columns) or use smaller operands`,
    );
  }
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      for (const r of spans(M, blocks * rowBlock)) {
        chunks.push({ o0: o, no: 1, i0: i, ni: 1, r0: r.start, nr: r.count });
      }
    }
  }
  return chunks;
}

/**
 * Which operands can be read as vec4: every address must be a multiple of 4 elements and no
 * vec4 may straddle the end of a row. Along K that needs K % 4 == 0; along M (transposed A) or
 * N (plain B) it needs M % 4 == 0 or N % 4 == 0, and the tile rows/columns to be multiples
 * of 4 (they are, see `validVariant`). out and residual go vec4 along N when N % 4 == 0.
 */
export function vecFlags(
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
  A: Layout,
  B: Layout,
  O: Layout,
  R: Layout | null,
): { a: boolean; b: boolean; o: boolean } {
  const aligned = (l: Layout) =>
    l.off % 4 === 0 && l.ld % 4 === 0 && l.s0 % 4 === 0 && l.s1 % 4 === 0 &&
    (l.t.offset / 4) % 4 === 0;
  return {
    a: aligned(A) && (transA ? M % 4 === 0 : K % 4 === 0),
    b: aligned(B) && (transB ? K % 4 === 0 : N % 4 === 0),
    o: N % 4 === 0 && aligned(O) && (!R || aligned(R)),
  };
}
