/**
 * PCA against scikit-learn 1.2 (fixtures from scripts/fixtures/eval.py), and
 * the figures: UMAP scatter (SVG + PNG) and the patch-token PCA grid (PNG).
 */
import sharp from "npm:sharp@0.34.5";
import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { jacobiEigen, pca, pcaTransform } from "../eval/pca.ts";
import { matrix } from "../eval/matrix.ts";
import { patchPcaColours, type PatchTokens } from "../eval/patch_pca.ts";
import { patchPcaFigure } from "../eval/patch_pca_figure.ts";
import { umapEmbedding } from "../eval/umap.ts";
import { writeUmapFigure } from "../eval/umap_figure.ts";
import { Rng, sharedData } from "./helpers.ts";
import { readFixture } from "./fixtures.ts";

const pcaFixture = await readFixture("eval/pca.json");

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

// ---------------------------------------------------------------- figures

/** Decodes a PNG to raw RGB(A) with sharp; fails the test if it cannot. */
async function decode(png: Uint8Array) {
  const meta = await sharp(png).metadata();
  const { data, info } = await sharp(png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { meta, data: new Uint8Array(data), width: info.width, height: info.height };
}

/** Mean and max deviation (per channel and overall) of RGB over a rectangle of a raw RGB image. */
function regionStats(
  img: { data: Uint8Array; width: number },
  x0: number,
  y0: number,
  w: number,
  h: number,
) {
  const mean = [0, 0, 0];
  for (let y = y0; y < y0 + h; y++) {
    for (let x = x0; x < x0 + w; x++) {
      for (let c = 0; c < 3; c++) mean[c] += img.data[(y * img.width + x) * 3 + c] / (w * h);
    }
  }
  const devs = [0, 0, 0];
  for (let y = y0; y < y0 + h; y++) {
    for (let x = x0; x < x0 + w; x++) {
      for (let c = 0; c < 3; c++) {
        devs[c] = Math.max(devs[c], Math.abs(img.data[(y * img.width + x) * 3 + c] - mean[c]));
      }
    }
  }
  return { mean, devs, dev: Math.max(...devs) };
}

/**
 * Tokens of `images` 16×16 grids in `dim` dims: ±3·u by left/right half and
 * ±1.5·v by top/bottom half, plus noise 0.02. The first principal component
 * is u (left/right), the second v (top/bottom).
 */
function quadrantTokens(images: number, dim: number): PatchTokens {
  const rng = new Rng(11);
  const u = new Float64Array(dim), v = new Float64Array(dim);
  u[0] = 1;
  v[1] = 1;
  const data = new Float32Array(images * 256 * dim);
  for (let i = 0; i < images * 256; i++) {
    const p = i % 256, r = Math.floor(p / 16), c = p % 16;
    for (let j = 0; j < dim; j++) {
      data[i * dim + j] = 3 * u[j] * (c < 8 ? -1 : 1) + 1.5 * v[j] * (r < 8 ? -1 : 1) +
        0.02 * rng.normal();
    }
  }
  return { data, images, tokens: 256, dim };
}

Deno.test("patch PCA figure: size, decodable, colours follow the components", async () => {
  const tokens = quadrantTokens(3, 8);
  const solid = (r: number, g: number, b: number) => ({
    data: new Uint8Array(20 * 20 * 3).map((_, i) => [r, g, b][i % 3]),
    width: 20,
    height: 20,
    channels: 3 as const,
  });
  const cell = 32, gap = 4;
  const fig = await patchPcaFigure([solid(200, 0, 0), solid(0, 200, 0), solid(0, 0, 200)], tokens, {
    cellSize: cell,
    columns: 2,
    gap,
  });
  // 2 columns, 2 bands (inputs + maps each): width 2·32 + 3·4, height 4·32 + 5·4.
  assertEquals([fig.width, fig.height], [76, 148]);
  const img = await decode(fig.png);
  assertEquals([img.meta.format, img.width, img.height], ["png", 76, 148]);
  // Image 0's input tile is its solid red.
  const input = regionStats(img, gap, gap, cell, cell);
  assertClose(input.mean, [200, 0, 0], { rtol: 0, atol: 1 }, "input tile");
  for (const [i, left, top] of [[0, gap, 2 * gap + cell], [2, gap, 4 * gap + 3 * cell]]) {
    // Quadrants of image i's colour map (nearest upsampling: 16 px per half).
    const q = (qx: number, qy: number) => regionStats(img, left + qx * 16, top + qy * 16, 16, 16);
    const [tl, tr, bl, br] = [q(0, 0), q(1, 0), q(0, 1), q(1, 1)];
    // Red and green are uniform within a quadrant (blue is component 3, the noise).
    for (const s of [tl, tr, bl, br]) {
      assert(s.devs[0] < 12 && s.devs[1] < 12, `image ${i}: quadrant not uniform (${s.devs})`);
    }
    // Red = component 1 = left/right: a full-range jump across, none down.
    assert(Math.abs(tl.mean[0] - tr.mean[0]) > 200, `image ${i}: red does not split left/right`);
    assert(Math.abs(tl.mean[0] - bl.mean[0]) < 20, `image ${i}: red changes top/bottom`);
    // Green = component 2 = top/bottom.
    assert(Math.abs(tl.mean[1] - bl.mean[1]) > 200, `image ${i}: green does not split top/bottom`);
    assert(Math.abs(tl.mean[1] - tr.mean[1]) < 20, `image ${i}: green changes left/right`);
    assertClose(br.mean.slice(0, 2), [tr.mean[0], bl.mean[1]], { rtol: 0, atol: 20 });
  }
  // The colour assignment is the PCA's: component variances ~9 and ~2.25 (of tokens ±3, ±1.5).
  assertClose(Array.from(fig.colours.pca.explainedVariance.slice(0, 2)), [9, 2.25], {
    rtol: 0.02,
    atol: 0,
  });
});

Deno.test("patch PCA figure: a title above, each cell's label above its tile", async () => {
  const tokens = quadrantTokens(2, 8);
  const white = {
    data: new Uint8Array(20 * 20 * 3).fill(255),
    width: 20,
    height: 20,
    channels: 3 as const,
  };
  const opts = { cellSize: 64, columns: 2, gap: 4 };
  const plain = await patchPcaFigure([white, white], tokens, opts);
  const fig = await patchPcaFigure([white, white], tokens, {
    ...opts,
    title: "Patch-token PCA: DinoBloom-S.pth, vit_small",
    labels: ["Neutrophil", null],
  });
  // A 26 px title band and a 16 px label band above the inputs; nothing else moves.
  assertEquals([fig.width, fig.height], [plain.width, plain.height + 26 + 16]);
  const img = await decode(fig.png);
  const dark = (x: number, y: number, w: number, h: number) =>
    Math.min(...regionStats(img, x, y, w, h).mean) < 250;
  assert(dark(4, 4, 120, 18), "no title text drawn");
  assert(dark(4, 30, 64, 14), "no label over the first cell");
  assert(!dark(72, 30, 64, 14), "a label over the unlabelled cell");
  await assertRejects(
    () => patchPcaFigure([white, white], tokens, { ...opts, labels: ["one"] }),
    RangeError,
    "1 labels for 2 images",
  );
});

Deno.test("patch PCA foreground threshold: border tokens black, centred cell coloured", () => {
  const rng = new Rng(5);
  const dim = 6, images = 2;
  const data = new Float32Array(images * 256 * dim);
  for (let i = 0; i < images * 256; i++) {
    const p = i % 256, r = Math.floor(p / 16), c = p % 16;
    const inCell = r >= 5 && r < 11 && c >= 5 && c < 11;
    // Cell tokens sit at +4 on axis 0 (and vary along axes 1, 2); background at 0.
    data[i * dim] = (inCell ? 4 : 0) + 0.05 * rng.normal();
    data[i * dim + 1] = inCell ? (c - 8) * 0.3 : 0.02 * rng.normal();
    data[i * dim + 2] = inCell ? (r - 8) * 0.2 : 0.02 * rng.normal();
    for (let j = 3; j < dim; j++) data[i * dim + j] = 0.02 * rng.normal();
  }
  const col = patchPcaColours({ data, images, tokens: 256, dim }, { foregroundThreshold: 0.5 });
  for (let i = 0; i < images * 256; i++) {
    const p = i % 256, r = Math.floor(p / 16), c = p % 16;
    const inCell = r >= 5 && r < 11 && c >= 5 && c < 11;
    assertEquals(col.foreground[i], inCell ? 1 : 0, `token ${p} of image ${Math.floor(i / 256)}`);
    if (!inCell) assertEquals(Array.from(col.rgb.subarray(3 * i, 3 * i + 3)), [0, 0, 0]);
  }
  assertThrows(() => patchPcaColours({ data, images, tokens: 255, dim }), RangeError, "square");
  assertThrows(
    () => patchPcaColours({ data, images, tokens: 256, dim }, { foregroundThreshold: 1.5 }),
    RangeError,
    "(0, 1)",
  );
});

Deno.test("UMAP figure: seeded, SVG with legend counts and title, PNG renders text", async () => {
  const rng = new Rng(8);
  const n = 60, d = 10;
  const labels = Array.from({ length: n }, (_, i) => ["NEU", "LYM", "EOS <&>"][i % 3]);
  const x = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) x[i * d + j] = (j === i % 3 ? 4 : 0) + rng.normal();
  }
  const m = matrix(x, n, d);
  const a = umapEmbedding(m, { seed: 7, nEpochs: 60, nNeighbors: 10 });
  const b = umapEmbedding(m, { seed: 7, nEpochs: 60, nNeighbors: 10 });
  assertEquals(Array.from(a), Array.from(b), "same seed, same embedding");
  assert(a.every(Number.isFinite), "finite coordinates");

  const dir = await Deno.makeTempDir();
  try {
    const fig = await writeUmapFigure(`${dir}/umap`, m, labels, {
      seed: 7,
      nEpochs: 60,
      nNeighbors: 10,
      title: "DinoBloom-S · test set",
      width: 640,
      height: 480,
    });
    const svg = await Deno.readTextFile(fig.svg);
    assertEquals((svg.match(/<circle /g) ?? []).length, n + 3, "points + legend swatches");
    assert(svg.includes("EOS &lt;&amp;&gt; (20)"), "legend escapes names and counts");
    assert(svg.includes("LYM (20)") && svg.includes("NEU (20)"), "legend entries");
    assert(svg.includes("DinoBloom-S · test set"), "title");
    const img = await decode(await Deno.readFile(fig.png));
    assertEquals([img.meta.format, img.width, img.height], ["png", 640, 480]);
    // Text renders: the title band (above the plot box) holds dark glyph pixels.
    const title = regionStats(img, 180, 10, 280, 26);
    assert(title.mean.every((v) => v < 250), `no title text drawn (mean ${title.mean})`);
    // Points keep their class colour: some pixels are the first palette colour (#1f77b4).
    let blue = 0;
    for (let i = 0; i < img.data.length; i += 3) {
      if (Math.abs(img.data[i] - 0x1f) < 40 && Math.abs(img.data[i + 2] - 0xb4) < 40) blue++;
    }
    assert(blue > 20, `only ${blue} class-coloured pixels`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("patch PCA figure takes image files (real BCCD crops when present)", async () => {
  const root = sharedData();
  if (!root) {
    console.log("skipped: ../shared/data is absent");
    return;
  }
  const dir = `${root}bccd-cropped/BCCD_cropped/Lymphocyte`;
  const files = [...Deno.readDirSync(dir)].map((e) => `${dir}/${e.name}`).sort().slice(0, 2);
  const tokens = quadrantTokens(2, 4);
  const fig = await patchPcaFigure(files, tokens, { cellSize: 48 });
  const img = await decode(fig.png);
  assertEquals([img.width, img.height], [2 * 48 + 3 * 4, 2 * 48 + 3 * 4]);
  // A real cell photo is not uniform: its tile varies.
  assert(regionStats(img, 4, 4, 48, 48).dev > 30, "input tile looks blank");
  await assertRejects(
    () => patchPcaFigure([`${dir}/missing.jpg`, files[0]], tokens, { cellSize: 16 }),
    Error,
    "cannot decode",
  );
});
