/**
 * The few dense float64 kernels the evaluation maths needs, register-tiled
 * for V8 (4×4 blocks of scalar accumulators, so each loaded value feeds four
 * multiply-adds): row·row dot products (distances, logits) and the
 * transposed accumulation Rᵀ·X (logistic-regression gradients, covariances).
 * All matrices are row-major flat Float64Arrays.
 */

/** Squared L2 norm of each row, in float64. */
export function rowNormsSq(x: Float64Array, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    let s = 0;
    const o = i * cols;
    for (let j = 0; j < cols; j++) s += x[o + j] * x[o + j];
    out[i] = s;
  }
  return out;
}

/**
 * `out[i*ldo + j] = a_i · b_j` for rows i of `a` in [a0, a1) and rows j of
 * `b` in [b0, b1), written at out[(i−a0)·ldo + (j−b0)]. 4×4 register tiles
 * (16 accumulators) so each loaded value is used four times.
 */
export function dotBlock(
  a: Float64Array,
  a0: number,
  a1: number,
  b: Float64Array,
  b0: number,
  b1: number,
  d: number,
  out: Float64Array,
  ldo: number,
): void {
  let i = a0;
  for (; i + 4 <= a1; i += 4) {
    const p0 = i * d, p1 = p0 + d, p2 = p1 + d, p3 = p2 + d;
    const r0 = (i - a0) * ldo, r1 = r0 + ldo, r2 = r1 + ldo, r3 = r2 + ldo;
    let j = b0;
    for (; j + 4 <= b1; j += 4) {
      const q0 = j * d, q1 = q0 + d, q2 = q1 + d, q3 = q2 + d;
      let c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
      let c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
      for (let t = 0; t < d; t++) {
        const x0 = a[p0 + t], x1 = a[p1 + t], x2 = a[p2 + t], x3 = a[p3 + t];
        const y0 = b[q0 + t], y1 = b[q1 + t], y2 = b[q2 + t], y3 = b[q3 + t];
        c00 += x0 * y0, c01 += x0 * y1, c02 += x0 * y2, c03 += x0 * y3;
        c10 += x1 * y0, c11 += x1 * y1, c12 += x1 * y2, c13 += x1 * y3;
        c20 += x2 * y0, c21 += x2 * y1, c22 += x2 * y2, c23 += x2 * y3;
        c30 += x3 * y0, c31 += x3 * y1, c32 += x3 * y2, c33 += x3 * y3;
      }
      const c = j - b0;
      out[r0 + c] = c00, out[r0 + c + 1] = c01, out[r0 + c + 2] = c02, out[r0 + c + 3] = c03;
      out[r1 + c] = c10, out[r1 + c + 1] = c11, out[r1 + c + 2] = c12, out[r1 + c + 3] = c13;
      out[r2 + c] = c20, out[r2 + c + 1] = c21, out[r2 + c + 2] = c22, out[r2 + c + 3] = c23;
      out[r3 + c] = c30, out[r3 + c + 1] = c31, out[r3 + c + 2] = c32, out[r3 + c + 3] = c33;
    }
    for (; j < b1; j++) {
      const q = j * d;
      let c0 = 0, c1 = 0, c2 = 0, c3 = 0;
      for (let t = 0; t < d; t++) {
        const y = b[q + t];
        c0 += a[p0 + t] * y, c1 += a[p1 + t] * y, c2 += a[p2 + t] * y, c3 += a[p3 + t] * y;
      }
      const c = j - b0;
      out[r0 + c] = c0, out[r1 + c] = c1, out[r2 + c] = c2, out[r3 + c] = c3;
    }
  }
  for (; i < a1; i++) {
    const p = i * d;
    const r = (i - a0) * ldo;
    for (let j = b0; j < b1; j++) {
      const q = j * d;
      let s = 0;
      for (let t = 0; t < d; t++) s += a[p + t] * b[q + t];
      out[r + j - b0] = s;
    }
  }
}

/**
 * `g[k, :] += Σ_i r[i, k] · x[i, :]` over rows i in [i0, i1): accumulates
 * Rᵀ X into the [c, d] matrix `g`, where `r` is [rows, c] row-major with row
 * i at `(i − i0)·c` and `x` is [rows, d] with row i at `i·d`. Tiles of 4
 * classes × 4 rows keep 16 coefficients in registers per sweep over d.
 */
export function addRtX(
  r: Float64Array,
  c: number,
  x: Float64Array,
  i0: number,
  i1: number,
  d: number,
  g: Float64Array,
): void {
  let i = i0;
  for (; i + 4 <= i1; i += 4) {
    const x0 = i * d, x1 = x0 + d, x2 = x1 + d, x3 = x2 + d;
    const ro = (i - i0) * c;
    let k = 0;
    for (; k + 4 <= c; k += 4) {
      const a00 = r[ro + k], a01 = r[ro + k + 1], a02 = r[ro + k + 2], a03 = r[ro + k + 3];
      const a10 = r[ro + c + k], a11 = r[ro + c + k + 1], a12 = r[ro + c + k + 2];
      const a13 = r[ro + c + k + 3];
      const a20 = r[ro + 2 * c + k], a21 = r[ro + 2 * c + k + 1], a22 = r[ro + 2 * c + k + 2];
      const a23 = r[ro + 2 * c + k + 3];
      const a30 = r[ro + 3 * c + k], a31 = r[ro + 3 * c + k + 1], a32 = r[ro + 3 * c + k + 2];
      const a33 = r[ro + 3 * c + k + 3];
      const g0 = k * d, g1 = g0 + d, g2 = g1 + d, g3 = g2 + d;
      for (let j = 0; j < d; j++) {
        const v0 = x[x0 + j], v1 = x[x1 + j], v2 = x[x2 + j], v3 = x[x3 + j];
        g[g0 + j] += a00 * v0 + a10 * v1 + a20 * v2 + a30 * v3;
        g[g1 + j] += a01 * v0 + a11 * v1 + a21 * v2 + a31 * v3;
        g[g2 + j] += a02 * v0 + a12 * v1 + a22 * v2 + a32 * v3;
        g[g3 + j] += a03 * v0 + a13 * v1 + a23 * v2 + a33 * v3;
      }
    }
    for (; k < c; k++) {
      const a0 = r[ro + k], a1 = r[ro + c + k], a2 = r[ro + 2 * c + k], a3 = r[ro + 3 * c + k];
      const go = k * d;
      for (let j = 0; j < d; j++) {
        g[go + j] += a0 * x[x0 + j] + a1 * x[x1 + j] + a2 * x[x2 + j] + a3 * x[x3 + j];
      }
    }
  }
  for (; i < i1; i++) {
    const xo = i * d;
    const ro = (i - i0) * c;
    for (let k = 0; k < c; k++) {
      const a = r[ro + k];
      const go = k * d;
      for (let j = 0; j < d; j++) g[go + j] += a * x[xo + j];
    }
  }
}
