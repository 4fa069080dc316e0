/**
 * Element types the file formats carry, their sizes, their names in each
 * format (PyTorch storages and dtypes, safetensors, numpy) and conversions
 * between their little-endian bytes and float32.
 *
 * Invariant: all byte buffers here are little-endian, which is also the host
 * order on every platform Deno ships for (x86-64, arm64); typed-array views on
 * raw file bytes rely on that, and `assertLittleEndianHost` says so loudly.
 */

/** Element types bloom reads and writes. */
export type DtypeName =
  | "f64"
  | "f32"
  | "f16"
  | "bf16"
  | "i64"
  | "i32"
  | "i16"
  | "i8"
  | "u8"
  | "bool";

/** Bytes per element. */
export const DTYPE_SIZE: { readonly [D in DtypeName]: number } = {
  f64: 8,
  f32: 4,
  f16: 2,
  bf16: 2,
  i64: 8,
  i32: 4,
  i16: 2,
  i8: 1,
  u8: 1,
  bool: 1,
};

/** Every dtype, in a stable order (for messages). */
export const DTYPES: readonly DtypeName[] = Object.keys(DTYPE_SIZE) as DtypeName[];

/** Whether `s` names a bloom dtype. */
export function isDtype(s: unknown): s is DtypeName {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZE, s);
}

/**
 * `table[key]` when `key` is one of the table's own entries, else undefined:
 * names read from a file ("constructor", "__proto__", "toString") must never
 * reach Object.prototype's properties. Every table lookup keyed by file
 * content goes through here.
 */
export function lookup<V>(table: { readonly [key: string]: V }, key: string): V | undefined {
  return Object.hasOwn(table, key) ? table[key] : undefined;
}

/** PyTorch storage class names (`torch.<Name>`) → dtype, as persistent ids carry them. */
export const TORCH_STORAGE_DTYPE: { readonly [name: string]: DtypeName } = {
  DoubleStorage: "f64",
  FloatStorage: "f32",
  HalfStorage: "f16",
  BFloat16Storage: "bf16",
  LongStorage: "i64",
  IntStorage: "i32",
  ShortStorage: "i16",
  CharStorage: "i8",
  ByteStorage: "u8",
  BoolStorage: "bool",
  // torch ≥ 2 pickles untyped storages with a byte count as numel.
  UntypedStorage: "u8",
};

/** dtype → PyTorch storage class name, for writing. */
export const DTYPE_TORCH_STORAGE: { readonly [D in DtypeName]: string } = {
  f64: "DoubleStorage",
  f32: "FloatStorage",
  f16: "HalfStorage",
  bf16: "BFloat16Storage",
  i64: "LongStorage",
  i32: "IntStorage",
  i16: "ShortStorage",
  i8: "CharStorage",
  u8: "ByteStorage",
  bool: "BoolStorage",
};

/** PyTorch dtype objects (`torch.<name>` globals) → dtype. */
export const TORCH_DTYPE: { readonly [name: string]: DtypeName } = {
  float64: "f64",
  double: "f64",
  float32: "f32",
  float: "f32",
  float16: "f16",
  half: "f16",
  bfloat16: "bf16",
  int64: "i64",
  long: "i64",
  int32: "i32",
  int: "i32",
  int16: "i16",
  short: "i16",
  int8: "i8",
  uint8: "u8",
  bool: "bool",
};

/** safetensors dtype strings → dtype. */
export const SAFETENSORS_DTYPE: { readonly [name: string]: DtypeName } = {
  F64: "f64",
  F32: "f32",
  F16: "f16",
  BF16: "bf16",
  I64: "i64",
  I32: "i32",
  I16: "i16",
  I8: "i8",
  U8: "u8",
  BOOL: "bool",
};

/** dtype → safetensors dtype string. */
export const DTYPE_SAFETENSORS: { readonly [D in DtypeName]: string } = {
  f64: "F64",
  f32: "F32",
  f16: "F16",
  bf16: "BF16",
  i64: "I64",
  i32: "I32",
  i16: "I16",
  i8: "I8",
  u8: "U8",
  bool: "BOOL",
};

/** numpy `descr` strings (little-endian or byte-order-free) → dtype. numpy has no bfloat16. */
export const NUMPY_DTYPE: { readonly [descr: string]: DtypeName } = {
  "<f8": "f64",
  "<f4": "f32",
  "<f2": "f16",
  "<i8": "i64",
  "<i4": "i32",
  "<i2": "i16",
  "|i1": "i8",
  "<i1": "i8",
  "|u1": "u8",
  "<u1": "u8",
  "|b1": "bool",
  "<b1": "bool",
};

/** dtype → numpy `descr` as numpy itself writes it; bf16 has none. */
export const DTYPE_NUMPY: { readonly [D in DtypeName]?: string } = {
  f64: "<f8",
  f32: "<f4",
  f16: "<f2",
  i64: "<i8",
  i32: "<i4",
  i16: "<i2",
  i8: "|i1",
  u8: "|u1",
  bool: "|b1",
};

/** Throws on a big-endian host, where typed views of little-endian file bytes would be wrong. */
export function assertLittleEndianHost(): void {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
    throw new Error("bloom's file formats assume a little-endian host");
  }
}
assertLittleEndianHost();

/**
 * A typed view of `bytes` with `elemSize`-byte elements, copying only when
 * the data is not aligned for that view (views need offset % size == 0).
 */
function aligned(bytes: Uint8Array, elemSize: number): Uint8Array {
  return bytes.byteOffset % elemSize === 0 ? bytes : bytes.slice();
}

let f16Table: Float32Array | undefined;

/** f16 bits → f32 value for all 65,536 bit patterns (built once; 256 KiB). */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) t[h] = sign * frac * 2 ** -24; // zero and subnormals
    else if (exp === 31) t[h] = frac ? NaN : sign * Infinity;
    else t[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return (f16Table = t);
}

/** One f16 bit pattern as a number. */
export function f16ToNumber(bits: number): number {
  return halfTable()[bits & 0xffff];
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Nearest f16 bit pattern (round half to even; overflow → ±inf; NaN stays NaN). */
export function numberToF16(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  // Unbiased exponent of the f32; f16 normals cover -14..15.
  const e = exp - 127;
  if (e > 15) return sign | 0x7c00;
  if (e >= -14) {
    // Normal: keep 10 mantissa bits, round the 13 dropped bits half-to-even.
    let h = ((e + 15) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++; // may carry into inf: correct
    return sign | h;
  }
  if (e < -25) return sign; // below half the smallest subnormal
  // Subnormal: value = m · 2^-24 with m = full mantissa (with hidden bit) >> shift.
  const full = mant | 0x800000;
  const shift = -e - 1; // 14..24 for e in -15..-25
  let h = full >>> shift;
  const rest = full & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (h & 1))) h++;
  return sign | h;
}

/** bf16 bits → number. */
export function bf16ToNumber(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0];
}

/** Nearest bf16 bit pattern (round half to even, as PyTorch's conversion does; NaN stays NaN). */
export function numberToBf16(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0];
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff)) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Converts `count` little-endian elements of `dtype` to a fresh Float32Array.
 * i64 goes through float64 (exact below 2^53, then rounded to f32).
 * Invariant: `bytes.length === count * DTYPE_SIZE[dtype]` (callers check).
 */
export function toFloat32(bytes: Uint8Array, dtype: DtypeName): Float32Array {
  const n = bytes.length / DTYPE_SIZE[dtype];
  const src = aligned(bytes, DTYPE_SIZE[dtype]);
  const buf = src.buffer;
  const off = src.byteOffset;
  switch (dtype) {
    case "f32":
      return new Float32Array(buf.slice(off, off + n * 4) as ArrayBuffer);
    case "f64":
      return Float32Array.from(new Float64Array(buf, off, n));
    case "f16": {
      const t = halfTable();
      const h = new Uint16Array(buf, off, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = t[h[i]];
      return out;
    }
    case "bf16": {
      const h = new Uint16Array(buf, off, n);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = h[i] << 16;
      return new Float32Array(out.buffer);
    }
    case "i64": {
      const w = new Int32Array(buf, off, n * 2);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = w[2 * i + 1] * 4294967296 + (w[2 * i] >>> 0);
      return out;
    }
    case "i32":
      return Float32Array.from(new Int32Array(buf, off, n));
    case "i16":
      return Float32Array.from(new Int16Array(buf, off, n));
    case "i8":
      return Float32Array.from(new Int8Array(buf, off, n));
    case "u8":
      return Float32Array.from(new Uint8Array(buf, off, n));
    case "bool": {
      const b = new Uint8Array(buf, off, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = b[i] ? 1 : 0;
      return out;
    }
  }
}

/**
 * Like toFloat32, but for f32 data returns a view over `bytes` instead of a
 * copy. Only for callers that own `bytes` and drop it (the records' `f32()`:
 * a 4.5 GB checkpoint is not worth copying twice).
 */
export function takeFloat32(bytes: Uint8Array, dtype: DtypeName): Float32Array {
  if (dtype === "f32" && bytes.byteOffset % 4 === 0 && bytes.byteLength % 4 === 0) {
    return new Float32Array(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength / 4);
  }
  return toFloat32(bytes, dtype);
}

/**
 * Encodes float32 values as little-endian `dtype` bytes: f16/bf16 round half
 * to even, integers truncate toward zero (like a PyTorch cast), bool is x≠0.
 */
export function fromFloat32(values: Float32Array, dtype: DtypeName): Uint8Array {
  const n = values.length;
  switch (dtype) {
    case "f32":
      return new Uint8Array(values.slice().buffer);
    case "f64":
      return new Uint8Array(Float64Array.from(values).buffer);
    case "f16": {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = numberToF16(values[i]);
      return new Uint8Array(out.buffer);
    }
    case "bf16": {
      const bits = new Uint32Array(values.slice().buffer);
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) {
        const b = bits[i];
        out[i] = (b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff)
          ? ((b >>> 16) | 0x40) & 0xffff
          : ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
      }
      return new Uint8Array(out.buffer);
    }
    case "i64": {
      const out = new BigInt64Array(n);
      for (let i = 0; i < n; i++) out[i] = BigInt(Math.trunc(finite(values[i])));
      return new Uint8Array(out.buffer);
    }
    case "i32":
      return new Uint8Array(Int32Array.from(values, Math.trunc).buffer);
    case "i16":
      return new Uint8Array(Int16Array.from(values, Math.trunc).buffer);
    case "i8":
      return new Uint8Array(Int8Array.from(values, Math.trunc).buffer);
    case "u8":
      return Uint8Array.from(values, Math.trunc);
    case "bool":
      return Uint8Array.from(values, (v) => (v !== 0 ? 1 : 0));
  }
}

/** NaN and infinities have no integer value; map them to 0 rather than throw inside BigInt. */
function finite(x: number): number {
  return Number.isFinite(x) ? x : 0;
}

/** The typed-array class whose elements are exactly `dtype` (bf16/f16 are raw bits in Uint16Array). */
export const DTYPE_ARRAY: {
  readonly [D in DtypeName]: { readonly name: string; readonly BYTES_PER_ELEMENT: number };
} = {
  f64: Float64Array,
  f32: Float32Array,
  f16: Uint16Array,
  bf16: Uint16Array,
  i64: BigInt64Array,
  i32: Int32Array,
  i16: Int16Array,
  i8: Int8Array,
  u8: Uint8Array,
  bool: Uint8Array,
};
