/**
 * GPU augmentation (pipelines/augment.ts): torchvision golden values
 * (tests/fixtures/augment.json, made by scripts/fixtures/augment.py), the CPU
 * references, exact geometry on a known pattern, the parameter distributions
 * and determinism.
 *
 * Tolerances, by what limits each comparison (outputs are normalised, so a
 * [0, 1] error is multiplied by up to 1/0.224 ≈ 4.5). Measured maxima on llvmpipe in brackets.
 * - exact pattern permutations (flips, rotations of an identity resample): bitwise.
 * - torchvision geometry: torch's bicubic is f32 like ours, with its own grouping of the same
 *   16 products: atol 3e-6 normalised [7e-7].
 * - torchvision colour ops, blur, solarize, normalise: f32 on both sides, a few ulp per op;
 *   the float64 reference differs from torch's f32 most in the HSV round trip, which divides
 *   by small channel differences: atol 1e-5 [GPU 1.9e-6, reference 3.6e-6].
 * - GPU vs the float64 references on random crops: atol 1e-5 [see the test], except that
 *   solarize is a step at 128/255, so values whose pre-solarize level lies within 1e-4 of it
 *   are left out of the comparison.
 * - eval bilinear vs torch antialias=True: GPU atol 3e-6 normalised [7e-7]; the float64
 *   reference 1e-5 [5.9e-6], since torch (like the GPU) places its taps in f32.
 * - frequencies: binomial, |p̂ − p| ≤ 5σ (false alarm < 1e-6 per check; seeds are fixed).
 */
import {
  applyCropParams,
  type AugmentConfig,
  augmentGlobalCrops,
  augmentRef,
  COLOR_OPS,
  type ColorOp,
  type CropParams,
  DINOBLOOM_AUGMENT,
  drawBatchParams,
  drawCropParams,
  encodeCropParams,
  evalTransform,
  evalTransformRef,
  gaussianKernel1d,
  PARAM_WORDS,
  warpColorRef,
} from "../pipelines/augment.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, Rng } from "./helpers.ts";
import { bytes, f32, readFixture } from "./fixtures.ts";

const fx = await readFixture("augment.json");

/** Parameters with every random op off: the whole image, no flips. */
function plain(size: number, over: Partial<CropParams> = {}): CropParams {
  return {
    image: 0,
    cropIndex: 0,
    crop: { top: 0, left: 0, height: size, width: size },
    tries: 1,
    hflip: false,
    vflip: false,
    rot90: false,
    jitter: null,
    grayscale: false,
    blurSigma: null,
    solarize: false,
    ...over,
  };
}

const cfgOf = (outSize: number): AugmentConfig => ({ ...DINOBLOOM_AUGMENT, outSize });

async function run(
  gpu: Gpu,
  pixels: Uint8Array,
  count: number,
  size: number,
  params: CropParams[],
  cfg: AugmentConfig,
  extra: { chunkCrops?: number } = {},
): Promise<Float32Array> {
  const img = gpu.uploadBytes(pixels);
  const out = applyCropParams(gpu, img, params, { count, size, config: cfg, ...extra });
  const r = await gpu.readF32(out);
  gpu.release(img, out);
  return r;
}

gpuTest("augment: geometry vs torchvision resized_crop (bicubic), flips, rot90", async (gpu) => {
  const g = fx.geometry;
  const img = bytes(g.image);
  const cfg = cfgOf(g.outSize);
  const params = g.cases.map((c: { crop: CropParams["crop"] } & Record<string, boolean>) =>
    plain(g.size, { crop: c.crop, hflip: c.hflip, vflip: c.vflip, rot90: c.rot90 })
  );
  const got = await run(gpu, img, 1, g.size, params, cfg);
  const ref = augmentRef(img, { count: 1, size: g.size }, params, cfg);
  const per = 3 * g.outSize * g.outSize;
  g.cases.forEach((c: { out: string; crop: unknown }, i: number) => {
    const want = f32(c.out);
    const what = `crop ${JSON.stringify(c.crop)} #${i}`;
    assertClose(got.subarray(i * per, (i + 1) * per), want, { rtol: 0, atol: 3e-6 }, what);
    assertClose(ref.subarray(i * per, (i + 1) * per), want, { rtol: 0, atol: 3e-6 }, `ref ${what}`);
  });
});

gpuTest("augment: flips and rotations of a known pattern are exact permutations", async (gpu) => {
  // Whole-image crop at N = S: the bicubic weights are exactly (0, 1, 0, 0), so the output is
  // the input, and every flip/rotation must be a pure permutation of it.
  const S = 12;
  const px = new Uint8Array(S * S * 3);
  for (let i = 0; i < px.length; i++) px[i] = (i * 37 + 11) % 256;
  const combos: CropParams[] = [];
  for (let k = 0; k < 8; k++) {
    combos.push(plain(S, { hflip: !!(k & 1), vflip: !!(k & 2), rot90: !!(k & 4) }));
  }
  const out = await run(gpu, px, 1, S, combos, cfgOf(S));
  const nn = S * S;
  const base = out.subarray(0, 3 * nn);
  // The identity really is the input (normalised).
  const m = DINOBLOOM_AUGMENT.mean;
  const s = DINOBLOOM_AUGMENT.std;
  const direct = new Float32Array(3 * nn);
  for (let ch = 0; ch < 3; ch++) {
    for (let i = 0; i < nn; i++) direct[ch * nn + i] = (px[i * 3 + ch] / 255 - m[ch]) / s[ch];
  }
  assertClose(base, direct, { rtol: 1e-6, atol: 1e-6 }, "identity crop");
  for (let k = 1; k < 8; k++) {
    const want = new Float32Array(3 * nn);
    for (let ch = 0; ch < 3; ch++) {
      for (let y = 0; y < S; y++) {
        for (let x = 0; x < S; x++) {
          // Forward: flips first, then rot90 (counter-clockwise): out[y][x] = Z[x][S−1−y].
          let [zy, zx] = k & 4 ? [x, S - 1 - y] : [y, x];
          if (k & 1) zx = S - 1 - zx;
          if (k & 2) zy = S - 1 - zy;
          want[ch * nn + y * S + x] = base[ch * nn + zy * S + zx];
        }
      }
    }
    assertEquals(
      Array.from(out.subarray(k * 3 * nn, (k + 1) * 3 * nn)),
      Array.from(want),
      `hflip ${!!(k & 1)} vflip ${!!(k & 2)} rot90 ${!!(k & 4)}`,
    );
  }
  // Counter-clockwise like torch.rot90(x, 1): the top-right pixel lands top-left.
  const rot = out.subarray(4 * 3 * nn);
  assertEquals(rot[0], base[S - 1]);
});

gpuTest("augment: colour ops, grayscale, blur, solarize vs torchvision", async (gpu) => {
  const c = fx.color;
  const img = bytes(c.image);
  const cfg = cfgOf(c.size);
  type ColorCase = {
    name: string;
    order: ColorOp[];
    factors: Record<string, number>;
    grayscale: boolean;
    blurSigma: number | null;
    solarize: boolean;
    out: string;
  };
  const cases = c.cases as ColorCase[];
  const params = cases.map((k) =>
    plain(c.size, {
      jitter: k.order.length
        ? {
          order: k.order,
          brightness: k.factors.brightness ?? 1,
          contrast: k.factors.contrast ?? 1,
          saturation: k.factors.saturation ?? 1,
          hue: k.factors.hue ?? 0,
        }
        : null,
      grayscale: k.grayscale,
      blurSigma: k.blurSigma,
      solarize: k.solarize,
    })
  );
  const got = await run(gpu, img, 1, c.size, params, cfg);
  const ref = augmentRef(img, { count: 1, size: c.size }, params, cfg);
  const per = 3 * c.size * c.size;
  cases.forEach((k, i) => {
    const want = f32(k.out);
    assertClose(got.subarray(i * per, (i + 1) * per), want, { rtol: 0, atol: 1e-5 }, k.name);
    assertClose(
      ref.subarray(i * per, (i + 1) * per),
      want,
      { rtol: 0, atol: 1e-5 },
      `ref ${k.name}`,
    );
  });
  // The fixture's ops are not no-ops: each case differs from plain normalisation (except the
  // sigma 0.1 blur, whose outer weights are e^-50: there to show the tiny-sigma kernel is sane).
  const base = f32(cases[0].out);
  for (const k of cases.slice(1).filter((k) => k.blurSigma !== 0.1)) {
    const o = f32(k.out);
    assert(o.some((v, i) => Math.abs(v - base[i]) > 1e-3), `${k.name} changes the image`);
  }
});

/** Every op switched on often: jitter always, blur and solarize on both crops. */
const BUSY: AugmentConfig = {
  ...DINOBLOOM_AUGMENT,
  outSize: 16,
  jitterP: 1,
  grayscaleP: 0.3,
  blurP: [0.7, 0.7],
  solarizeP: [0.5, 0.5],
};

/** Indices whose level before solarize lies within `eps` of the threshold. */
function nearThreshold(
  pixels: Uint8Array,
  batch: { count: number; size: number },
  params: CropParams[],
  cfg: AugmentConfig,
  eps = 1e-4,
): Set<number> {
  const unsol = params.map((p) => ({ ...p, solarize: false }));
  const ref = augmentRef(pixels, batch, unsol, cfg);
  const nn = cfg.outSize * cfg.outSize;
  const near = new Set<number>();
  ref.forEach((v, i) => {
    const ch = Math.floor(i / nn) % 3;
    const level = v * cfg.std[ch] + cfg.mean[ch];
    if (params[Math.floor(i / (3 * nn))].solarize && Math.abs(level - 128 / 255) < eps) {
      near.add(i);
    }
  });
  return near;
}

function randomImages(count: number, size: number, seed: number): Uint8Array {
  // Smooth blobs plus noise: resampling sees gradients and edges, not only noise.
  const rng = new Rng(seed);
  const px = new Uint8Array(count * size * size * 3);
  for (let b = 0; b < count; b++) {
    const f = [rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5), rng.uniform(0, 6)];
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        for (let ch = 0; ch < 3; ch++) {
          const v = 128 + 90 * Math.sin(f[0] * x + f[2] + ch) * Math.cos(f[1] * y - ch) +
            25 * rng.normal();
          px[((b * size + y) * size + x) * 3 + ch] = Math.max(0, Math.min(255, Math.round(v)));
        }
      }
    }
  }
  return px;
}

gpuTest("augment: kernels vs CPU reference on random crops of every kind", async (gpu) => {
  const B = 3;
  const S = 21;
  const px = randomImages(B, S, 4);
  const batch = { count: B, size: S };
  for (const cfg of [BUSY, cfgOf(16)]) {
    const params = drawBatchParams(9, [3, 1, 4], S, cfg);
    const got = await run(gpu, px, B, S, params, cfg);
    // Stage by stage: warp + colour alone (blur and solarize off), then everything.
    const noTail = params.map((p) => ({ ...p, blurSigma: null, solarize: false }));
    const stage1 = await run(gpu, px, B, S, noTail, cfg);
    const nn = cfg.outSize * cfg.outSize;
    const warped = warpColorRef(px, batch, noTail, cfg).map((v, i) => {
      const ch = Math.floor(i / nn) % 3;
      return (v - cfg.mean[ch]) / cfg.std[ch];
    });
    assertClose(stage1, warped, { rtol: 0, atol: 1e-5 }, "warp + colour vs warpColorRef");
    const ref = augmentRef(px, batch, params, cfg);
    const near = nearThreshold(px, batch, params, cfg);
    const keep = (_: number, i: number) => !near.has(i);
    assertClose(got.filter(keep), ref.filter(keep), { rtol: 0, atol: 1e-5 }, "full pipeline");
    assert(near.size < got.length / 100, `few values sit at the solarize threshold`);
  }
  // The busy config really exercised every op.
  const p = drawBatchParams(9, [3, 1, 4], S, BUSY);
  assert(p.some((q) => q.blurSigma !== null) && p.some((q) => q.solarize));
  assert(p.every((q) => q.jitter !== null) && p.some((q) => q.grayscale));
});

gpuTest("augment: split into chunks gives the same crops bitwise", async (gpu) => {
  const S = 19;
  const px = randomImages(3, S, 8);
  const params = drawBatchParams(2, [0, 1, 2], S, BUSY);
  const whole = await run(gpu, px, 3, S, params, BUSY);
  const split = await run(gpu, px, 3, S, params, BUSY, { chunkCrops: 2 });
  assertEquals(Array.from(split), Array.from(whole));
});

gpuTest("augment: deterministic by seed, independent of batch composition", async (gpu) => {
  const S = 18;
  const cfg = cfgOf(16);
  const px = randomImages(3, S, 5);
  const imgA = gpu.uploadBytes(px);
  const r1 = augmentGlobalCrops(gpu, imgA, {
    count: 3,
    size: S,
    seed: 42,
    sampleIds: [100, 101, 102],
    config: cfg,
  });
  // The same samples in another batch: image 2 first, then image 0.
  const nn3 = S * S * 3;
  const px2 = new Uint8Array(2 * nn3);
  px2.set(px.subarray(2 * nn3, 3 * nn3), 0);
  px2.set(px.subarray(0, nn3), nn3);
  const imgB = gpu.uploadBytes(px2);
  const r2 = augmentGlobalCrops(gpu, imgB, {
    count: 2,
    size: S,
    seed: 42,
    sampleIds: [102, 100],
    config: cfg,
  });
  const r3 = augmentGlobalCrops(gpu, imgA, {
    count: 3,
    size: S,
    seed: 43,
    sampleIds: [100, 101, 102],
    config: cfg,
  });
  const [a, b] = await gpu.readMany([r1.crops, r2.crops]) as Float32Array[];
  const per = 3 * 16 * 16;
  const row = (t: Float32Array, i: number) => Array.from(t.subarray(i * per, (i + 1) * per));
  // Crop-major: rows 0..B−1 are crop 1, rows B..2B−1 crop 2.
  for (const [i1, i2] of [[2, 0], [0, 1], [5, 2], [3, 3]]) {
    assertEquals(row(b, i2), row(a, i1), `batch row ${i2} equals row ${i1}`);
  }
  const strip = (p: CropParams) => ({ ...p, image: 0 });
  assertEquals(strip(r2.params[0]), strip(r1.params[2]));
  assertEquals(r1.params.map((p) => [p.image, p.cropIndex]), [
    [0, 0],
    [1, 0],
    [2, 0],
    [0, 1],
    [1, 1],
    [2, 1],
  ]);
  // Same seed again: the same parameters; another seed: different ones.
  assertEquals(drawBatchParams(42, [100, 101, 102], S, cfg), r1.params);
  assert(JSON.stringify(r3.params) !== JSON.stringify(r1.params), "seed changes the crops");
  // The two crops of one image are drawn independently (not just labelled differently).
  const draw = (p: CropParams) => JSON.stringify({ ...p, cropIndex: 0 });
  assert(draw(r1.params[0]) !== draw(r1.params[3]), "crop 1 and crop 2 differ");
  assert(row(a, 0).some((v, i) => v !== row(a, 3)[i]), "and so do their pixels");
  gpu.release(imgA, imgB, r1.crops, r2.crops, r3.crops);
});

Deno.test("augment params: frequencies, factor ranges and order permutations", () => {
  const n = 20000;
  const S = 224;
  const count = new Map<string, number>();
  const bump = (k: string) => count.set(k, (count.get(k) ?? 0) + 1);
  const orders = new Map<string, number>();
  const sums = { brightness: 0, contrast: 0, saturation: 0, hue: 0, sigma: 0 };
  let jittered = 0;
  let blurred = 0;
  for (let i = 0; i < n; i++) {
    for (const c of [0, 1]) {
      const p = drawCropParams(7, i, c, S, 0);
      if (p.hflip) bump(`hflip${c}`);
      if (p.vflip) bump(`vflip${c}`);
      if (p.rot90) bump(`rot${c}`);
      if (p.grayscale) bump(`gray${c}`);
      if (p.blurSigma !== null) bump(`blur${c}`);
      if (p.solarize) bump(`sol${c}`);
      if (p.jitter) {
        bump(`jit${c}`);
        const j = p.jitter;
        jittered++;
        orders.set(j.order.join(), (orders.get(j.order.join()) ?? 0) + 1);
        assert(j.brightness >= 0.6 && j.brightness <= 1.4, `brightness ${j.brightness}`);
        assert(j.contrast >= 0.6 && j.contrast <= 1.4, `contrast ${j.contrast}`);
        assert(j.saturation >= 0.8 && j.saturation <= 1.2, `saturation ${j.saturation}`);
        assert(j.hue >= -0.1 && j.hue <= 0.1, `hue ${j.hue}`);
        assertEquals([...j.order].sort(), [...COLOR_OPS].sort());
        sums.brightness += j.brightness;
        sums.contrast += j.contrast;
        sums.saturation += j.saturation;
        sums.hue += j.hue;
      }
      if (p.blurSigma !== null) {
        assert(p.blurSigma >= 0.1 && p.blurSigma <= 2, `sigma ${p.blurSigma}`);
        sums.sigma += p.blurSigma;
        blurred++;
      }
    }
  }
  const within = (k: string, p: number) => {
    const got = (count.get(k) ?? 0) / n;
    const sd = Math.sqrt((p * (1 - p)) / n);
    assert(Math.abs(got - p) <= 5 * sd + 1e-12, `${k}: frequency ${got}, expected ${p}`);
  };
  for (const c of [0, 1]) {
    within(`hflip${c}`, 0.5);
    within(`vflip${c}`, 0.5);
    within(`rot${c}`, 0.5);
    within(`jit${c}`, 0.8);
    within(`gray${c}`, 0.2);
  }
  within("blur0", 0);
  within("blur1", 0.9);
  within("sol0", 0);
  within("sol1", 0.2);
  // Uniform factors: means at the midpoints within 5σ (σ = range / √(12 n)).
  const mid = (sum: number, m: number, lo: number, hi: number, n_: number, what: string) => {
    const sd = (hi - lo) / Math.sqrt(12 * n_);
    assert(Math.abs(sum / n_ - m) <= 5 * sd, `${what}: mean ${sum / n_}, expected ${m}`);
  };
  mid(sums.brightness, 1, 0.6, 1.4, jittered, "brightness");
  mid(sums.contrast, 1, 0.6, 1.4, jittered, "contrast");
  mid(sums.saturation, 1, 0.8, 1.2, jittered, "saturation");
  mid(sums.hue, 0, -0.1, 0.1, jittered, "hue");
  mid(sums.sigma, 1.05, 0.1, 2, blurred, "blur sigma");
  // All 24 orders, each about 1/24 (χ² with 23 dof; 60 is far in the tail, p < 1e-4).
  assertEquals(orders.size, 24);
  let chi2 = 0;
  for (const k of orders.values()) chi2 += (k - jittered / 24) ** 2 / (jittered / 24);
  assert(chi2 < 60, `order χ² ${chi2.toFixed(1)} over 23 degrees of freedom`);
});

Deno.test("augment params: RandomResizedCrop distribution matches torchvision's", () => {
  const r = fx.rrc;
  const n = 50000;
  const S = 224;
  const area = new Array(r.areaCounts.length).fill(0);
  const ratio = new Array(r.logRatioCounts.length).fill(0);
  const bin = (edges: number[], v: number) => {
    for (let k = 0; k < edges.length - 1; k++) if (v >= edges[k] && v < edges[k + 1]) return k;
    return -1;
  };
  let posSum = 0;
  let posN = 0;
  for (let i = 0; i < n; i++) {
    const { crop } = drawCropParams(11, i, i & 1, S, 0);
    assert(crop.top >= 0 && crop.left >= 0 && crop.top + crop.height <= S);
    assert(crop.left + crop.width <= S, `crop ${JSON.stringify(crop)} inside the image`);
    const a = (crop.height * crop.width) / (S * S);
    const lr = Math.log(crop.width / crop.height);
    // Rounding w and h to pixels moves the area by < 1 % and the ratio by < 1 px over ~130.
    assert(a >= 0.31 && a <= 1, `area fraction ${a}`);
    assert(Math.abs(lr) <= Math.log(4 / 3) + 0.02, `log ratio ${lr}`);
    area[bin(r.areaEdges, a)]++;
    ratio[bin(r.logRatioEdges, lr)]++;
    if (crop.height < S) {
      posSum += crop.top / (S - crop.height);
      posN++;
    }
  }
  // Per bin, two independent binomial proportions: |p̂₁ − p̂₂| ≤ 5σ.
  const compare = (ours: number[], theirs: number[], what: string) => {
    ours.forEach((k, i) => {
      const p1 = k / n;
      const p2 = theirs[i] / r.draws;
      const p = (k + theirs[i]) / (n + r.draws);
      const sd = Math.sqrt(p * (1 - p) * (1 / n + 1 / r.draws));
      assert(Math.abs(p1 - p2) <= 5 * sd + 1e-9, `${what} bin ${i}: ${p1} vs torchvision ${p2}`);
    });
  };
  compare(area, r.areaCounts, "area fraction");
  compare(ratio, r.logRatioCounts, "log aspect ratio");
  // The corner is uniform over the positions that fit: mean of top/(S − h) ≈ 0.5.
  const sdPos = Math.sqrt(1 / 12 / posN);
  assert(Math.abs(posSum / posN - 0.5) <= 5 * sdPos, `mean relative top ${posSum / posN}`);
});

gpuTest("augment: eval transform vs torch bilinear (antialias) and its reference", async (gpu) => {
  const e = fx.eval;
  const img = bytes(e.image);
  const t = gpu.uploadBytes(img);
  for (const c of e.cases as { outSize: number; out: string }[]) {
    const opts = { count: 1, size: e.size, outSize: c.outSize };
    const out = evalTransform(gpu, t, opts);
    const got = await gpu.readF32(out);
    const want = f32(c.out);
    assertClose(got, want, { rtol: 0, atol: 3e-6 }, `eval ${e.size} → ${c.outSize}`);
    assertClose(evalTransformRef(img, opts), want, { rtol: 0, atol: 1e-5 }, `ref → ${c.outSize}`);
    gpu.release(out);
  }
  gpu.release(t);
  // A batch of several images, shrinking by a non-integer factor.
  const px = randomImages(3, 37, 6);
  const t2 = gpu.uploadBytes(px);
  const opts = { count: 3, size: 37, outSize: 16 };
  const out = evalTransform(gpu, t2, opts);
  assertClose(await gpu.readF32(out), evalTransformRef(px, opts), { rtol: 0, atol: 1e-5 }, "B=3");
  gpu.release(t2, out);
});

gpuTest("augment: bad inputs name the argument and the fix", (gpu) => {
  const S = 10;
  const img = gpu.uploadBytes(new Uint8Array(2 * S * S * 3));
  const cfg = cfgOf(8);
  assertThrows(
    () => applyCropParams(gpu, img, [plain(S)], { count: 3, size: S, config: cfg }),
    RangeError,
    /3 RGB images of 10×10 uint8 packed as 225 u32 words/,
  );
  assertThrows(
    () =>
      applyCropParams(gpu, img, [plain(S, { crop: { top: 4, left: 0, height: 7, width: 3 } })], {
        count: 2,
        size: S,
        config: cfg,
      }),
    RangeError,
    /params\[0\]\.crop .* does not lie inside the 10×10 images/,
  );
  assertThrows(
    () => applyCropParams(gpu, img, [plain(S, { image: 2 })], { count: 2, size: S, config: cfg }),
    RangeError,
    /params\[0\]\.image is 2, outside the batch of 2 images/,
  );
  assertThrows(
    () => augmentGlobalCrops(gpu, img, { count: 2, size: S, seed: 1, sampleIds: [1] }),
    RangeError,
    /sampleIds has 1 entries for 2 images/,
  );
  assertThrows(
    () =>
      applyCropParams(gpu, img, [plain(S)], {
        count: 2,
        size: S,
        config: { ...cfg, scale: [0.5, 0.2] },
      }),
    RangeError,
    /augment config: scale must be 0 < min ≤ max ≤ 1/,
  );
  assertThrows(
    () =>
      applyCropParams(gpu, img, [plain(S)], {
        count: 2,
        size: S,
        config: { ...cfg, blurKernel: 8 },
      }),
    RangeError,
    /blurKernel must be an odd positive integer/,
  );
  const f = gpu.tensor(new Float32Array(150));
  assertThrows(
    () => evalTransform(gpu, f, { count: 2, size: S }),
    RangeError,
    /got a f32 tensor/,
  );
  assertThrows(() => drawCropParams(1, -1, 0, S, 0), RangeError, /sample id must be/);
  assertThrows(() => drawCropParams(1, 0, 2, S, 0), RangeError, /cropIndex must be 0 or 1/);
  gpu.release(img, f);
});

Deno.test("augment params: encoding holds the affine map, box, order and blur weights", () => {
  const p = plain(20, {
    crop: { top: 3, left: 5, height: 10, width: 12 },
    hflip: true,
    jitter: { order: ["hue", "contrast"], brightness: 1, contrast: 1.2, saturation: 1, hue: 0.05 },
    blurSigma: 0.9,
  });
  const w = encodeCropParams([p], cfgOf(16));
  assertEquals(w.length, PARAM_WORDS);
  // hflip: sx = (15 − x + 0.5)·12/16 − 0.5 = 11.125 − 0.75·x.
  assertClose([w[0], w[1], w[2]], [-0.75, 0, 11.125], { rtol: 0, atol: 1e-6 }, "x row");
  assertClose([w[3], w[4], w[5]], [0, 10 / 16, 0.5 * 10 / 16 - 0.5], { atol: 1e-6 }, "y row");
  assertEquals(Array.from(w.subarray(6, 16)), [5, 3, 12, 10, 0, 2, 3, 1, 0, 0]);
  assertEquals(w[21], 1); // contrast is the second op
  assertClose(w.subarray(24, 33), gaussianKernel1d(9, 0.9), { rtol: 1e-6 }, "blur weights");
});
