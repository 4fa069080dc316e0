/**
 * The fuzzer's random source and generic mutations: bit flips, "interesting"
 * integers written over length and offset fields, cuts, duplicated, deleted
 * and inserted spans, and text edits for the text formats. Generators build
 * well-formed files; these damage them the way disks, downloads and
 * attackers do.
 */
import { Rng } from "../helpers.ts";

/** The seeded random source of one case, with the draws generators need. */
export class FuzzRng extends Rng {
  /** A uniformly chosen element. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }
  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  /** Small numbers often, large ones sometimes (sizes, counts, dimensions). */
  size(max = 64): number {
    const r = this.next();
    if (r < 0.5) return this.int(Math.min(4, max + 1));
    if (r < 0.9) return this.int(Math.min(17, max + 1));
    return this.int(max + 1);
  }
  /** `n` random bytes (none for n ≤ 0). */
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(Math.max(0, n));
    for (let i = 0; i < b.length; i++) b[i] = this.int(256);
    return b;
  }
}

/** The seed of case `index` of `target` in a run seeded `seed` (stable across runs). */
export function caseSeed(seed: number, target: string, index: number): number {
  let h = 2166136261 ^ seed;
  for (const c of `${target}#${index}`) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return h >>> 0;
}

/** Values that break length and offset arithmetic, by field width. */
export function interesting(width: 1 | 2 | 4 | 8, fileLength: number): bigint[] {
  const max = (1n << BigInt(8 * width)) - 1n;
  const vals = [
    0n,
    1n,
    max,
    max >> 1n,
    (max >> 1n) + 1n,
    BigInt(fileLength),
    BigInt(fileLength + 1),
  ];
  if (width >= 4) vals.push(2n ** 31n, 2n ** 32n - 1n, BigInt(fileLength) * 1000n);
  if (width === 8) vals.push(2n ** 53n, 2n ** 53n + 1n, 2n ** 63n);
  return vals.map((v) => v & max);
}

/** Writes `v` little-endian over `width` bytes at `at` (clipped at the end). */
export function writeLe(b: Uint8Array, at: number, width: number, v: bigint): void {
  for (let i = 0; i < width && at + i < b.length; i++) {
    b[at + i] = Number((v >> BigInt(8 * i)) & 0xffn);
  }
}

/** One random byte-level mutation of `src` (a copy); `what` says which. */
export function mutateBytes(src: Uint8Array, rng: FuzzRng): { bytes: Uint8Array; what: string } {
  const n = src.length;
  if (n === 0) return { bytes: rng.bytes(rng.size(32)), what: "random bytes" };
  const b = src.slice();
  switch (rng.int(8)) {
    case 0: {
      const k = 1 + rng.int(8);
      for (let i = 0; i < k; i++) b[rng.int(n)] ^= 1 << rng.int(8);
      return { bytes: b, what: `flip ${k} bits` };
    }
    case 1: {
      const w = rng.pick([1, 2, 4, 8] as const);
      const at = rng.int(n);
      const v = rng.pick(interesting(w, n));
      writeLe(b, at, w, v);
      return { bytes: b, what: `u${8 * w} ${v} at ${at}` };
    }
    case 2: {
      const at = rng.int(n);
      return { bytes: b.subarray(0, at), what: `cut at ${at}` };
    }
    case 3: {
      const at = rng.int(n);
      const len = 1 + rng.int(Math.min(256, n - at));
      const out = new Uint8Array(n + len);
      out.set(b.subarray(0, at + len));
      out.set(b.subarray(at), at + len);
      return { bytes: out, what: `duplicate ${at}+${len}` };
    }
    case 4: {
      const at = rng.int(n);
      const len = 1 + rng.int(Math.min(256, n - at));
      const out = new Uint8Array(n - len);
      out.set(b.subarray(0, at));
      out.set(b.subarray(at + len), at);
      return { bytes: out, what: `delete ${at}+${len}` };
    }
    case 5: {
      const at = rng.int(n + 1);
      const ins = rng.bytes(1 + rng.int(16));
      const out = new Uint8Array(n + ins.length);
      out.set(b.subarray(0, at));
      out.set(ins, at);
      out.set(b.subarray(at), at + ins.length);
      return { bytes: out, what: `insert ${ins.length} at ${at}` };
    }
    case 6: {
      // Copy a span over another (moves a structure onto a length field, say).
      const from = rng.int(n);
      const to = rng.int(n);
      const len = 1 + rng.int(Math.min(32, n - from, n - to));
      b.copyWithin(to, from, from + len);
      return { bytes: b, what: `copy ${from}+${len} to ${to}` };
    }
    default: {
      const at = rng.int(n);
      b[at] = rng.pick([0, 0xff, 0x7f, 0x80, 0x20, 0x0a, 0x2e, 0x28]);
      return { bytes: b, what: `byte ${b[at]} at ${at}` };
    }
  }
}

/** One to `most` mutations in a row. */
export function mutateMany(
  src: Uint8Array,
  rng: FuzzRng,
  most = 3,
): { bytes: Uint8Array; what: string } {
  let bytes = src;
  const whats: string[] = [];
  for (let i = 1 + rng.int(most); i > 0; i--) {
    const m = mutateBytes(bytes, rng);
    bytes = m.bytes;
    whats.push(m.what);
  }
  return { bytes, what: whats.join(", ") };
}

/** Text that breaks parsers: quotes, brackets, escapes, huge numbers, odd whitespace. */
const TEXT_BITS = [
  '"',
  "'",
  ",",
  "\n",
  "\r\n",
  "\r",
  "<",
  ">",
  "</",
  "/>",
  "<!--",
  "-->",
  "<![CDATA[",
  "]]>",
  "&",
  "&amp;",
  "&#x0;",
  "{",
  "}",
  "[",
  "]",
  ":",
  "null",
  "true",
  "-1",
  "0",
  "1e308",
  "NaN",
  "9007199254740993",
  "-0",
  "\u0000",
  "\ufeff",
  "\ud800",
  "é",
  "\t",
  " ",
  "constructor",
  "__proto__",
  "../",
  "..\\",
  "/etc/passwd",
];

/** One random text-level mutation of `src`. */
export function mutateText(src: string, rng: FuzzRng): { text: string; what: string } {
  const n = src.length;
  const at = rng.int(n + 1);
  switch (rng.int(5)) {
    case 0: {
      const bit = rng.pick(TEXT_BITS);
      return {
        text: src.slice(0, at) + bit + src.slice(at),
        what: `insert ${JSON.stringify(bit)}`,
      };
    }
    case 1: {
      const len = rng.int(Math.min(64, n - at) + 1);
      return { text: src.slice(0, at) + src.slice(at + len), what: `delete ${at}+${len}` };
    }
    case 2: {
      const len = 1 + rng.int(Math.min(128, Math.max(1, n - at)));
      const times = rng.pick([2, 10, 100, 1000]);
      const span = src.slice(at, at + len);
      return {
        text: src.slice(0, at) + span.repeat(times) + src.slice(at),
        what: `repeat ${len}×${times}`,
      };
    }
    case 3:
      return { text: src.slice(0, at), what: `cut at ${at}` };
    default: {
      const m = [...src.matchAll(/-?\d+(\.\d+)?/g)];
      if (m.length === 0) return { text: src + rng.pick(TEXT_BITS), what: "append" };
      const hit = rng.pick(m);
      const v = rng.pick(["0", "-1", "1e9", "99999999", "1e308", "-5", "0.5", "NaN", "1e-300"]);
      return {
        text: src.slice(0, hit.index) + v + src.slice(hit.index! + hit[0].length),
        what: `number ${hit[0]} → ${v}`,
      };
    }
  }
}
