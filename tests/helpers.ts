/**
 * How tests run, shared by every test file: the GPU test wrapper and reading
 * tensors back, a seeded random source, finite differences and small maths,
 * temporary folders, draining async iterables, the Python oracles' availability and the path to
 * the optional shared data. What tests compare against and build from (the
 * golden fixtures, the tiny ViT) is in fixtures.ts.
 */
import { mulberry32, normal, type Random } from "../graph/random.ts";
import { getGpu, type Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";

/**
 * Registers a test that needs the GPU. WebGPU keeps async ops and resources
 * open across tests by design (the device is shared per process), so Deno's
 * sanitizers are off for these. `ignore` skips it (an oracle that is absent).
 */
export function gpuTest(
  name: string,
  fn: (gpu: Gpu) => Promise<void> | void,
  opts: { ignore?: boolean } = {},
): void {
  Deno.test({
    name,
    ignore: opts.ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const gpu = await getGpu();
      await fn(gpu);
      await gpu.sync();
    },
  });
}

/** Reads tensors back to the host, then releases them. */
export async function take(gpu: Gpu, ...ts: GpuTensor[]): Promise<Float32Array[]> {
  const out = await Promise.all(ts.map((t) => gpu.readF32(t)));
  gpu.release(...ts);
  return out;
}

/** Deterministic PRNG (bloom's mulberry32, graph/random.ts) with uniform and normal draws. */
export class Rng {
  #next: Random;
  constructor(seed = 1) {
    this.#next = mulberry32(seed);
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.#next();
  }
  /** Uniform in [lo, hi). */
  uniform(lo = -1, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }
  /** Standard normal (Box–Muller). */
  normal(): number {
    return normal(this.#next);
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

/** Dot product in float64. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Runs `fn` with a fresh temporary folder, removed afterwards (whatever `fn` does). */
export async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "bloom-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A temporary folder for a whole test module, removed when the process exits. */
export function moduleTempDir(prefix: string): string {
  const dir = Deno.makeTempDirSync({ prefix });
  globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
  return dir;
}

/** Everything an async iterable yields, in order. */
export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
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

/**
 * Writes a `--preload` script into `dir` that fails the process (exit 1,
 * "the GPU was touched …") at its first touch of WebGPU: a command run with
 * it that ends otherwise did its checks before any GPU work.
 */
export async function noGpuPreload(dir: string): Promise<string> {
  const path = `${dir}/no_gpu.js`;
  await Deno.writeTextFile(
    path,
    `Object.defineProperty(Navigator.prototype, "gpu", {
  get() { throw new Error("the GPU was touched before the flags were checked"); },
});`,
  );
  return path;
}
