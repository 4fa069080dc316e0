/**
 * Peak kernels: the adapter's own compute and bandwidth ceilings, measured in
 * the same run as every benchmark so figures are ratios, not absolute times.
 */
import { FLAT_WORKGROUP_INDEX, grid, GRID_BUILTINS, type Kernel, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { u32Uniforms } from "./uniforms.ts";

/** FMAs per invocation per loop trip: 8 independent vec4 chains. */
const CHAINS = 8;

/** A kernel of nothing but independent vec4 FMAs: `iters × 8 × 4 × 2` FLOP per invocation. */
export function fmaKernel(iters: number): Kernel {
  return kernel({
    name: "peak_fma",
    key: `${iters}`,
    bindings: ["read_write"],
    source: () => `
@group(0) @binding(0) var<storage, read_write> out: array<vec4f>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let id = g.x + g.y * nwg.x * 64u;
  let s = f32(id & 7u) * 1e-3;
  let m = vec4f(0.9999, 1.0001, 0.99995, 1.00005);
  let c = vec4f(1e-7);
${Array.from({ length: CHAINS }, (_, i) => `  var a${i} = vec4f(s + ${i}.0);`).join("\n")}
  for (var i = 0u; i < ${iters}u; i++) {
${Array.from({ length: CHAINS }, (_, i) => `    a${i} = fma(a${i}, m, c);`).join("\n")}
  }
  if (id < arrayLength(&out)) {
    out[id] = ${Array.from({ length: CHAINS }, (_, i) => `a${i}`).join(" + ")};
  }
}`,
  });
}

/** Dispatches the FMA kernel over `invocations` threads; returns the FLOP count. */
export function runFma(gpu: Gpu, out: GpuTensor, invocations: number, iters: number): number {
  gpu.dispatch(fmaKernel(iters), [out], grid(Math.ceil(invocations / 64)));
  return invocations * iters * CHAINS * 4 * 2;
}

/** vec4 copy, one element per invocation, flat grid. */
export const copyKernel: Kernel = kernel({
  name: "peak_copy",
  bindings: ["read", "read_write"],
  uniformBytes: 16,
  source: () => `
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> src: array<vec4f>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4f>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(${GRID_BUILTINS}) {
  let i = ${FLAT_WORKGROUP_INDEX} * 256u + lid;
  if (i < p.n) { dst[i] = src[i]; }
}`,
});

/** Copies `src` to `dst` (vec4 granularity); returns the bytes moved (read + written). */
export function runCopy(gpu: Gpu, src: GpuTensor, dst: GpuTensor): number {
  const n4 = Math.floor(src.numel / 4);
  gpu.dispatch(copyKernel, [src, dst], grid(Math.ceil(n4 / 256)), u32Uniforms(n4));
  return n4 * 16 * 2;
}
