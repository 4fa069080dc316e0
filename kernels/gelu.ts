/**
 * erf and the exact GELU (PyTorch's `nn.GELU()`, x·Φ(x)): the one definition
 * every GELU in bloom uses, in WGSL for the kernels (the elementwise op of the
 * recorded training graph, and matmul's fused epilogue on the no-grad paths:
 * teacher, embedding) and in float64 for the references. One source, so the
 * fused and unfused paths compute the same function bit for bit.
 *
 * Φ(x) is computed from erfc on both sides (1 − erfc(x/√2)/2 for x ≥ 0,
 * erfc(−x/√2)/2 below), so neither tail subtracts nearly equal numbers, and
 * the large exponent inside erfc is split so that it costs no accuracy
 * (see `GELU_WGSL`). Measured on llvmpipe over [-14, 14]: GELU within 5.7e-7
 * relative of the float64 definition, erf within 1.4e-7 absolute. (The
 * elementwise GELU bloom had before, a plain exp of −z², was 1.6e-5 off in
 * relative terms on the far negative side.)
 */

/**
 * erfc(z) = t·exp(−z² + P(t − ½)) with t = 1/(1 + z/2), z ≥ 0. P is a degree-10 least-squares
 * fit (fitted for bloom on Chebyshev nodes of t ∈ [1/7, 1], i.e. z ∈ [0, 12]) of
 * log(erfc(z)/t) + z²; relative error of the formula 1.1e-8, of its f32 evaluation < 5e-7.
 */
const ERFC_P = [
  -0.6717940743078177,
  1.3452864148440051,
  0.1893698165976333,
  -0.37515757184418985,
  -0.157772489030821,
  0.28196450643005794,
  0.10890388668126229,
  -0.290400086232791,
  -0.0108118744539408,
  0.24949812129077265,
  -0.12844595019914143,
];

/** Maclaurin coefficients of erf(x)/x in x²: (−1)ⁿ·2/(√π·n!·(2n+1)), n = 0..12. */
const ERF_SERIES = Array.from({ length: 13 }, (_, n) => {
  let fact = 1;
  for (let i = 2; i <= n; i++) fact *= i;
  return ((n % 2 ? -1 : 1) * 2) / (Math.sqrt(Math.PI) * fact * (2 * n + 1));
});

function wgslFloat(x: number): string {
  const s = x.toPrecision(17);
  return s.includes(".") || s.includes("e") ? s : `${s}.0`;
}

function horner(coeffs: number[], v: string): string {
  let s = wgslFloat(coeffs[coeffs.length - 1]);
  for (let i = coeffs.length - 2; i >= 0; i--) s = `fma(${s}, ${v}, ${wgslFloat(coeffs[i])})`;
  return s;
}

/**
 * WGSL functions (prefixed `bloom_`, so they paste into any kernel):
 * - `bloom_erf(x)`: erf, absolute error < 1.5e-7;
 * - `bloom_gelu_cdf(x)`: Φ(x), relative error < 6e-7 on both tails;
 * - `bloom_gelu(x)`: x·Φ(x);
 * - `bloom_gelu_grad(x)`: Φ(x) + x·φ(x), the derivative.
 * Branch-free (llvmpipe runs divergent branches both ways at a cost). NaN
 * propagates; ±Inf give what PyTorch gives: gelu(+Inf) = +Inf, gelu(−Inf) =
 * NaN (−Inf·0), gelu'(±Inf) = NaN. Beyond |x| = 14 the tail Φ(−|x|) < 1e-44 is
 * exactly 0, so far negative inputs give (−)0 as PyTorch's do.
 */
export const GELU_WGSL = `
// erfc(z) = t·exp(-z² + P(t - 1/2)), z >= 0, given z² = yh + yl with yh exact and small yl.
// A large exponent must not cost accuracy: exp of an argument near -100 is only as exact as
// the argument (and some exp implementations multiply by log2(e) first), so z² arrives split
// (callers clear the low 12 mantissa bits of z, or x, to make yh exact) and yh = n·ln2 + r is
// reduced Cody-Waite style (n·L1 exact, ln2 = L1 + L2), leaving exp() a small argument.
fn bloom_erfc_split(z: f32, yh: f32, yl: f32) -> f32 {
  let t = 1.0 / fma(0.5, z, 1.0);
  let u = t - 0.5;
  let p = ${horner(ERFC_P, "u")};
  let n = round(yh * 1.4426950408889634);
  let r = (yh - n * 0.693359375) - n * -2.1219444005469058e-4;
  return t * ldexp(exp((p - yl) - r), -i32(n));
}

fn bloom_hi12(x: f32) -> f32 {
  return bitcast<f32>(bitcast<u32>(x) & 0xfffff000u);
}

// erfc for z >= 0 (relative error < 1e-6; held at erfc(10) beyond, where f32 underflows anyway).
fn bloom_erfc_pos(z_in: f32) -> f32 {
  let z = min(z_in, 10.0);
  let zh = bloom_hi12(z);
  return bloom_erfc_split(z, zh * zh, (z - zh) * (z + zh));
}

fn bloom_erf(x: f32) -> f32 {
  let ax = abs(x);
  let x2 = x * x;
  let r = select(sign(x) * (1.0 - bloom_erfc_pos(ax)), x * ${horner(ERF_SERIES, "x2")}, ax < 1.0);
  // min() and sign() of a NaN are implementation-defined: pass NaN through on the bits.
  return select(r, x, (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u);
}

// Φ(-|x|) = erfc(|x|/√2)/2, exactly 0 beyond |x| = 14. (x/√2)² is formed from x, not from
// the rounded x/√2, whose error erfc would amplify by x².
fn bloom_phi_tail(ax: f32) -> f32 {
  let a = min(ax, 14.0);
  let xh = bloom_hi12(a);
  let e = 0.5 * bloom_erfc_split(a * 0.70710678118654752, 0.5 * xh * xh, 0.5 * (a - xh) * (a + xh));
  return select(e, 0.0, ax > 14.0);
}

fn bloom_gelu_cdf(x: f32) -> f32 {
  let e = bloom_phi_tail(abs(x));
  return select(e, 1.0 - e, x >= 0.0);
}

// x·Φ(x), as x − x·Φ(−x) for x >= 0 (more exact than x·(1 − Φ(−x)), whose 1 − e rounds);
// x·0 is dropped beyond 14 so that +Inf stays +Inf.
fn bloom_gelu(x: f32) -> f32 {
  let ax = abs(x);
  let xe = x * bloom_phi_tail(ax);
  return select(xe, x - select(xe, 0.0, ax > 14.0), x >= 0.0);
}

fn bloom_gelu_grad(x: f32) -> f32 {
  return bloom_gelu_cdf(x) + x * 0.3989422804014327 * exp(-0.5 * x * x);
}
`;

/** erf in float64 (absolute error < 1e-15), for references. */
export function erfRef(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const ax = Math.abs(x);
  const r = ax < 3 ? erfSeries(ax) : 1 - erfcFraction(ax);
  return x < 0 ? -r : r;
}

/** erfc in float64 (relative error < 1e-12 for x ≥ 0), for references. */
export function erfcRef(x: number): number {
  if (x < 0) return 2 - erfcRef(-x);
  return x < 2 ? 1 - erfSeries(x) : erfcFraction(x);
}

/** erf(x) = 2/√π · e^{−x²} · Σ 2ⁿx^{2n+1}/(1·3·…·(2n+1)): all terms positive, no cancellation. */
function erfSeries(x: number): number {
  let term = x;
  let sum = x;
  for (let n = 1; n < 200 && term > 1e-17 * sum; n++) {
    term *= (2 * x * x) / (2 * n + 1);
    sum += term;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x) * sum;
}

/** erfc by its continued fraction z + (1/2)/(z + 1/(z + (3/2)/(z + …))), for z ≥ 2. */
function erfcFraction(z: number): number {
  if (!Number.isFinite(z)) return 0;
  let f = z;
  for (let n = 300; n >= 1; n--) f = z + n / 2 / f;
  return Math.exp(-z * z) / Math.sqrt(Math.PI) / f;
}

/** Φ(x), the standard normal CDF, in float64 (through erfc: no cancellation in either tail). */
export function normalCdfRef(x: number): number {
  return 0.5 * erfcRef(-x / Math.SQRT2);
}

/** GELU (exact erf form) in float64: x·Φ(x). */
export function geluRef(x: number): number {
  return x * normalCdfRef(x);
}

/** The derivative of GELU in float64: Φ(x) + x·φ(x). */
export function geluGradRef(x: number): number {
  return normalCdfRef(x) + (x * Math.exp(-0.5 * x * x)) / Math.sqrt(2 * Math.PI);
}
