/**
 * Image decoding, colour conversion and resizing (`pipelines/dataset/images.ts`,
 * `pipelines/dataset/resample.ts`) and the BMP decoder, on images generated here from
 * known raw pixels, plus the BCCD cells of ../shared/data when present.
 */
import sharp from "npm:sharp@0.34.5";
import { join } from "node:path";
import {
  assert,
  assertClose,
  assertEquals,
  assertNotEquals,
  assertRejects,
  assertThrows,
} from "./assert.ts";
import { Rng, sharedData } from "./helpers.ts";
import {
  clampRegion,
  decodeCell,
  encodeCell,
  ImageError,
  probeImage,
  type Region,
} from "../pipelines/dataset/images.ts";
import { BmpError, decodeBmp } from "../pipelines/dataset/bmp.ts";
import { resizeRgb } from "../pipelines/dataset/resample.ts";

/** Random RGB bytes (noise: the hardest case for any resampler or codec). */
function noise(w: number, h: number, ch: number, seed = 1): Uint8Array {
  const r = new Rng(seed);
  const a = new Uint8Array(w * h * ch);
  for (let i = 0; i < a.length; i++) a[i] = r.int(256);
  return a;
}

/** A smooth RGB pattern (what cells look like to a codec). */
function smooth(w: number, h: number): Uint8Array {
  const a = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        a[(y * w + x) * 3 + c] = Math.round(
          127.5 + 100 * Math.sin(x / 5 + c) * Math.cos(y / 7 - c),
        );
      }
    }
  }
  return a;
}

function raw(data: Uint8Array | Uint16Array, w: number, h: number, ch: 1 | 2 | 3 | 4) {
  return sharp(data, { raw: { width: w, height: h, channels: ch } });
}

async function bytes(s: sharp.Sharp): Promise<Uint8Array> {
  const b = await s.toBuffer();
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** Little BMP writer for the tests: the decoder's oracle is the pixels we put in. */
function makeBmp(opts: {
  w: number;
  h: number;
  bpp: 1 | 4 | 8 | 16 | 24 | 32;
  /** RGB(A) pixels, top row first (RGBA for 32-bit with alpha). */
  rgb?: Uint8Array;
  /** Palette indices for ≤ 8 bit. */
  indices?: Uint8Array;
  palette?: Uint8Array; // RGB triples
  topDown?: boolean;
  alpha?: boolean;
  rle8?: boolean;
}): Uint8Array {
  const { w, h, bpp } = opts;
  const headerSize = opts.alpha || bpp === 16 ? 108 : 40;
  const palCount = bpp <= 8 ? opts.palette!.length / 3 : 0;
  const stride = Math.floor((bpp * w + 31) / 32) * 4;
  let pixelData: Uint8Array;
  if (opts.rle8) {
    const out: number[] = [];
    for (let fy = 0; fy < h; fy++) {
      const y = opts.topDown ? fy : h - 1 - fy;
      let x = 0;
      while (x < w) {
        const v = opts.indices![y * w + x];
        let n = 1;
        while (x + n < w && n < 255 && opts.indices![y * w + x + n] === v) n++;
        out.push(n, v);
        x += n;
      }
      out.push(0, 0);
    }
    out.push(0, 1);
    pixelData = Uint8Array.from(out);
  } else {
    pixelData = new Uint8Array(stride * h);
    const dv = new DataView(pixelData.buffer);
    for (let fy = 0; fy < h; fy++) {
      const y = opts.topDown ? fy : h - 1 - fy;
      for (let x = 0; x < w; x++) {
        const row = fy * stride;
        if (bpp <= 8) {
          const idx = opts.indices![y * w + x];
          const bit = x * bpp;
          pixelData[row + (bit >> 3)] |= idx << (8 - bpp - (bit & 7));
        } else if (bpp === 24) {
          const p = (y * w + x) * 3;
          pixelData[row + 3 * x] = opts.rgb![p + 2];
          pixelData[row + 3 * x + 1] = opts.rgb![p + 1];
          pixelData[row + 3 * x + 2] = opts.rgb![p];
        } else if (bpp === 16) {
          const p = (y * w + x) * 3; // 5-6-5
          const v = ((opts.rgb![p] >> 3) << 11) | ((opts.rgb![p + 1] >> 2) << 5) |
            (opts.rgb![p + 2] >> 3);
          dv.setUint16(row + 2 * x, v, true);
        } else {
          const ch = opts.alpha ? 4 : 3;
          const p = (y * w + x) * ch;
          const a = opts.alpha ? opts.rgb![p + 3] : 0;
          dv.setUint32(
            row + 4 * x,
            ((a << 24) | (opts.rgb![p] << 16) | (opts.rgb![p + 1] << 8) | opts.rgb![p + 2]) >>> 0,
            true,
          );
        }
      }
    }
  }
  const offset = 14 + headerSize + palCount * 4;
  const file = new Uint8Array(offset + pixelData.length);
  const v = new DataView(file.buffer);
  file[0] = 0x42;
  file[1] = 0x4d;
  v.setUint32(2, file.length, true);
  v.setUint32(10, offset, true);
  v.setUint32(14, headerSize, true);
  v.setInt32(18, w, true);
  v.setInt32(22, opts.topDown ? -h : h, true);
  v.setUint16(26, 1, true);
  v.setUint16(28, bpp, true);
  const compression = opts.rle8 ? 1 : headerSize === 108 ? 3 : 0;
  v.setUint32(30, compression, true);
  v.setUint32(34, pixelData.length, true);
  v.setUint32(46, palCount, true);
  if (headerSize === 108) {
    const masks = bpp === 16 ? [0xf800, 0x07e0, 0x001f, 0] : [0xff0000, 0xff00, 0xff, 0xff000000];
    masks.forEach((m, i) => v.setUint32(54 + 4 * i, m >>> 0, true));
  }
  for (let i = 0; i < palCount; i++) {
    const at = 14 + headerSize + 4 * i;
    file[at] = opts.palette![3 * i + 2];
    file[at + 1] = opts.palette![3 * i + 1];
    file[at + 2] = opts.palette![3 * i];
  }
  file.set(pixelData, offset);
  return file;
}

const dec = new TextDecoder();

/**
 * Runs a script with Debian's python3; null (after a warning) when python3 or
 * a module it imports is missing, so oracle checks skip cleanly.
 */
async function runPython(script: string): Promise<string | null> {
  let r;
  try {
    r = await new Deno.Command("/usr/bin/python3", { args: ["-c", script] }).output();
  } catch {
    console.warn("skipping a Pillow oracle check: /usr/bin/python3 is missing");
    return null;
  }
  const err = dec.decode(r.stderr);
  if (!r.success && /ModuleNotFoundError/.test(err)) {
    console.warn(`skipping a Pillow oracle check: ${err.trim().split("\n").pop()}`);
    return null;
  }
  assert(r.success, err);
  return dec.decode(r.stdout);
}

const W = 23; // odd sizes: row padding and chroma edges
const H = 17;

Deno.test("decodeCell at the source size returns the source pixels (PNG, lossless)", async () => {
  const px = noise(W, W, 3);
  const png = await bytes(raw(px, W, W, 3).png());
  const cell = await decodeCell(png, { size: W });
  // A resize to the same size is the identity in libvips: exact.
  assertEquals(Array.from(cell.pixels), Array.from(px));
  assertEquals(cell.info.format, "png");
  assertEquals([cell.info.width, cell.info.height], [W, W]);
});

Deno.test("colour conversions: grey, grey+alpha, RGBA on white, palette, 16-bit, CMYK", async () => {
  const rgb = smooth(W, W);
  const expectAt = (p: Uint8Array, i: number) => Array.from(p.subarray(3 * i, 3 * i + 3));

  // Grayscale PNG: R = G = B = the grey value.
  const grey = new Uint8Array(W * W).map((_, i) => (i * 7) % 256);
  const g = await decodeCell(await bytes(raw(grey, W, W, 1).toColourspace("b-w").png()), {
    size: W,
  });
  assertEquals(
    (await probeImage(await bytes(raw(grey, W, W, 1).toColourspace("b-w").png())))
      .channels,
    1,
  );
  for (const i of [0, 5, W * W - 1]) {
    assertEquals(expectAt(g.pixels, i), [grey[i], grey[i], grey[i]]);
  }

  // RGBA: alpha 0 -> white, 255 -> the colour, 128 -> halfway to white (±1 rounding).
  const rgba = new Uint8Array(W * W * 4);
  for (let i = 0; i < W * W; i++) {
    rgba.set([
      rgb[3 * i],
      rgb[3 * i + 1],
      rgb[3 * i + 2],
      i % 3 === 0 ? 0 : i % 3 === 1 ? 255 : 128,
    ], 4 * i);
  }
  const a = await decodeCell(await bytes(raw(rgba, W, W, 4).png()), { size: W });
  assertEquals(expectAt(a.pixels, 0), [255, 255, 255]);
  assertEquals(expectAt(a.pixels, 1), expectAt(rgb, 1));
  const half = expectAt(rgb, 2).map((v) => (v * 128 + 255 * 127) / 255);
  assertClose(expectAt(a.pixels, 2), half, { atol: 1, rtol: 0 }, "alpha 128 on white");

  // Grey + alpha.
  const ga = new Uint8Array(W * W * 2);
  for (let i = 0; i < W * W; i++) ga.set([40, i % 2 ? 255 : 0], 2 * i);
  const gac = await decodeCell(await bytes(raw(ga, W, W, 2).toColourspace("b-w").png()), {
    size: W,
  });
  assertEquals(expectAt(gac.pixels, 0), [255, 255, 255]);
  assertEquals(expectAt(gac.pixels, 1), [40, 40, 40]);

  // Palette PNG of an image with few colours: lossless, so exact.
  const few = new Uint8Array(W * W * 3).map((_, i) => [0, 90, 200][Math.floor(i / 3) % 3]);
  const palPng = await bytes(raw(few, W, W, 3).png({ palette: true, colours: 8, dither: 0 }));
  assert((await probeImage(palPng)).isPalette, "the test image is a palette PNG");
  assertEquals(Array.from((await decodeCell(palPng, { size: W })).pixels), Array.from(few));

  // 16-bit TIFF: libvips maps 16 to 8 bits by v >> 8; values v*257 come back as v.
  const u16 = new Uint16Array(W * W * 3).map((_, i) => rgb[i] * 257);
  const tif = await bytes(raw(u16, W, W, 3).toColourspace("rgb16").tiff({ compression: "lzw" }));
  const info16 = await probeImage(tif);
  assertEquals([info16.format, info16.bits], ["tiff", 16]);
  assertEquals(Array.from((await decodeCell(tif, { size: W })).pixels), Array.from(rgb));

  // CMYK JPEG: converted back through libvips' CMYK profile; JPEG loss and the
  // profile round trip allow a few levels on average.
  const cmyk = await bytes(raw(rgb, W, W, 3).toColourspace("cmyk").jpeg({ quality: 100 }));
  assertEquals((await probeImage(cmyk)).space, "cmyk");
  const c = await decodeCell(cmyk, { size: W });
  let sum = 0;
  for (let i = 0; i < rgb.length; i++) sum += Math.abs(c.pixels[i] - rgb[i]);
  assert(sum / rgb.length < 8, `CMYK round trip mean error ${sum / rgb.length} ≥ 8 levels`);
});

Deno.test("JPEG source: decoded close to its pixels; output JPEG honours quality", async () => {
  const rgb = smooth(W, H);
  const jpg = await bytes(raw(rgb, W, H, 3).jpeg({ quality: 98, chromaSubsampling: "4:4:4" }));
  const c = await decodeCell(jpg, { size: 16 });
  assertEquals(c.pixels.length, 16 * 16 * 3);
  assertEquals([c.info.width, c.info.height, c.info.format], [W, H, "jpeg"]);
  const hi = await encodeCell(jpg, { size: 32, format: "jpg", quality: 95 });
  const lo = await encodeCell(jpg, { size: 32, format: "jpg", quality: 10 });
  assertEquals((await probeImage(hi.data)).format, "jpeg");
  assert(lo.data.length < hi.data.length, "quality 10 should be smaller than quality 95");
  const png = await encodeCell(jpg, { size: 32, format: "png" });
  const m = await sharp(png.data).metadata();
  assertEquals([m.format, m.width, m.height, m.channels], ["png", 32, 32, 3]);
});

Deno.test("resize is a square Lanczos fill like Pillow's: exact when enlarging, ±rounding when reducing", async () => {
  // Non-square sources to squares: each axis scaled on its own. Cases: reduce
  // both axes, enlarge both, enlarge one and reduce the other, one axis kept.
  const cases: [number, number, number][] = [[90, 60, 40], [31, 26, 57], [70, 30, 48], [
    48,
    20,
    48,
  ]];
  const dir = await Deno.makeTempDir();
  try {
    for (const [w, h, size] of cases) {
      const png = await bytes(raw(smooth(w, h), w, h, 3).png());
      const c = await decodeCell(png, { size });
      assertEquals(c.pixels.length, size * size * 3);
      await Deno.writeFile(`${dir}/${w}x${h}.png`, png);
      await Deno.writeFile(`${dir}/${w}x${h}_${size}.raw`, c.pixels);
    }
    const script = `
import numpy as np
from PIL import Image
for w, h, s in ${JSON.stringify(cases)}:
    ref = np.asarray(Image.open(f"${dir}/{w}x{h}.png").convert("RGB").resize((s, s), Image.LANCZOS)).astype(int)
    got = np.fromfile(f"${dir}/{w}x{h}_{s}.raw", dtype=np.uint8).reshape(s, s, 3).astype(int)
    d = np.abs(ref - got)
    print(d.mean(), d.max())`;
    const text = await runPython(script);
    if (text === null) return;
    const rows = text.trim().split("\n").map((l) => l.split(" ").map(Number));
    const [[rMean, rMax], ...enlarged] = rows;
    // Reductions run in libvips, whose Lanczos-3 agrees with Pillow's to
    // rounding: measured mean 0.1-0.3, max 2 levels on smooth images and cells.
    assert(rMean < 0.5 && rMax <= 3, `reduce vs Pillow: mean ${rMean}, max ${rMax}`);
    // Anything that enlarges runs Pillow's own fixed-point algorithm: bit-exact.
    enlarged.forEach(([mean, max], i) =>
      assert(max === 0, `case ${cases[i + 1]} vs Pillow: mean ${mean}, max ${max} (expected exact)`)
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A source image (any format), the cell side, a crop, and whether to go through encodeCell. */
interface BilinearCase {
  image: Uint8Array;
  size: number;
  crop?: Region;
  encode?: boolean;
}

/**
 * Writes each case's source image and our bilinear cell, asks Pillow for
 * `Image.open(src).convert("RGB")[.crop(box)].resize((s, s), BILINEAR)` —
 * what torchvision's `Resize((s, s))` runs on a PIL image — and returns
 * "mean max" of |ours - Pillow| per case, or null when Pillow is missing.
 */
async function bilinearVsPillow(cases: BilinearCase[]): Promise<number[][] | null> {
  const dir = await Deno.makeTempDir();
  try {
    const jobs = [];
    for (const [i, c] of cases.entries()) {
      await Deno.writeFile(`${dir}/${i}.img`, c.image);
      const opts = { size: c.size, crop: c.crop, resample: "bilinear" as const };
      let pixels: Uint8Array;
      if (c.encode) {
        // encodeCell as PNG is lossless: it must carry the same pixels.
        const png = (await encodeCell(c.image, { ...opts, format: "png" })).data;
        pixels = new Uint8Array(await sharp(png).raw().toBuffer());
      } else pixels = (await decodeCell(c.image, opts)).pixels;
      assertEquals(pixels.length, c.size * c.size * 3);
      await Deno.writeFile(`${dir}/${i}.raw`, pixels);
      const box = c.crop
        ? [c.crop.left, c.crop.top, c.crop.left + c.crop.width, c.crop.top + c.crop.height]
        : null;
      jobs.push([i, c.size, box]);
    }
    const script = `
import numpy as np
from PIL import Image
for i, s, box in ${JSON.stringify(jobs).replaceAll("null", "None")}:
    im = Image.open(f"${dir}/{i}.img").convert("RGB")
    if box is not None:
        im = im.crop(tuple(box))
    ref = np.asarray(im.resize((s, s), Image.BILINEAR)).astype(int)
    got = np.fromfile(f"${dir}/{i}.raw", dtype=np.uint8).reshape(s, s, 3).astype(int)
    d = np.abs(ref - got)
    print(d.mean(), d.max())`;
    const text = await runPython(script);
    if (text === null) return null;
    return text.trim().split("\n").map((l) => l.split(" ").map(Number));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("bilinear resize equals Pillow's (torchvision Resize) to the bit: shrink, enlarge, crops", async () => {
  // Noise is the hardest case (every rounding shows); smooth is cell-like.
  // Cases: reduce both axes, enlarge both, enlarge one and reduce the other,
  // one axis kept, a reduction factor over 8 (support 8.3 px per side), a
  // crop, the same size (Pillow: a copy), and the PNG encoder's road.
  const shapes: [number, number, number, Region?][] = [
    [90, 60, 40],
    [31, 26, 57],
    [70, 30, 48],
    [48, 20, 48],
    [200, 37, 24],
    [40, 30, 24, { left: 5, top: 3, width: 21, height: 26 }],
    [23, 17, 23, { left: 0, top: 0, width: 23, height: 17 }],
  ];
  const cases: BilinearCase[] = [];
  for (const [k, [w, h, size, crop]] of shapes.entries()) {
    for (const px of [noise(w, h, 3, 11 + k), smooth(w, h)]) {
      cases.push({ image: await bytes(raw(px, w, h, 3).png()), size, crop });
    }
  }
  cases.push({ image: cases[2].image, size: 57, encode: true });
  const rows = await bilinearVsPillow(cases);
  if (rows === null) return;
  assertEquals(rows.length, cases.length);
  rows.forEach(([mean, max], i) =>
    assert(
      max === 0,
      `case ${i} (${JSON.stringify(shapes[i >> 1] ?? "encode")}): mean ${mean}, max ${max}`,
    )
  );
  // The filters are not interchangeable: bilinear is not Lanczos.
  const lz = await decodeCell(cases[0].image, { size: 40 });
  const bl = await decodeCell(cases[0].image, { size: 40, resample: "bilinear" });
  assertNotEquals(Array.from(lz.pixels), Array.from(bl.pixels));
  await assertRejects(
    () => decodeCell(cases[0].image, { size: 8, resample: "nearest" as "bilinear" }),
    RangeError,
    'cell resample must be "lanczos" or "bilinear", got "nearest"',
  );
});

Deno.test("bilinear on BCCD (JPEG) crops and a VOC smear box equals Pillow's to the bit", async () => {
  const data = sharedData();
  if (data === null) {
    console.warn("skipping the BCCD bilinear check: ../shared/data is absent");
    return;
  }
  const root = join(data, "bccd-cropped", "BCCD_cropped");
  const cases: BilinearCase[] = [];
  // The first crop of each class (sides 133 to 316 px): 224 shrinks some
  // and enlarges others; 384 enlarges all; 100 shrinks all.
  for (const cls of ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]) {
    const names = [];
    for await (const e of Deno.readDir(join(root, cls))) names.push(e.name);
    const image = await Deno.readFile(join(root, cls, names.sort()[0]));
    for (const size of [224, 384, 100]) cases.push({ image, size });
  }
  // A whole 640x480 smear to 224 (both axes shrink, unequally), and its first
  // WBC box (its VOC annotation, without the ingest's margin) enlarged to 224.
  const smear = await Deno.readFile(
    join(data, "bccd-voc", "BCCD", "JPEGImages", "BloodImage_00000.jpg"),
  );
  cases.push({ image: smear, size: 224 });
  cases.push({ image: smear, size: 224, crop: { left: 260, top: 177, width: 231, height: 199 } });
  const rows = await bilinearVsPillow(cases);
  if (rows === null) return;
  // libvips and Pillow decode these JPEGs to the same pixels (both libjpeg-
  // turbo's islow IDCT and fancy upsampling), so any difference is the resize.
  rows.forEach(([mean, max], i) =>
    assert(max === 0, `BCCD case ${i} (size ${cases[i].size}): mean ${mean}, max ${max}`)
  );
});

Deno.test("resizeRgb: hand-computed bilinear taps, unchanged sizes copied, bad arguments named", () => {
  // 4 -> 2 (factor 2, support 2): output 0 is centred at 1.0 and sees inputs
  // 0..2 with weights 0.75, 0.75, 0.25 (normalised /1.75); output 1 sees 1..3.
  // R = 0, 80, 160, 240 -> 400/7 = 57.1 -> 57 and 1280/7 = 182.9 -> 183.
  const row = Uint8Array.from([0, 1, 2, 80, 81, 82, 160, 161, 162, 240, 241, 242]);
  assertEquals(Array.from(resizeRgb(row, 4, 1, 2, 1, "bilinear")).filter((_, i) => i % 3 === 0), [
    57,
    183,
  ]);
  // 2 -> 4 (support 1): centres 0.25, 0.75, 1.25, 1.75; the edges clamp.
  const two = Uint8Array.from([0, 0, 0, 200, 200, 200]);
  const up = resizeRgb(two, 1, 2, 1, 4, "bilinear"); // the vertical pass, one column
  assertEquals(Array.from(up).filter((_, i) => i % 3 === 0), [0, 50, 150, 200]);
  assertEquals(
    Array.from(resizeRgb(two, 2, 1, 4, 1, "bilinear")).filter((_, i) => i % 3 === 0),
    [0, 50, 150, 200],
  );
  const same = resizeRgb(row, 4, 1, 4, 1, "lanczos");
  assertEquals(Array.from(same), Array.from(row));
  assert(same !== row, "a same-size resize returns a copy, not the input");
  assertThrows(() => resizeRgb(row, 4, 2, 2, 1, "bilinear"), RangeError, "12 bytes is not 4x2x3");
  assertThrows(() => resizeRgb(row, 4, 1, 0, 1, "bilinear"), RangeError, "bad output size 0x1");
  assertThrows(
    () => resizeRgb(row, 4, 1, 2, 1, "cubic" as "bilinear"),
    RangeError,
    "unknown filter 'cubic'",
  );
});

Deno.test("crop: region extracted before the resize, clamped to the image", async () => {
  const rgb = noise(W, H, 3, 7);
  const png = await bytes(raw(rgb, W, H, 3).png());
  const c = await decodeCell(png, { size: 4, crop: { left: 3, top: 2, width: 4, height: 4 } });
  for (let y = 0; y < 4; y++) {
    for (let x = 0; x < 4; x++) {
      const src = ((y + 2) * W + x + 3) * 3;
      assertEquals(Array.from(c.pixels.subarray((y * 4 + x) * 3, (y * 4 + x) * 3 + 3)), [
        rgb[src],
        rgb[src + 1],
        rgb[src + 2],
      ]);
    }
  }
  assertEquals(clampRegion({ left: -2.5, top: 10, width: 10, height: 100 }, W, H), {
    left: 0,
    top: 10,
    width: 8,
    height: 7,
  });
  assertThrows(() => clampRegion({ left: 40, top: 0, width: 5, height: 5 }, W, H), ImageError);
});

Deno.test("bad inputs: empty, text, truncated JPEG/PNG, too small — each with its reason", async () => {
  const jpg = await bytes(raw(smooth(W, H), W, H, 3).jpeg());
  const png = await bytes(raw(smooth(W, H), W, H, 3).png());
  const cases: [string, Uint8Array, RegExp][] = [
    ["empty", new Uint8Array(0), /empty file/],
    ["text", new TextEncoder().encode("not an image at all"), /not an image/],
    ["truncated jpeg", jpg.subarray(0, jpg.length >> 1), /corrupt or truncated/],
    ["truncated png", png.subarray(0, png.length - 30), /corrupt or truncated/],
    [
      "truncated bmp",
      makeBmp({ w: 8, h: 8, bpp: 24, rgb: noise(8, 8, 3) }).subarray(0, 100),
      /BMP/,
    ],
  ];
  for (const [name, b, re] of cases) {
    const e = await assertRejects(() => encodeCell(b, { size: 8, format: "png" }), ImageError);
    assert(re.test(e.message), `${name}: '${e.message}' does not match ${re}`);
  }
  await assertRejects(
    () => decodeCell(png, { size: 8, minSize: 18 }),
    ImageError,
    "image is 23x17 px, smaller than --min-size 18",
  );
  await assertRejects(
    () => decodeCell(png, { size: 8, minSize: 5, crop: { left: 0, top: 0, width: 4, height: 9 } }),
    ImageError,
    "crop is 4x9 px",
  );
});

Deno.test("BMP: 24/32/16-bit, 8/4/1-bit palettes, RLE8, top-down, alpha — pixel exact", async () => {
  const w = 13; // stride padding for every depth
  const h = 5;
  const rgb = noise(w, h, 3, 3);
  const check = (name: string, bmp: Uint8Array, expect: Uint8Array) => {
    const d = decodeBmp(bmp);
    assertEquals([d.width, d.height], [w, h], name);
    const got = d.channels === 3 ? d.data : Uint8Array.from(
      { length: w * h * 3 },
      (_, i) => d.data[Math.floor(i / 3) * 4 + (i % 3)],
    );
    assertEquals(Array.from(got), Array.from(expect), name);
  };
  check("24-bit", makeBmp({ w, h, bpp: 24, rgb }), rgb);
  check("24-bit top-down", makeBmp({ w, h, bpp: 24, rgb, topDown: true }), rgb);
  check("32-bit BI_RGB", makeBmp({ w, h, bpp: 32, rgb }), rgb);
  const q565 = rgb.map((v, i) => {
    const bits = i % 3 === 1 ? 6 : 5;
    const q = v >> (8 - bits);
    return Math.round((q * 255) / ((1 << bits) - 1));
  });
  check("16-bit 565", makeBmp({ w, h, bpp: 16, rgb }), q565);
  const palette = noise(16, 1, 3, 9);
  for (const bpp of [1, 4, 8] as const) {
    const n = 1 << Math.min(bpp, 4);
    const indices = noise(w, h, 1, bpp).map((v) => v % n);
    const pal = palette.subarray(0, 3 * n);
    const expect = new Uint8Array(w * h * 3);
    indices.forEach((ix, i) => expect.set(pal.subarray(3 * ix, 3 * ix + 3), 3 * i));
    check(`${bpp}-bit palette`, makeBmp({ w, h, bpp, indices, palette: pal }), expect);
    if (bpp === 8) {
      const runs = indices.map((v, i) => (i % 4 < 3 ? v : 1)); // some runs, some singles
      const e2 = new Uint8Array(w * h * 3);
      runs.forEach((ix, i) => e2.set(pal.subarray(3 * ix, 3 * ix + 3), 3 * i));
      check("RLE8", makeBmp({ w, h, bpp, indices: runs, palette: pal, rle8: true }), e2);
    }
  }
  // 32-bit with an alpha mask: composited on white by decodeCell.
  const rgba = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    rgba.set([rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2], i % 2 ? 255 : 0], 4 * i);
  }
  const bmpA = makeBmp({ w, h, bpp: 32, rgb: rgba, alpha: true });
  assertEquals(decodeBmp(bmpA).channels, 4);
  const cell = await decodeCell(bmpA, { size: 2, crop: { left: 0, top: 0, width: 2, height: 1 } });
  assertEquals(cell.info.format, "bmp");
  // Row 0, pixel 0 has alpha 0 (white); pixel 1 alpha 255 (its colour); the crop
  // of one row resized to two repeats it.
  assertEquals(Array.from(cell.pixels.subarray(0, 6)), [255, 255, 255, ...rgb.subarray(3, 6)]);
  // All-zero alpha means "unused" (common in the wild): opaque, not invisible.
  const zeroA = makeBmp({
    w,
    h,
    bpp: 32,
    rgb: rgba.map((v, i) => (i % 4 === 3 ? 0 : v)),
    alpha: true,
  });
  assertEquals(decodeBmp(zeroA).channels, 3);

  assertThrows(() => decodeBmp(new Uint8Array([0x42, 0x4d, 1, 2])), BmpError, "truncated");
  const bad = makeBmp({ w, h, bpp: 24, rgb });
  new DataView(bad.buffer).setUint32(30, 4, true); // BI_JPEG
  assertThrows(() => decodeBmp(bad), BmpError, "embedded JPEG");
});

Deno.test("BMP written by Pillow decodes to Pillow's pixels", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const script = `
import numpy as np
from PIL import Image
rng = np.random.default_rng(5)
a = rng.integers(0, 256, (9, 14, 3), dtype=np.uint8)
Image.fromarray(a).save("${dir}/rgb.bmp")
Image.fromarray(a).convert("P", palette=Image.ADAPTIVE, colors=16).save("${dir}/p.bmp")
Image.fromarray(a).convert("1").save("${dir}/1.bmp")
for n in ("rgb", "p", "1"):
    np.asarray(Image.open(f"${dir}/{n}.bmp").convert("RGB")).tofile(f"${dir}/{n}.raw")`;
    if ((await runPython(script)) === null) return;
    for (const n of ["rgb", "p", "1"]) {
      const d = decodeBmp(await Deno.readFile(`${dir}/${n}.bmp`));
      assertEquals([d.width, d.height, d.channels], [14, 9, 3], n);
      assertEquals(Array.from(d.data), Array.from(await Deno.readFile(`${dir}/${n}.raw`)), n);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
