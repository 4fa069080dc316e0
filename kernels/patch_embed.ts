/**
 * Patch embedding as im2col: DINOv2's `PatchEmbed` is `Conv2d(C, D, kernel p, stride p)` followed
 * by `flatten(2).transpose(1, 2)`. With stride equal to the kernel the patches do not overlap, so
 * the convolution is exactly `im2col(images) @ weight.reshape(D, C·p·p)ᵀ + bias`; the matmul is
 * `kernels/matmul/`'s job, this file only rearranges pixels.
 *
 * Layouts:
 * - images `[B, C, H, W]` (NCHW, f32), as PyTorch feeds the conv;
 * - cols `[B·gh·gw, C·p·p]` with `gh = floor(H/p)`, `gw = floor(W/p)`; row `r = (b·gh + i)·gw + j`
 *   is patch (i, j) of image b in row-major grid order (the token order of DINOv2), column
 *   `(c·p + kh)·p + kw`, the order of `conv.weight.reshape(D, -1)`.
 * Pixels past `gh·p` / `gw·p` are dropped, as the strided conv drops them; their gradient is 0.
 */
import { splitSpans } from "./common/split.ts";
import { flatMain, grid, type Kernel, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { u32Uniforms } from "./uniforms.ts";

const WG = 256;

/** Grid geometry of one image size and patch. */
interface PatchGeometry {
  B: number;
  C: number;
  H: number;
  W: number;
  p: number;
  gh: number;
  gw: number;
}

function geometry(op: string, imageShape: readonly number[], patch: number): PatchGeometry {
  if (imageShape.length !== 4) {
    throw new RangeError(`${op}: images must be [B, C, H, W] (NCHW), got [${imageShape}]`);
  }
  if (!Number.isInteger(patch) || patch < 1) {
    throw new RangeError(`${op}: patch must be a positive integer, got ${patch}`);
  }
  const [B, C, H, W] = imageShape;
  return { B, C, H, W, p: patch, gh: Math.floor(H / patch), gw: Math.floor(W / patch) };
}

const im2colKernel = kernel({
  name: "im2col",
  bindings: ["read", "read_write"],
  uniformBytes: 32,
  source: () => `
struct P { n: u32, C: u32, H: u32, W: u32, p: u32, gh: u32, gw: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> img: array<f32>;
@group(0) @binding(1) var<storage, read_write> cols: array<f32>;
@group(0) @binding(2) var<uniform> u: P;
${flatMain(WG, "idx", "u.n")}
  // One invocation per output element: consecutive invocations write consecutive columns.
  let pp = u.p * u.p;
  let ncols = u.C * pp;
  let r = idx / ncols;
  let k = idx - r * ncols;
  let cells = u.gh * u.gw;
  let b = r / cells;
  let ij = r - b * cells;
  let i = ij / u.gw;
  let j = ij - i * u.gw;
  let c = k / pp;
  let kk = k - c * pp;
  let kh = kk / u.p;
  let kw = kk - kh * u.p;
  cols[idx] = img[((b * u.C + c) * u.H + i * u.p + kh) * u.W + j * u.p + kw];
}`,
});

const col2imKernel = kernel({
  name: "col2im",
  bindings: ["read", "read_write"],
  uniformBytes: 32,
  source: () => `
struct P { n: u32, C: u32, H: u32, W: u32, p: u32, gh: u32, gw: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> cols: array<f32>;
@group(0) @binding(1) var<storage, read_write> img: array<f32>;
@group(0) @binding(2) var<uniform> u: P;
${flatMain(WG, "idx", "u.n")}
  // Gather form of the adjoint: patches do not overlap, so each pixel has at most one source.
  let x = idx % u.W;
  let t = idx / u.W;
  let y = t % u.H;
  let bc = t / u.H;
  let c = bc % u.C;
  let b = bc / u.C;
  var v = 0.0;
  if (y < u.gh * u.p && x < u.gw * u.p) {
    let i = y / u.p;
    let kh = y - i * u.p;
    let j = x / u.p;
    let kw = x - j * u.p;
    let r = (b * u.gh + i) * u.gw + j;
    v = cols[r * u.C * u.p * u.p + (c * u.p + kh) * u.p + kw];
  }
  img[idx] = v;
}`,
});

/**
 * Copies images → patch rows (`im2col`) or back (`col2im`): one invocation per element of
 * `dst`, over spans of images whose `src` and `dst` slices each fit a binding at aligned
 * offsets (`srcPer`, `dstPer`: elements per image). Throws `GpuLimitError` when one image
 * cannot be bound.
 */
function dispatchImages(
  gpu: Gpu,
  op: string,
  k: Kernel,
  g: PatchGeometry,
  src: GpuTensor,
  dst: GpuTensor,
  srcPer: number,
  dstPer: number,
  maxBindingBytes?: number,
): void {
  const images = splitSpans(gpu.limits, {
    op,
    item: `image [${g.C}, ${g.H}, ${g.W}]`,
    count: g.B,
    itemBytes: [srcPer * 4, dstPer * 4],
    maxBytes: maxBindingBytes,
    fix: "use smaller images",
  });
  for (const c of images) {
    const n = c.count * dstPer;
    gpu.dispatch(
      k,
      [src.view(c.start * srcPer, [c.count * srcPer]), dst.view(c.start * dstPer, [n])],
      grid(Math.ceil(n / WG)),
      u32Uniforms(n, g.C, g.H, g.W, g.p, g.gh, g.gw, 0),
    );
  }
}

/** Options shared by im2col and col2im. */
export interface PatchOptions {
  /** Pretend the binding limit is this many bytes (tests of the split path). */
  maxBindingBytes?: number;
}

/**
 * Rearranges `images [B, C, H, W]` into patch rows `[B·gh·gw, C·p·p]` (see the file comment for
 * the order), so `cols @ W.reshape(D, -1)ᵀ` is DINOv2's patch embedding. Splits into image ranges
 * when a binding would exceed the adapter's limit.
 */
export function im2col(
  gpu: Gpu,
  images: GpuTensor,
  patch: number,
  opts: PatchOptions = {},
): GpuTensor {
  const g = geometry("im2col", images.shape, patch);
  if (images.dtype !== "f32") {
    throw new TypeError(`im2col: images must be f32, got ${images.dtype}`);
  }
  const cols = g.C * g.p * g.p;
  const out = gpu.empty([g.B * g.gh * g.gw, cols]);
  if (out.numel === 0) return out;
  const inPer = g.C * g.H * g.W;
  const outPer = g.gh * g.gw * cols;
  dispatchImages(gpu, "im2col", im2colKernel, g, images, out, inPer, outPer, opts.maxBindingBytes);
  return out;
}

/**
 * The adjoint of `im2col`: scatters patch-row gradients `dcols [B·gh·gw, C·p·p]` back to an
 * image gradient of `imageShape` `[B, C, H, W]` (zero where the conv dropped pixels).
 */
export function col2im(
  gpu: Gpu,
  dcols: GpuTensor,
  imageShape: readonly number[],
  patch: number,
  opts: PatchOptions = {},
): GpuTensor {
  const g = geometry("col2im", imageShape, patch);
  const cols = g.C * g.p * g.p;
  const rows = g.B * g.gh * g.gw;
  if (dcols.shape.length !== 2 || dcols.shape[0] !== rows || dcols.shape[1] !== cols) {
    throw new RangeError(
      `col2im: dcols must be [${rows}, ${cols}] for images [${imageShape}] and patch ${patch}, ` +
        `got [${dcols.shape}]`,
    );
  }
  const out = gpu.empty([g.B, g.C, g.H, g.W]);
  if (out.numel === 0) return out;
  if (rows === 0) {
    // Images smaller than one patch: nothing reaches the conv, the gradient is all zero.
    gpu.release(out);
    return gpu.zeros([g.B, g.C, g.H, g.W]);
  }
  const inPer = g.C * g.H * g.W;
  const outPer = g.gh * g.gw * cols;
  dispatchImages(gpu, "col2im", col2imKernel, g, dcols, out, outPer, inPer, opts.maxBindingBytes);
  return out;
}

/** Calls `f(pixel, col)` for every image element a patch row holds and its place there. */
function forEachPatchElement(g: PatchGeometry, f: (pixel: number, col: number) => void): void {
  const { B, C, H, W, p, gh, gw } = g;
  const ncols = C * p * p;
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < gh; i++) {
      for (let j = 0; j < gw; j++) {
        const row = ((b * gh + i) * gw + j) * ncols;
        for (let c = 0; c < C; c++) {
          for (let kh = 0; kh < p; kh++) {
            for (let kw = 0; kw < p; kw++) {
              f(((b * C + c) * H + i * p + kh) * W + j * p + kw, row + (c * p + kh) * p + kw);
            }
          }
        }
      }
    }
  }
}

/** CPU reference of `im2col` on an NCHW array of shape `imageShape`. */
export function im2colRef(
  images: Float32Array,
  imageShape: readonly number[],
  patch: number,
): Float32Array {
  const g = geometry("im2colRef", imageShape, patch);
  const out = new Float32Array(g.B * g.gh * g.gw * g.C * g.p * g.p);
  forEachPatchElement(g, (pixel, col) => (out[col] = images[pixel]));
  return out;
}

/** CPU reference of `col2im`: the transpose of `im2colRef`'s selection matrix. */
export function col2imRef(
  dcols: Float32Array,
  imageShape: readonly number[],
  patch: number,
): Float32Array {
  const g = geometry("col2imRef", imageShape, patch);
  const out = new Float32Array(g.B * g.C * g.H * g.W);
  forEachPatchElement(g, (pixel, col) => (out[pixel] += dcols[col]));
  return out;
}
