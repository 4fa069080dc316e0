/**
 * Principal component analysis, deterministic, matching scikit-learn's
 * `PCA(n_components=k)` (components, explained variance with ddof 1, ratio,
 * mean, transform).
 *
 * Method: the covariance C = XcᵀXc / (n − 1) of the centred data, then its
 * top-k eigenvectors by subspace iteration with Rayleigh–Ritz (power
 * iteration on a block of k + p vectors, the block's small eigenproblem
 * solved exactly by cyclic Jacobi each step), started from a fixed
 * pseudo-random block (numpy `RandomState(0)`), so results do not vary from
 * run to run. When the block spans the whole space (d ≤ k + p) one
 * Rayleigh–Ritz step is an exact eigendecomposition. Stops when every
 * wanted Ritz pair has ‖C v − θ v‖ ≤ tol·θ₁.
 *
 * Signs follow scikit-learn's `svd_flip` (u-based): each component is
 * oriented so that the sample with the largest |score| scores positive.
 */
import { dotBlock } from "./blas.ts";
import { type Matrix, toFloat64 } from "./matrix.ts";
import { NumpyRandomState } from "./numpy_random.ts";

/** A fitted PCA. */
export interface Pca {
  nSamples: number;
  nFeatures: number;
  /** [d] feature means. */
  mean: Float64Array;
  /** [k, d] row-major unit components, by decreasing variance. */
  components: Float64Array;
  /** [k] variances along the components (ddof 1), scikit-learn's `explained_variance_`. */
  explainedVariance: Float64Array;
  /** [k] shares of the total variance, `explained_variance_ratio_`. */
  explainedVarianceRatio: Float64Array;
  /** Subspace iterations used. */
  iterations: number;
  /** Whether the residual test passed (false: maxIter reached; components less exact). */
  converged: boolean;
  /** Largest relative residual ‖C v − θ v‖ / θ₁ of the returned components. */
  residual: number;
}

/** Options of `pca`. */
export interface PcaOptions {
  /** Relative residual at which to stop. Default 1e-11. */
  tol?: number;
  /** Subspace iteration limit. Default 1000. */
  maxIter?: number;
  /** Extra block vectors beyond k (more converge faster). Default max(10, k). */
  oversample?: number;
}

/** Fits a k-component PCA of `x` ([n, d], n ≥ 2). */
export function pca(x: Matrix, k: number, opts: PcaOptions = {}): Pca {
  const n = x.rows, d = x.cols;
  if (n < 2) throw new RangeError(`pca: needs at least 2 samples, got ${n}`);
  if (!Number.isInteger(k) || k < 1 || k > Math.min(n, d)) {
    throw new RangeError(`pca: k=${k} must be an integer in [1, min(n, d) = ${Math.min(n, d)}]`);
  }
  const tol = opts.tol ?? 1e-11;
  const maxIter = opts.maxIter ?? 1000;
  const { mean, centred } = centre(x);
  const cov = covariance(centred, n, d);
  let trace = 0;
  for (let i = 0; i < d; i++) trace += cov[i * d + i];
  const eig = topEigen(
    cov,
    d,
    k,
    Math.min(d, k + (opts.oversample ?? Math.max(10, k))),
    tol,
    maxIter,
  );
  orientLikeSvdFlip(eig.vectors, k, centred, n, d);
  return {
    nSamples: n,
    nFeatures: d,
    mean,
    components: eig.vectors,
    explainedVariance: eig.values,
    explainedVarianceRatio: eig.values.map((v) => v / trace),
    iterations: eig.iterations,
    converged: eig.converged,
    residual: eig.residual,
  };
}

/** Scores [n, k] = (x − mean) · componentsᵀ (`transform`). */
export function pcaTransform(p: Pca, x: Matrix): Float64Array {
  if (x.cols !== p.nFeatures) {
    throw new RangeError(`pcaTransform: ${x.cols} features, the PCA was fitted on ${p.nFeatures}`);
  }
  const { centred } = centre(x, p.mean);
  const k = p.components.length / p.nFeatures;
  const out = new Float64Array(x.rows * k);
  dotBlock(centred, 0, x.rows, p.components, 0, k, p.nFeatures, out, k);
  return out;
}

function centre(x: Matrix, given?: Float64Array): { mean: Float64Array; centred: Float64Array } {
  const n = x.rows, d = x.cols;
  const centred = Float64Array.from(toFloat64(x));
  let mean = given;
  if (!mean) {
    mean = new Float64Array(d);
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j] += centred[i * d + j];
    for (let j = 0; j < d; j++) mean[j] /= n;
  }
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) centred[i * d + j] -= mean[j];
  return { mean, centred };
}

/** XcᵀXc / (n − 1) as [d, d], from the transposed data (contiguous feature columns). */
function covariance(xc: Float64Array, n: number, d: number): Float64Array {
  const xt = new Float64Array(d * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) xt[j * n + i] = xc[i * d + j];
  const cov = new Float64Array(d * d);
  const B = 64;
  const tile = new Float64Array(B * B);
  // Upper-triangle blocks only, mirrored: the matrix is symmetric.
  for (let a0 = 0; a0 < d; a0 += B) {
    const a1 = Math.min(a0 + B, d);
    for (let b0 = a0; b0 < d; b0 += B) {
      const b1 = Math.min(b0 + B, d);
      dotBlock(xt, a0, a1, xt, b0, b1, n, tile, B);
      for (let a = a0; a < a1; a++) {
        for (let b = b0; b < b1; b++) {
          const v = tile[(a - a0) * B + (b - b0)] / (n - 1);
          cov[a * d + b] = v;
          cov[b * d + a] = v;
        }
      }
    }
  }
  return cov;
}

/** Top-k eigenpairs of a symmetric [d, d] matrix by subspace iteration with a b-vector block. */
function topEigen(
  c: Float64Array,
  d: number,
  k: number,
  b: number,
  tol: number,
  maxIter: number,
): {
  values: Float64Array;
  vectors: Float64Array;
  iterations: number;
  converged: boolean;
  residual: number;
} {
  const rs = new NumpyRandomState(0);
  let v = new Float64Array(b * d).map(() => rs.random() - 0.5);
  orthonormalise(v, b, d);
  let w = new Float64Array(b * d);
  const h = new Float64Array(b * b);
  let residual = Infinity;
  let iter = 0;
  for (;;) {
    iter++;
    dotBlock(v, 0, b, c, 0, d, d, w, d); // w_j = C v_j (C symmetric)
    dotBlock(v, 0, b, w, 0, b, d, h, b); // H = Vᵀ C V
    for (let i = 0; i < b; i++) {
      for (let j = i + 1; j < b; j++) {
        h[i * b + j] = h[j * b + i] = 0.5 * (h[i * b + j] + h[j * b + i]);
      }
    }
    const { values, vectors: s } = jacobiEigen(h, b);
    // Ritz vectors V' = Sᵀ V and their images W' = Sᵀ W.
    const v2 = new Float64Array(b * d);
    const w2 = new Float64Array(b * d);
    for (let r = 0; r < b; r++) {
      for (let q = 0; q < b; q++) {
        const sq = s[q * b + r];
        if (sq === 0) continue;
        for (let t = 0; t < d; t++) {
          v2[r * d + t] += sq * v[q * d + t];
          w2[r * d + t] += sq * w[q * d + t];
        }
      }
    }
    const scale = Math.max(Math.abs(values[0]), Number.MIN_VALUE);
    residual = 0;
    for (let r = 0; r < k; r++) {
      let ss = 0;
      for (let t = 0; t < d; t++) ss += (w2[r * d + t] - values[r] * v2[r * d + t]) ** 2;
      residual = Math.max(residual, Math.sqrt(ss) / scale);
    }
    // A block spanning the whole space is exact after one Rayleigh–Ritz step.
    const converged = residual <= tol || b === d;
    if (converged || iter >= maxIter) {
      return {
        values: values.slice(0, k),
        vectors: v2.slice(0, k * d),
        iterations: iter,
        converged,
        residual,
      };
    }
    v = w2;
    w = v2; // reuse as scratch
    orthonormalise(v, b, d);
  }
}

/** Modified Gram–Schmidt, twice (re-orthogonalisation keeps it orthonormal to rounding). */
function orthonormalise(v: Float64Array, b: number, d: number): void {
  let retries = 0;
  for (let pass = 0; pass < 2; pass++) {
    for (let r = 0; r < b; r++) {
      const o = r * d;
      for (let q = 0; q < r; q++) {
        let dot = 0;
        for (let t = 0; t < d; t++) dot += v[o + t] * v[q * d + t];
        for (let t = 0; t < d; t++) v[o + t] -= dot * v[q * d + t];
      }
      let norm = 0;
      for (let t = 0; t < d; t++) norm += v[o + t] * v[o + t];
      norm = Math.sqrt(norm);
      if (norm === 0) {
        // A vector inside the span of the others (rank-deficient data): any orthogonal one
        // does, so retry from the next unit vector.
        if (++retries > d) throw new Error("pca: cannot complete an orthonormal block");
        v[o + ((r + retries) % d)] = 1;
        r--;
        continue;
      }
      for (let t = 0; t < d; t++) v[o + t] /= norm;
    }
  }
}

/**
 * Eigen-decomposition of a small symmetric [n, n] matrix by cyclic Jacobi
 * rotations: values in decreasing order, `vectors[i*n + j]` the i-th
 * component of the j-th eigenvector.
 */
export function jacobiEigen(
  m: Float64Array,
  n: number,
): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(m);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  let total = 0;
  for (let i = 0; i < n * n; i++) total += a[i] * a[i];
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q] ** 2;
    if (off <= 1e-30 * total || off === 0) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const cs = 1 / Math.sqrt(t * t + 1), sn = t * cs;
        for (let r = 0; r < n; r++) {
          // Columns p and q.
          const arp = a[r * n + p], arq = a[r * n + q];
          a[r * n + p] = cs * arp - sn * arq;
          a[r * n + q] = sn * arp + cs * arq;
        }
        for (let r = 0; r < n; r++) {
          // Rows p and q.
          const apr = a[p * n + r], aqr = a[q * n + r];
          a[p * n + r] = cs * apr - sn * aqr;
          a[q * n + r] = sn * apr + cs * aqr;
        }
        for (let r = 0; r < n; r++) {
          const vrp = v[r * n + p], vrq = v[r * n + q];
          v[r * n + p] = cs * vrp - sn * vrq;
          v[r * n + q] = sn * vrp + cs * vrq;
        }
      }
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => a[y * n + y] - a[x * n + x]);
  const values = Float64Array.from(order, (i) => a[i * n + i]);
  const vectors = new Float64Array(n * n);
  for (let r = 0; r < n; r++) for (let j = 0; j < n; j++) vectors[r * n + j] = v[r * n + order[j]];
  return { values, vectors };
}

/** scikit-learn's u-based `svd_flip`: the largest-|score| sample of each component scores > 0. */
function orientLikeSvdFlip(comp: Float64Array, k: number, xc: Float64Array, n: number, d: number) {
  const scores = new Float64Array(n * k);
  dotBlock(xc, 0, n, comp, 0, k, d, scores, k);
  for (let j = 0; j < k; j++) {
    let best = 0;
    for (let i = 1; i < n; i++) {
      if (Math.abs(scores[i * k + j]) > Math.abs(scores[best * k + j])) best = i;
    }
    if (scores[best * k + j] < 0) {
      for (let t = 0; t < d; t++) comp[j * d + t] = -comp[j * d + t];
    }
  }
}
