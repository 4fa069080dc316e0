/**
 * Elementwise ops: broadcasting binary ops, unary ops, affine, the MLP
 * activations (exact-erf GELU, SiLU, DINOv2's SwiGLU), fill and in-place
 * gradient accumulation, each with its backward and a float64 CPU reference.
 *
 * Every kernel here is a body for the strided-map engine (`strided_map.ts`
 * `stridedMap`), which does the indexing, vec4 loads, broadcasting and the
 * binding-limit windows; this file only says what is computed per element.
 *
 * Numerics: llvmpipe's builtin `tanh` loses relative accuracy near 0 and
 * its compiler folds `x != x`, so tanh and NaN tests are written out here
 * (`MATH_WGSL`); the tanh polynomial was least-squares fitted for this file on
 * Chebyshev nodes (numpy, float64) and checked in f32: ≤ 1.1e-7 relative for
 * |x| < 0.625. GELU is bloom's one GELU (`gelu.ts`), the same function
 * matmul's fused epilogue computes.
 */
import {
  broadcastIndex,
  broadcastShapes,
  checkTensor,
  fmtShape,
  sameShape,
} from "./common/shape.ts";
import { operand, stridedMap, type StridedOperand } from "./strided_map.ts";
import { GELU_WGSL, geluGradRef } from "./gelu.ts";
import { ISNAN_WGSL, sumToShape } from "./reduce.ts";
import type { Gpu } from "./runtime.ts";
import { type GpuTensor, numel } from "./tensor.ts";

/** Broadcasting binary ops. */
export type BinaryOp = "add" | "sub" | "mul" | "div" | "max" | "min";
/** Unary ops. */
export type UnaryOp =
  | "neg"
  | "exp"
  | "log"
  | "sqrt"
  | "rsqrt"
  | "tanh"
  | "sigmoid"
  | "relu"
  | "abs"
  | "square";

/** Every helper the element bodies call. */
const MATH_WGSL = `${ISNAN_WGSL}
${GELU_WGSL}
fn sigmoid_f32(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
fn tanh_f32(x: f32) -> f32 {
  let z = abs(x);
  if (z < 0.625) {
    let w = x * x;
    return x * (1.0 + w * (-0.33333275 + w * (0.13331366 + w * (-0.053735863 +
      w * (0.020630307 + w * -0.0056975223)))));
  }
  let t = 1.0 - 2.0 / (exp(2.0 * z) + 1.0);
  return select(select(t, -t, x < 0.0), x, isnan1(x));
}`;

const BINARY: Record<BinaryOp, string> = {
  add: "return x0 + x1;",
  sub: "return x0 - x1;",
  mul: "return x0 * x1;",
  div: "return x0 / x1;",
  // torch.maximum/minimum propagate NaN (WGSL max/min need not).
  max: "return select(select(max(x0, x1), x1, isnan1(x1)), x0, isnan1(x0));",
  min: "return select(select(min(x0, x1), x1, isnan1(x1)), x0, isnan1(x0));",
};

/**
 * Gradient bodies at the broadcast shape, with x0 = dy, x1 = a, x2 = b.
 * max/min follow torch: a tie splits the gradient in half.
 */
const BINARY_GRAD: Record<BinaryOp, { a: string; b: string }> = {
  add: { a: "return x0;", b: "return x0;" },
  sub: { a: "return x0;", b: "return -x0;" },
  mul: { a: "return x0 * x2;", b: "return x0 * x1;" },
  div: { a: "return x0 / x2;", b: "return -x0 * x1 / (x2 * x2);" },
  max: {
    a: "return select(select(x0, 0.5 * x0, x1 == x2), 0.0, x1 < x2);",
    b: "return select(select(x0, 0.5 * x0, x1 == x2), 0.0, x1 > x2);",
  },
  min: {
    a: "return select(select(x0, 0.5 * x0, x1 == x2), 0.0, x1 > x2);",
    b: "return select(select(x0, 0.5 * x0, x1 == x2), 0.0, x1 < x2);",
  },
};

const UNARY: Record<UnaryOp, string> = {
  neg: "return -x0;",
  exp: "return exp(x0);",
  log: "return log(x0);",
  sqrt: "return sqrt(x0);",
  rsqrt: "return inverseSqrt(x0);",
  tanh: "return tanh_f32(x0);",
  sigmoid: "return sigmoid_f32(x0);",
  // select keeps NaN (max(NaN, 0) is 0 on some adapters); torch.relu(NaN) is NaN.
  relu: "return select(x0, 0.0, x0 < 0.0);",
  abs: "return abs(x0);",
  square: "return x0 * x0;",
};

/**
 * Backward bodies (torch's formulas) and what they read besides dy (x0):
 * "x" or "y" as x1.
 */
const UNARY_GRAD: Record<UnaryOp, { uses: "x" | "y" | null; body: string }> = {
  neg: { uses: null, body: "return -x0;" },
  exp: { uses: "y", body: "return x0 * x1;" },
  log: { uses: "x", body: "return x0 / x1;" },
  sqrt: { uses: "y", body: "return x0 / (2.0 * x1);" },
  rsqrt: { uses: "y", body: "return -0.5 * x0 * x1 * x1 * x1;" },
  tanh: { uses: "y", body: "return x0 * (1.0 - x1 * x1);" },
  sigmoid: { uses: "y", body: "return x0 * x1 * (1.0 - x1);" },
  relu: { uses: "y", body: "return select(0.0, x0, x1 > 0.0);" },
  // sign(0) = 0 like torch.sgn; NaN inputs give NaN.
  abs: { uses: "x", body: "return select(x0 * sign(x1), x1, isnan1(x1));" },
  square: { uses: "x", body: "return 2.0 * x1 * x0;" },
};

const SILU = "let s = sigmoid_f32(x0); return x0 * s;";
const SILU_GRAD = "let s = sigmoid_f32(x1); return x0 * s * (1.0 + x1 * (1.0 - s));";

function contiguous(t: GpuTensor): StridedOperand {
  return operand(t, t.shape);
}

/** out = f(inputs) over `shape` where every input is broadcast to it; returns the fresh out. */
function map(
  gpu: Gpu,
  name: string,
  body: string,
  shape: readonly number[],
  inputs: GpuTensor[],
  scalars?: number[],
): GpuTensor {
  const y = gpu.empty(shape, "f32", name);
  stridedMap(gpu, {
    name,
    body,
    prelude: MATH_WGSL,
    shape,
    inputs: inputs.map((t) => operand(t, shape)),
    out: operand(y, shape),
    scalars,
  });
  return y;
}

function checkSame(op: string, names: string[], ts: GpuTensor[]): void {
  ts.forEach((t, i) => checkTensor(op, names[i], t, "f32"));
  for (let i = 1; i < ts.length; i++) {
    if (!sameShape(ts[i].shape, ts[0].shape)) {
      throw new RangeError(
        `${op}: ${names[i]} ${fmtShape(ts[i].shape)} must have the shape of ${names[0]} ` +
          `${fmtShape(ts[0].shape)}`,
      );
    }
  }
}

// ----------------------------------------------------------------- binary

/** `a op b` with numpy broadcasting (f32). */
export function binary(gpu: Gpu, op: BinaryOp, a: GpuTensor, b: GpuTensor): GpuTensor {
  if (!(op in BINARY)) throw new RangeError(`binary: unknown op '${op}'`);
  checkTensor(`binary ${op}`, "a", a, "f32");
  checkTensor(`binary ${op}`, "b", b, "f32");
  const shape = broadcastShapes(op, a.shape, b.shape);
  return map(gpu, `ew_${op}`, BINARY[op], shape, [a, b]);
}

/** a + b (broadcasting). */
export function add(gpu: Gpu, a: GpuTensor, b: GpuTensor): GpuTensor {
  return binary(gpu, "add", a, b);
}
/** a − b (broadcasting). */
export function sub(gpu: Gpu, a: GpuTensor, b: GpuTensor): GpuTensor {
  return binary(gpu, "sub", a, b);
}
/** a · b (broadcasting). */
export function mul(gpu: Gpu, a: GpuTensor, b: GpuTensor): GpuTensor {
  return binary(gpu, "mul", a, b);
}
/** a / b (broadcasting). */
export function div(gpu: Gpu, a: GpuTensor, b: GpuTensor): GpuTensor {
  return binary(gpu, "div", a, b);
}

/**
 * Gradients of `binary(op, a, b)` given dy (at the broadcast shape), already
 * summed down to a's and b's shapes. `need` skips a side (default: both).
 */
export function binaryBackward(
  gpu: Gpu,
  op: BinaryOp,
  dy: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  need: { a?: boolean; b?: boolean } = { a: true, b: true },
): { da?: GpuTensor; db?: GpuTensor } {
  if (!(op in BINARY_GRAD)) throw new RangeError(`binaryBackward: unknown op '${op}'`);
  const name = `binaryBackward ${op}`;
  checkTensor(name, "dy", dy, "f32");
  checkTensor(name, "a", a, "f32");
  checkTensor(name, "b", b, "f32");
  const shape = broadcastShapes(op, a.shape, b.shape);
  if (!sameShape(shape, dy.shape)) {
    throw new RangeError(
      `${name}: dy ${fmtShape(dy.shape)} must have the broadcast shape ${fmtShape(shape)} of ` +
        `a ${fmtShape(a.shape)} and b ${fmtShape(b.shape)}`,
    );
  }
  const side = (which: "a" | "b"): GpuTensor => {
    const target = which === "a" ? a.shape : b.shape;
    if (op === "add" || (op === "sub" && which === "a")) {
      // The gradient is dy itself: reduce (or copy) it without an elementwise pass.
      return sumToShape(gpu, dy, [...target]);
    }
    if (op === "sub") {
      const g = sumToShape(gpu, dy, [...target]);
      negateInPlace(gpu, g);
      return g;
    }
    const g = map(gpu, `ew_${op}_bwd_${which}`, BINARY_GRAD[op][which], shape, [dy, a, b]);
    if (sameShape(target, shape)) return g;
    const r = sumToShape(gpu, g, [...target]);
    gpu.release(g);
    return r;
  };
  const out: { da?: GpuTensor; db?: GpuTensor } = {};
  if (need.a ?? false) out.da = side("a");
  if (need.b ?? false) out.db = side("b");
  return out;
}

function negateInPlace(gpu: Gpu, t: GpuTensor): void {
  stridedMap(gpu, {
    name: "ew_neg_inplace",
    body: "return -acc;",
    shape: t.shape,
    inputs: [],
    out: contiguous(t),
    readOut: true,
  });
}

// ------------------------------------------------------------------ unary

/** An elementwise function of x (f32). */
export function unary(gpu: Gpu, op: UnaryOp, x: GpuTensor): GpuTensor {
  if (!(op in UNARY)) throw new RangeError(`unary: unknown op '${op}'`);
  checkTensor(`unary ${op}`, "x", x, "f32");
  return map(gpu, `ew_${op}`, UNARY[op], x.shape, [x]);
}

/** dx of `unary(op, x) = y` given dy; reads x or y as the op's derivative needs. */
export function unaryBackward(
  gpu: Gpu,
  op: UnaryOp,
  dy: GpuTensor,
  x: GpuTensor,
  y: GpuTensor,
): GpuTensor {
  if (!(op in UNARY_GRAD)) throw new RangeError(`unaryBackward: unknown op '${op}'`);
  checkSame(`unaryBackward ${op}`, ["dy", "x", "y"], [dy, x, y]);
  const g = UNARY_GRAD[op];
  const inputs = g.uses === "x" ? [dy, x] : g.uses === "y" ? [dy, y] : [dy];
  return map(gpu, `ew_${op}_bwd`, g.body, dy.shape, inputs);
}

/** alpha·x + beta. */
export function affine(gpu: Gpu, x: GpuTensor, alpha: number, beta = 0): GpuTensor {
  checkTensor("affine", "x", x, "f32");
  return map(gpu, "ew_affine", "return x0 * p.s0 + p.s1;", x.shape, [x], [alpha, beta]);
}

// ------------------------------------------------------------ activations

/** Exact (erf) GELU, as PyTorch's nn.GELU(). */
export function gelu(gpu: Gpu, x: GpuTensor): GpuTensor {
  checkTensor("gelu", "x", x, "f32");
  return map(gpu, "ew_gelu", "return bloom_gelu(x0);", x.shape, [x]);
}

/** dx of GELU: dy·(Φ(x) + x·φ(x)). */
export function geluBackward(gpu: Gpu, dy: GpuTensor, x: GpuTensor): GpuTensor {
  checkSame("geluBackward", ["dy", "x"], [dy, x]);
  return map(gpu, "ew_gelu_bwd", "return x0 * bloom_gelu_grad(x1);", dy.shape, [dy, x]);
}

/** SiLU: x·sigmoid(x). */
export function silu(gpu: Gpu, x: GpuTensor): GpuTensor {
  checkTensor("silu", "x", x, "f32");
  return map(gpu, "ew_silu", SILU, x.shape, [x]);
}

/** dx of SiLU: dy·s·(1 + x·(1 − s)), s = sigmoid(x). */
export function siluBackward(gpu: Gpu, dy: GpuTensor, x: GpuTensor): GpuTensor {
  checkSame("siluBackward", ["dy", "x"], [dy, x]);
  return map(gpu, "ew_silu_bwd", SILU_GRAD, dy.shape, [dy, x]);
}

function swigluShape(op: string, x12: GpuTensor): { rows: number; h: number; shape: number[] } {
  checkTensor(op, "x12", x12, "f32");
  const r = x12.shape.length;
  const last = r > 0 ? x12.shape[r - 1] : 0;
  if (r === 0 || last % 2 !== 0) {
    throw new RangeError(
      `${op}: x12 ${fmtShape(x12.shape)} must end in an even dimension 2H ([x1, x2] halves)`,
    );
  }
  const h = last / 2;
  return { rows: numel(x12.shape.slice(0, -1)), h, shape: [...x12.shape.slice(0, -1), h] };
}

/** The two halves of x12 [rows, 2H] as strided operands of a [rows, H] map. */
function halves(x12: GpuTensor, h: number): [StridedOperand, StridedOperand] {
  return [
    { t: x12, strides: [2 * h, 1], offset: 0 },
    { t: x12, strides: [2 * h, 1], offset: h },
  ];
}

/**
 * DINOv2's SwiGLU FFN gate: x12 [..., 2H] → silu(x1)·x2 [..., H] with
 * x1, x2 = x12.chunk(2, dim=-1).
 */
export function swiglu(gpu: Gpu, x12: GpuTensor): GpuTensor {
  const { rows, h, shape } = swigluShape("swiglu", x12);
  const y = gpu.empty(shape, "f32", "swiglu");
  stridedMap(gpu, {
    name: "ew_swiglu",
    body: "let s = sigmoid_f32(x0); return x0 * s * x1;",
    prelude: MATH_WGSL,
    shape: [rows, h],
    inputs: halves(x12, h),
    out: { t: y, strides: [h, 1] },
  });
  return y;
}

/** d x12 of SwiGLU: [dy·x2·silu'(x1), dy·silu(x1)] in the two halves. */
export function swigluBackward(gpu: Gpu, dy: GpuTensor, x12: GpuTensor): GpuTensor {
  const { rows, h, shape } = swigluShape("swigluBackward", x12);
  checkTensor("swigluBackward", "dy", dy, "f32");
  if (!sameShape(dy.shape, shape)) {
    throw new RangeError(
      `swigluBackward: dy ${fmtShape(dy.shape)} must be ${fmtShape(shape)} for x12 ${
        fmtShape(x12.shape)
      }`,
    );
  }
  const dx = gpu.empty(x12.shape, "f32", "swiglu_bwd");
  const [x1, x2] = halves(x12, h);
  const dyo: StridedOperand = { t: dy, strides: [h, 1] };
  stridedMap(gpu, {
    name: "ew_swiglu_bwd_1",
    body: "let s = sigmoid_f32(x1); return x0 * x2 * s * (1.0 + x1 * (1.0 - s));",
    prelude: MATH_WGSL,
    shape: [rows, h],
    inputs: [dyo, x1, x2],
    out: { t: dx, strides: [2 * h, 1], offset: 0 },
  });
  stridedMap(gpu, {
    name: "ew_swiglu_bwd_2",
    body: "let s = sigmoid_f32(x1); return x0 * x1 * s;",
    prelude: MATH_WGSL,
    shape: [rows, h],
    inputs: [dyo, x1],
    out: { t: dx, strides: [2 * h, 1], offset: h },
  });
  return dx;
}

// ---------------------------------------------------------- fill / accum

/** A new f32 tensor of `shape` filled with `value` (any f32, NaN and ±Inf included). */
export function fill(gpu: Gpu, shape: number[], value: number): GpuTensor {
  const y = gpu.empty(shape, "f32", "fill");
  stridedMap(gpu, {
    name: "ew_fill",
    body: "return p.s0;",
    shape,
    inputs: [],
    out: contiguous(y),
    scalars: [value],
  });
  return y;
}

/**
 * acc += alpha·x in place (gradient accumulation). acc is bound once,
 * read_write; x must have acc's shape and may be acc itself.
 */
export function addInPlace(gpu: Gpu, acc: GpuTensor, x: GpuTensor, alpha = 1): void {
  checkSame("addInPlace", ["acc", "x"], [acc, x]);
  if (x.buffer === acc.buffer) {
    if (x.offset === acc.offset) {
      // acc += alpha·acc: one operand, so the buffer is bound once.
      stridedMap(gpu, {
        name: "ew_accumulate_self",
        body: "return acc + p.s0 * acc;",
        shape: acc.shape,
        inputs: [],
        out: contiguous(acc),
        readOut: true,
        scalars: [alpha],
      });
      return;
    }
    const overlap = x.offset < acc.offset + acc.size && acc.offset < x.offset + x.size;
    if (overlap) {
      throw new RangeError(
        "addInPlace: x partially overlaps acc in one buffer; copy x first",
      );
    }
  }
  stridedMap(gpu, {
    name: "ew_accumulate",
    body: alpha === 1 ? "return acc + x0;" : "return acc + p.s0 * x0;",
    shape: acc.shape,
    inputs: [contiguous(x)],
    out: contiguous(acc),
    readOut: true,
    scalars: [alpha],
  });
}

// ------------------------------------------------------- CPU references

function binaryOpRef(op: BinaryOp, a: number, b: number): number {
  switch (op) {
    case "add":
      return a + b;
    case "sub":
      return a - b;
    case "mul":
      return a * b;
    case "div":
      return a / b;
    case "max":
      return Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b);
    case "min":
      return Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b);
  }
}

/** Reference of `binary`: float64 maths rounded to f32, at the broadcast shape. */
export function binaryRef(
  op: BinaryOp,
  a: ArrayLike<number>,
  aShape: readonly number[],
  b: ArrayLike<number>,
  bShape: readonly number[],
): Float32Array {
  const shape = broadcastShapes(op, aShape, bShape);
  const ia = broadcastIndex(aShape, shape);
  const ib = broadcastIndex(bShape, shape);
  return Float32Array.from(ia, (_, i) => binaryOpRef(op, a[ia[i]], b[ib[i]]));
}

/** Reference of `binaryBackward` (float64 accumulation over broadcast dims). */
export function binaryBackwardRef(
  op: BinaryOp,
  dy: ArrayLike<number>,
  a: ArrayLike<number>,
  aShape: readonly number[],
  b: ArrayLike<number>,
  bShape: readonly number[],
): { da: Float32Array; db: Float32Array } {
  const shape = broadcastShapes(op, aShape, bShape);
  const ia = broadcastIndex(aShape, shape);
  const ib = broadcastIndex(bShape, shape);
  const da = new Float64Array(numel(aShape));
  const db = new Float64Array(numel(bShape));
  for (let i = 0; i < ia.length; i++) {
    const g = dy[i];
    const x = a[ia[i]];
    const y = b[ib[i]];
    let ga = 0;
    let gb = 0;
    switch (op) {
      case "add":
        [ga, gb] = [g, g];
        break;
      case "sub":
        [ga, gb] = [g, -g];
        break;
      case "mul":
        [ga, gb] = [g * y, g * x];
        break;
      case "div":
        [ga, gb] = [g / y, (-g * x) / (y * y)];
        break;
      case "max":
      case "min": {
        const split = x === y ? 0.5 * g : g;
        const aWins = op === "max" ? x > y : x < y;
        const bWins = op === "max" ? x < y : x > y;
        ga = bWins ? 0 : split;
        gb = aWins ? 0 : split;
        break;
      }
    }
    da[ia[i]] += ga;
    db[ib[i]] += gb;
  }
  return { da: Float32Array.from(da), db: Float32Array.from(db) };
}

function unaryOpRef(op: UnaryOp, x: number): number {
  switch (op) {
    case "neg":
      return -x;
    case "exp":
      return Math.exp(x);
    case "log":
      return Math.log(x);
    case "sqrt":
      return Math.sqrt(x);
    case "rsqrt":
      return 1 / Math.sqrt(x);
    case "tanh":
      return Math.tanh(x);
    case "sigmoid":
      return 1 / (1 + Math.exp(-x));
    case "relu":
      return x < 0 ? 0 : x;
    case "abs":
      return Math.abs(x);
    case "square":
      return x * x;
  }
}

/** Reference of `unary`. */
export function unaryRef(op: UnaryOp, x: ArrayLike<number>): Float32Array {
  return Float32Array.from(x, (v) => unaryOpRef(op, v));
}

/** Reference of `unaryBackward` (y is recomputed from x in float64). */
export function unaryBackwardRef(
  op: UnaryOp,
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
): Float32Array {
  return Float32Array.from(x, (v, i) => {
    const g = dy[i];
    const y = unaryOpRef(op, v);
    switch (op) {
      case "neg":
        return -g;
      case "exp":
        return g * y;
      case "log":
        return g / v;
      case "sqrt":
        return g / (2 * y);
      case "rsqrt":
        return -0.5 * g * y * y * y;
      case "tanh":
        return g * (1 - y * y);
      case "sigmoid":
        return g * y * (1 - y);
      case "relu":
        return y > 0 ? g : 0;
      case "abs":
        return Number.isNaN(v) ? NaN : g * Math.sign(v);
      case "square":
        return 2 * v * g;
    }
  });
}

/** Reference of `affine`. */
export function affineRef(x: ArrayLike<number>, alpha: number, beta = 0): Float32Array {
  return Float32Array.from(x, (v) => alpha * v + beta);
}

/** Reference of `geluBackward` (float64 Φ and φ, `gelu.ts`). */
export function geluBackwardRef(dy: ArrayLike<number>, x: ArrayLike<number>): Float32Array {
  return Float32Array.from(x, (v, i) => dy[i] * geluGradRef(v));
}

function sigmoidRef(v: number): number {
  return 1 / (1 + Math.exp(-v));
}

/** Reference of `silu`. */
export function siluRef(x: ArrayLike<number>): Float32Array {
  return Float32Array.from(x, (v) => v * sigmoidRef(v));
}

/** Reference of `siluBackward`. */
export function siluBackwardRef(dy: ArrayLike<number>, x: ArrayLike<number>): Float32Array {
  return Float32Array.from(x, (v, i) => {
    const s = sigmoidRef(v);
    return dy[i] * s * (1 + v * (1 - s));
  });
}

/** Reference of `swiglu` on row-major x12 [rows, 2H]. */
export function swigluRef(x12: ArrayLike<number>, h: number): Float32Array {
  const rows = x12.length / (2 * h);
  const y = new Float32Array(rows * h);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < h; j++) {
      const a = x12[r * 2 * h + j];
      y[r * h + j] = a * sigmoidRef(a) * x12[r * 2 * h + h + j];
    }
  }
  return y;
}

/** Reference of `swigluBackward`. */
export function swigluBackwardRef(
  dy: ArrayLike<number>,
  x12: ArrayLike<number>,
  h: number,
): Float32Array {
  const rows = x12.length / (2 * h);
  const dx = new Float32Array(x12.length);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < h; j++) {
      const a = x12[r * 2 * h + j];
      const b = x12[r * 2 * h + h + j];
      const g = dy[r * h + j];
      const s = sigmoidRef(a);
      dx[r * 2 * h + j] = g * b * s * (1 + a * (1 - s));
      dx[r * 2 * h + h + j] = g * a * s;
    }
  }
  return dx;
}

/** Reference of `addInPlace` (returns the new acc). */
export function addInPlaceRef(
  acc: ArrayLike<number>,
  x: ArrayLike<number>,
  alpha = 1,
): Float32Array {
  return Float32Array.from(acc, (v, i) => v + alpha * x[i]);
}
