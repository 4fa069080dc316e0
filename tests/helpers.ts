/**
 * Test helpers shared by every test file: the GPU test wrapper, a seeded
 * random source, finite differences and the path to the optional shared data.
 */
import { getGpu, type Gpu } from "../kernels/runtime.ts";

/**
 * Registers a test that needs the GPU. WebGPU keeps async ops and resources
 * open across tests by design (the device is shared per process), so Deno's
 * sanitizers are off for these.
 */
export function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void> | void): void {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const gpu = await getGpu();
      await fn(gpu);
      await gpu.sync();
    },
  });
}

/** Deterministic PRNG (mulberry32) with uniform and normal draws. */
export class Rng {
  #s: number;
  constructor(seed = 1) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s += 0x6d2b79f5);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform in [lo, hi). */
  uniform(lo = -1, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }
  /** Standard normal (Box–Muller). */
  normal(): number {
    const u = Math.max(this.next(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** A Float32Array of `n` uniform values in [lo, hi). */
  floats(n: number, lo = -1, hi = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.uniform(lo, hi);
    return a;
  }
  /** A Float32Array of `n` normal values times `scale`. */
  normals(n: number, scale = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.normal() * scale;
    return a;
  }
}

/**
 * Central finite-difference gradient of the scalar `f` at `x` (float64 maths
 * on a copy), for checking backward rules: d f / d x_i ≈ (f(x+h) − f(x−h)) / 2h.
 * `indices` limits the check to some coordinates.
 */
export function finiteDifference(
  f: (x: Float64Array) => number,
  x: ArrayLike<number>,
  h = 1e-3,
  indices?: number[],
): Float64Array {
  const xs = Float64Array.from(x);
  const idx = indices ?? [...xs.keys()];
  const g = new Float64Array(xs.length);
  for (const i of idx) {
    const v = xs[i];
    xs[i] = v + h;
    const fp = f(xs);
    xs[i] = v - h;
    const fm = f(xs);
    xs[i] = v;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

/** `../shared/data` relative to the project root, or null (with the reason) when absent. */
export function sharedData(): string | null {
  const root = new URL("../../shared/data/", import.meta.url).pathname;
  try {
    return Deno.statSync(root).isDirectory ? root : null;
  } catch {
    return null;
  }
}

/** Whether Debian's python3 with the named modules is available for oracle tests. */
export async function hasPython(...modules: string[]): Promise<boolean> {
  try {
    const out = await new Deno.Command("/usr/bin/python3", {
      args: ["-c", modules.map((m) => `import ${m}`).join("; ") || "pass"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}
