/**
 * iBOT block masking (DINOv2's MaskingGenerator and collate_data_and_mask):
 * statistics over many draws, and the indices/weights the losses use.
 */
import { batchMasks, MaskingGenerator, masksFrom } from "../pipelines/train/masking.ts";
import { mulberry32 } from "../graph/random.ts";
import { assert, assertEquals } from "./assert.ts";

Deno.test("masking: half the crops masked, ratios spread over [0.1, 0.5], block shapes", () => {
  const gen = new MaskingGenerator(16);
  const rand = mulberry32(7);
  const N = 256;
  const ratios: number[] = [];
  let masked = 0;
  let crops = 0;
  for (let it = 0; it < 200; it++) {
    const b = batchMasks(gen, 16, rand);
    for (let i = 0; i < 16; i++) {
      const m = b.masks.subarray(i * N, (i + 1) * N);
      const n = m.reduce((a, x) => a + x, 0);
      crops++;
      if (n > 0) {
        masked++;
        ratios.push(n / N);
      }
    }
    // Indices ascend and agree with the masks; weights are 1 / masked count of the image.
    for (let r = 1; r < b.count; r++) assert(b.indices[r] > b.indices[r - 1]);
    for (let r = 0; r < b.count; r++) {
      const img = Math.floor(b.indices[r] / N);
      const n = b.masks.subarray(img * N, (img + 1) * N).reduce((a, x) => a + x, 0);
      assert(b.masks[b.indices[r]] === 1);
      assert(Math.abs(b.weights[r] - 1 / n) < 1e-7);
    }
  }
  // Exactly ⌊16 · 0.5⌋ = 8 crops per batch get masks (a target may rarely come out empty).
  assert(Math.abs(masked / crops - 0.5) < 0.01, `masked share ${masked / crops}`);
  // Targets are int(N·U(lo, hi)) over the 8 intervals of linspace(0.1, 0.5); blocks may overshoot
  // the target a little, never by more than one block's growth.
  const lo = Math.min(...ratios);
  const hi = Math.max(...ratios);
  assert(lo >= 0.09 && lo < 0.13, `smallest ratio ${lo}`);
  assert(hi > 0.45 && hi <= 0.6, `largest ratio ${hi}`);
  const mean = ratios.reduce((a, x) => a + x, 0) / ratios.length;
  assert(Math.abs(mean - 0.3) < 0.03, `mean ratio ${mean}`);
});

Deno.test("masking: block masks reach their target (and overshoot by less than a block)", () => {
  const gen = new MaskingGenerator(16);
  const rand = mulberry32(11);
  for (const target of [10, 40, 100]) {
    let sum = 0;
    for (let t = 0; t < 100; t++) {
      const n = gen.generate(target, rand).reduce((a, x) => a + x, 0);
      // Blocks stop growing once the target is met; the last block may overshoot by < its size.
      assert(n <= target + 0.5 * 256, `target ${target}: ${n}`);
      sum += n;
    }
    const mean = sum / 100;
    assert(mean >= 0.9 * target && mean <= target * 1.3, `target ${target}: mean ${mean}`);
  }
  assertEquals(gen.generate(0, rand).reduce((a, x) => a + x, 0), 0);
});

Deno.test("masking: masksFrom gives the weights DINOv2's collate computes", () => {
  const masks = new Uint8Array([1, 1, 0, 0, /* */ 0, 0, 0, 0, /* */ 0, 1, 1, 1]);
  const b = masksFrom(masks, 3);
  assertEquals([...b.indices], [0, 1, 9, 10, 11]);
  assertEquals([...b.weights].map((w) => Math.round(w * 1e6) / 1e6), [
    0.5,
    0.5,
    0.333333,
    0.333333,
    0.333333,
  ]);
  assertEquals(b.count, 5);
});
