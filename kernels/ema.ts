/**
 * Teacher EMA over an arena chunk: `teacher ← m·teacher + (1 − m)·student`, DINOv2's
 * `_foreach_mul_(teacher, m); _foreach_add_(teacher, student, alpha=1 − m)`.
 *
 * The momentum lives in a small storage tensor, not a uniform, so a recorded step replays with the
 * scheduled momentum the host writes before each replay. Give it two elements `[m, 1 − m]`
 * (`writeMomentum`) to get PyTorch's `1 − m`, computed in float64 and rounded once: near m = 1,
 * `1 − fround(m)` in f32 is off by up to 6e-8 / (1 − m) relative (6e-4 at m = 0.9999), a bias on
 * every step. With one element the kernel computes `1 − m` in f32.
 */
import { checkChunk } from "./adamw.ts";
import { flatMain, grid, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { u32Uniforms } from "./uniforms.ts";

const WG = 256;

function emaKernel(complement: boolean) {
  return kernel({
    name: "ema",
    key: complement ? "m,1-m" : "m",
    bindings: ["read_write", "read", "read"],
    uniformBytes: 16,
    source: () => `
struct P { n4: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<storage, read_write> teacher: array<vec4f>;
@group(0) @binding(1) var<storage, read> student: array<vec4f>;
@group(0) @binding(2) var<storage, read> mom: array<f32>;
@group(0) @binding(3) var<uniform> u: P;
${flatMain(WG, "i", "u.n4")}
  let m = mom[0];
  let a = ${complement ? "mom[1]" : "1.0 - m"};
  teacher[i] = teacher[i] * m + a * student[i];
}`,
  });
}

/**
 * `teacher ← m·teacher + (1 − m)·student` over one chunk (equal lengths, a multiple of 4), with
 * `momentum` a `[1]` (m) or `[2]` (m, 1 − m) f32 tensor read on the GPU.
 */
export function emaUpdate(
  gpu: Gpu,
  teacher: GpuTensor,
  student: GpuTensor,
  momentum: GpuTensor,
): void {
  const n = checkChunk("emaUpdate", { teacher, student });
  if (momentum.dtype !== "f32" || (momentum.numel !== 1 && momentum.numel !== 2)) {
    throw new RangeError(
      `emaUpdate: momentum must be an f32 tensor of [m] or [m, 1 − m], got [${momentum.shape}] ` +
        momentum.dtype,
    );
  }
  if (n === 0) return;
  const n4 = n / 4;
  gpu.dispatch(
    emaKernel(momentum.numel === 2),
    [teacher, student, momentum],
    grid(Math.ceil(n4 / WG)),
    u32Uniforms(n4),
  );
}

/** `[m, 1 − m]` with `1 − m` from float64, for a two-element momentum tensor. */
export function momentumValues(m: number): Float32Array {
  if (!(m >= 0 && m <= 1)) throw new RangeError(`momentum must lie in [0, 1], got ${m}`);
  return new Float32Array([m, 1 - m]);
}

/** Writes this step's momentum into a two-element momentum tensor. */
export function writeMomentum(gpu: Gpu, momentum: GpuTensor, m: number): void {
  if (momentum.dtype !== "f32" || momentum.numel !== 2) {
    throw new RangeError(
      `writeMomentum: expected an f32 [2] tensor ([m, 1 − m]), got [${momentum.shape}]`,
    );
  }
  gpu.write(momentum, momentumValues(m));
}

/** CPU reference of `emaUpdate` with PyTorch's f32 roundings (`alpha = 1 − m` in float64). */
export function emaRef(teacher: Float32Array, student: Float32Array, m: number): void {
  const f = Math.fround;
  const mf = f(m);
  const a = f(1 - m);
  for (let i = 0; i < teacher.length; i++) teacher[i] = f(f(teacher[i] * mf) + f(a * student[i]));
}
