/**
 * PCA against scikit-learn 1.2 (fixtures from scripts/fixtures/eval.py), and
 * the figures: UMAP scatter (SVG + PNG) and the patch-token PCA grid (PNG).
 */
import { assert, assertClose, assertThrows } from "./assert.ts";
import { jacobiEigen, pca, pcaTransform } from "../eval/pca.ts";
import { matrix } from "../eval/matrix.ts";
import { Rng } from "./helpers.ts";

const pcaFixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/eval/pca.json", import.meta.url)),
);

for (const c of pcaFixture.cases) {
  Deno.test(`pca matches scikit-learn: ${c.name}`, () => {
    const x = matrix(Float32Array.from(c.X), c.n, c.d);
    const p = pca(x, c.k);
    assert(p.converged, `residual ${p.residual} after ${p.iterations} iterations`);
    // Both solve the same eigenproblem in float64; subspace iteration stops at residual
    // 1e-11·θ₁, LAPACK's SVD is at rounding: components agree to ~1e-9 (signs included:
    // both orient by svd_flip), variances to ~1e-12 relative.
    assertClose(p.components, c.components, { rtol: 0, atol: 1e-8 }, "components");
    assertClose(p.explainedVariance, c.explainedVariance, { rtol: 1e-10, atol: 0 }, "variance");
    assertClose(p.explainedVarianceRatio, c.explainedVarianceRatio, { rtol: 1e-10, atol: 0 });
    assertClose(p.mean, c.mean, { rtol: 1e-12, atol: 1e-12 }, "mean");
    const t = pcaTransform(p, matrix(Float32Array.from(c.X.slice(0, 10 * c.d)), 10, c.d));
    assertClose(t, c.transform, { rtol: 0, atol: 1e-7 }, "transform");
  });
}

Deno.test("jacobiEigen diagonalises a symmetric matrix", () => {
  const rng = new Rng(2);
  const n = 7;
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) a[i * n + j] = a[j * n + i] = rng.normal();
  }
  const { values, vectors } = jacobiEigen(a, n);
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < n; i++) {
      let av = 0;
      for (let t = 0; t < n; t++) av += a[i * n + t] * vectors[t * n + j];
      // A v = λ v to rounding (entries O(1)).
      assertClose([av], [values[j] * vectors[i * n + j]], { rtol: 0, atol: 1e-12 });
    }
    if (j > 0) assert(values[j] <= values[j - 1], "values descending");
  }
});

Deno.test("pca rejects bad shapes", () => {
  assertThrows(() => pca(matrix(new Float64Array(3), 1, 3), 1), RangeError, "at least 2 samples");
  assertThrows(() => pca(matrix(new Float64Array(6), 2, 3), 3), RangeError, "k=3");
});
