/**
 * bloom's one seeded generator for host-side randomness: mulberry32, small
 * and fast. The ingest's sample order, the loader's shuffle, augmentation
 * parameters, iBOT masks, initial weights, synthetic cells and the tests all
 * draw from it, so a seed means the same stream everywhere. Not for anything
 * that needs statistical strength beyond that. (eval/numpy_random.ts is a
 * different generator: numpy's RandomState, for scikit-learn parity.)
 */

/** A seeded uniform source: `() => [0, 1)`. */
export type Random = () => number;

/** mulberry32: uniform floats in [0, 1) from a 32-bit seed. */
export function mulberry32(seed: number): Random {
  let s = seed >>> 0;
  return () => {
    let t = (s += 0x6d2b79f5);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Mixes two integers into one seed (seed and epoch, seed and shard). */
export function mixSeed(a: number, b: number): number {
  let h = Math.imul((a >>> 0) ^ 0x9e3779b9, 0x85ebca6b) ^ (b >>> 0);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A standard normal draw (Box–Muller, cosine branch: two uniforms per draw). */
export function normal(rand: Random): number {
  const u = Math.max(rand(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}

/** Fisher–Yates shuffle in place with `rand`; returns `xs`. */
export function shuffleInPlace<T>(xs: T[], rand: Random): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = xs[i];
    xs[i] = xs[j];
    xs[j] = t;
  }
  return xs;
}
