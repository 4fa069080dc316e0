/**
 * Structure-aware generators for every other format bloom reads: safetensors
 * (and ViT checkpoints in it), npy, tar shards, ingest manifests, BMP, VOC
 * annotations, CSV lists and training configs. Each builds a plausible file
 * from random parts (valid more often than not), then often damages it.
 */
import { encodeSafetensors } from "../../data/safetensors.ts";
import { tarEntry } from "../../data/tar.ts";
import { concat, tarHeader } from "./build.ts";
import { type FuzzRng, mutateMany, mutateText } from "./mutate.ts";

const enc = new TextEncoder();

/** Damages text now and then (once to a few times). */
function maybeMutateText(text: string, rng: FuzzRng, p = 0.5): string {
  if (!rng.chance(p)) return text;
  for (let i = 1 + rng.int(3); i > 0; i--) text = mutateText(text, rng).text;
  return text;
}

/** Damages bytes now and then. */
function maybeMutate(bytes: Uint8Array, rng: FuzzRng, p = 0.5): Uint8Array {
  return rng.chance(p) ? mutateMany(bytes, rng, 3).bytes : bytes;
}

// --- safetensors ----------------------------------------------------------------------------

const ST_DTYPES: [string, number][] = [
  ["F32", 4],
  ["F16", 2],
  ["BF16", 2],
  ["F64", 8],
  ["I64", 8],
  ["I32", 4],
  ["I16", 2],
  ["I8", 1],
  ["U8", 1],
  ["BOOL", 1],
];

/** A safetensors file: a random header (often consistent) and its data. */
export function generateSafetensors(rng: FuzzRng): Uint8Array {
  const header: Record<string, unknown> = {};
  let offset = 0;
  const n = rng.size(8);
  for (let i = 0; i < n; i++) {
    const [dt, size] = rng.pick(ST_DTYPES);
    const rank = rng.chance(0.03) ? rng.range(60, 70) : rng.int(4);
    const shape = Array.from(
      { length: rank },
      () => (rng.chance(0.97) ? rng.size(5) : rng.size(1 << 30)),
    );
    const bytes = shape.reduce((a, b) => a * b, 1) * size;
    let offs: unknown = [offset, offset + bytes];
    if (rng.chance(0.1)) {
      offs = rng.pick([[offset, offset + bytes + 1], [0, 1], [-1, 3], [offset], "x", [
        1e300,
        1e300,
      ]]);
    }
    const name = rng.chance(0.95)
      ? `${rng.pick(["blocks", "norm", "pos_embed", "cls_token"])}.${i}`
      : rng.pick(["", "__metadata__", "x".repeat(2000), "__proto__", "constructor"]);
    header[name] = {
      dtype: rng.chance(0.95) ? dt : rng.pick(["constructor", "toString", "F8", "f32", 3, null]),
      shape: rng.chance(0.97) ? shape : rng.pick([[-1], "3", [1.5], null, [2 ** 53]]),
      data_offsets: offs,
    };
    offset += Math.min(bytes, 1 << 16);
  }
  if (rng.chance(0.3)) {
    header.__metadata__ = rng.chance(0.8)
      ? { format: "pt", "bloom.heads": String(rng.size(12)) }
      : rng.pick([[], 3, { a: 1 }]);
  }
  let json = JSON.stringify(header);
  json = maybeMutateText(json, rng, 0.2);
  const h = enc.encode(json);
  const out = new Uint8Array(8 + h.length + Math.min(offset, 1 << 16));
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(rng.bytes(out.length - 8 - h.length), 8 + h.length);
  return maybeMutate(out, rng, 0.35);
}

// --- ViT checkpoints ------------------------------------------------------------------------

/** A safetensors ViT backbone of random small shapes, often with a gap, a stray block or a bad shape. */
export function generateVitCheckpoint(rng: FuzzRng): Uint8Array {
  const D = rng.pick([4, 8, 64, 6, 0]);
  const P = rng.pick([1, 2, 3]);
  const G = rng.pick([1, 2, 3]);
  const H = rng.pick([4, 8, 16]);
  const depth = rng.int(4);
  const swiglu = rng.chance(0.2);
  const t = (shape: number[]) => ({
    dtype: "f16" as const,
    shape,
    data: new Uint16Array(shape.reduce((a, b) => a * b, 1)),
  });
  const m = new Map<string, ReturnType<typeof t>>();
  const prefix = rng.pick(["", "", "teacher.backbone.", "module.", "backbone."]);
  const add = (k: string, s: number[]) => m.set(prefix + k, t(s));
  add("cls_token", [1, 1, D]);
  add("pos_embed", [1, 1 + G * G, D]);
  add("mask_token", [1, D]);
  add("patch_embed.proj.weight", rng.chance(0.95) ? [D, 3, P, P] : [D, 3, P]);
  add("patch_embed.proj.bias", [D]);
  add("norm.weight", [D]);
  add("norm.bias", [D]);
  if (rng.chance(0.2)) add("register_tokens", [1, rng.int(5), D]);
  for (let i = 0; i < depth; i++) {
    if (rng.chance(0.05)) continue; // a gap
    const b = `blocks.${i}.`;
    for (
      const k of [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.bias",
        "attn.proj.bias",
        "ls1.gamma",
        "norm2.weight",
        "norm2.bias",
        "ls2.gamma",
      ]
    ) {
      add(b + k, [k === "attn.qkv.bias" ? 3 * D : D]);
    }
    add(b + "attn.qkv.weight", [3 * D, D]);
    add(b + "attn.proj.weight", [D, D]);
    if (swiglu) {
      add(b + "mlp.w12.weight", [2 * H, D]);
      add(b + "mlp.w12.bias", [2 * H]);
      add(b + "mlp.w3.weight", [D, H]);
      add(b + "mlp.w3.bias", [D]);
    } else {
      add(b + "mlp.fc1.weight", [H, D]);
      add(b + "mlp.fc1.bias", [H]);
      add(b + "mlp.fc2.weight", [D, H]);
      add(b + "mlp.fc2.bias", [D]);
    }
  }
  if (rng.chance(0.1)) add(`blocks.${rng.pick([depth + 1, 99999999, 1e12])}.x`, [1]);
  if (rng.chance(0.05)) add("blocks.0.mlp.fc1.weight", [rng.size(70000) + 1]);
  const meta: Record<string, string> = {};
  if (rng.chance(0.2)) meta["bloom.heads"] = rng.pick(["1", "2", "3", "1e9", "-1", "x", "0.5"]);
  return maybeMutate(encodeSafetensors("fuzz.safetensors", m, meta), rng, 0.2);
}

// --- npy ------------------------------------------------------------------------------------

const DESCRS = [
  "<f4",
  "<f8",
  "<f2",
  "<i8",
  "<i4",
  "<i2",
  "|i1",
  "|u1",
  "|b1",
  ">f4",
  "<c8",
  "O",
  "constructor",
];

/** A .npy file: a random header dict (often valid) and data. */
export function generateNpy(rng: FuzzRng): Uint8Array {
  const rank = rng.chance(0.03) ? rng.range(60, 70) : rng.int(4);
  const shape = Array.from({ length: rank }, () => rng.size(6));
  const descr = rng.chance(0.85) ? rng.pick(DESCRS.slice(0, 9)) : rng.pick(DESCRS);
  const size = Number(/\d+$/.exec(descr)?.[0] ?? 1);
  const tuple = shape.length === 1
    ? `(${shape[0]},)`
    : `(${shape.map((d) => d + (rng.chance(0.1) ? "L" : "")).join(", ")})`;
  let dict = `{'descr': '${descr}', 'fortran_order': ${
    rng.chance(0.9) ? "False" : "True"
  }, 'shape': ${tuple}, }`;
  dict = maybeMutateText(dict, rng, 0.25);
  const major = rng.pick([1, 1, 2, 3]);
  const pre = major === 1 ? 10 : 12;
  const body = enc.encode(dict);
  const total = Math.ceil((pre + body.length + 1) / 64) * 64;
  const header = new Uint8Array(total - pre).fill(0x20);
  header.set(body);
  header[header.length - 1] = 0x0a;
  const prefix = new Uint8Array(pre);
  prefix.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const dv = new DataView(prefix.buffer);
  if (major === 1) dv.setUint16(8, header.length, true);
  else dv.setUint32(8, header.length, true);
  const numel = shape.reduce((a, b) => a * b, 1);
  const data = rng.bytes(
    Math.min(numel * size + (rng.chance(0.1) ? rng.range(-4, 4) : 0), 1 << 16),
  );
  return maybeMutate(concat(prefix, header, data), rng, 0.3);
}

// --- tar ------------------------------------------------------------------------------------

/** A tar shard: members written by bloom's writer and crafted headers, maybe damaged. */
export function generateTar(rng: FuzzRng): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let i = rng.size(8); i > 0; i--) {
    const r = rng.int(10);
    if (r < 6) {
      const name = rng.chance(0.8)
        ? `${rng.pick(["train", "val"])}/${String(i).padStart(6, "0")}.${
          rng.pick(["png", "cls", "json"])
        }`
        : rng.pick([
          "k".repeat(300) + ".png",
          "é.png",
          `${"d".repeat(120)}/${"n".repeat(29)}`,
          "x",
        ]);
      parts.push(tarEntry(name, rng.bytes(rng.size(2000))));
    } else if (r < 9) {
      // A crafted header: odd type, size field or PAX records.
      const type = rng.pick(["0", "5", "2", "x", "g", "L", "K", "7", "S"]);
      const data = rng.chance(0.5) && (type === "x" || type === "g")
        ? enc.encode(
          rng.pick([
            "12 path=abc\n",
            "16 size=100000\n",
            "9 size=-5\n",
            "30 size=99999999999999999999\n",
            "1000 path=x\n",
          ]),
        )
        : rng.bytes(rng.size(700));
      const sizeField = rng.chance(0.8) ? data.length : rng.pick([
        0o77777777777,
        Uint8Array.from([0x80, ...new Array(11).fill(0xff)]),
        new Uint8Array(12).fill(0xff),
        Uint8Array.from([0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]),
        enc.encode("1234567x"),
      ]);
      parts.push(tarHeader({ name: `m${i}.png`, size: sizeField, type }), data);
      parts.push(new Uint8Array((512 - (data.length % 512)) % 512));
    } else parts.push(rng.bytes(rng.pick([1, 511, 512, 1024])));
  }
  if (rng.chance(0.8)) parts.push(new Uint8Array(1024));
  return maybeMutate(concat(...parts), rng, 0.3);
}

// --- manifests ------------------------------------------------------------------------------

/** An ingest manifest.json: the real shape, with fields dropped, retyped or pointing outside. */
export function generateManifest(rng: FuzzRng): Uint8Array {
  const shards = Array.from({ length: rng.size(5) }, (_, i) => ({
    name: rng.chance(0.85) ? `train-${String(i).padStart(6, "0")}.tar` : rng.pick([
      "../../x.tar",
      "/etc/passwd",
      "a/b.tar",
      "..",
      ".",
      "",
      "x\u0000.tar",
      "C:\\x.tar",
      3,
      null,
    ]),
    split: rng.chance(0.95) ? "train" : rng.pick([null, 1, ["x"]]),
    samples: rng.chance(0.95) ? rng.size(100) : rng.pick([-1, 1.5, "3", 1e300]),
    bytes: rng.size(10000),
    sha256: "0".repeat(64),
  }));
  const m: Record<string, unknown> = {
    format: "bloom-webdataset",
    version: 1,
    created: "2026-12-03T00:00:00Z",
    classes: ["a", "b"],
    size: 224,
    imageExt: "png",
    counts: { train: { samples: 1, perClass: { a: 1 } } },
    shards,
    splits: { train: ["a"] },
    params: {},
    errors: 0,
    samples: 1,
  };
  for (const k of Object.keys(m)) {
    if (rng.chance(0.05)) delete m[k];
    else if (rng.chance(0.04)) m[k] = rng.pick([null, 0, "x", [], {}]);
  }
  let text = rng.chance(0.03) ? rng.pick(["null", "[]", "1", '"x"', "{}"]) : JSON.stringify(m);
  text = maybeMutateText(text, rng, 0.2);
  return enc.encode(text);
}

// --- BMP ------------------------------------------------------------------------------------

/** A BMP: random header variant, depth and compression, pixels or RLE codes, maybe damaged. */
export function generateBmp(rng: FuzzRng): Uint8Array {
  const hs = rng.pick([12, 40, 40, 40, 52, 56, 108, 124, 16, 64]);
  const bpp = rng.pick([1, 4, 8, 8, 16, 24, 24, 32, 2, 0, 7]);
  let compression = bpp === 8 && rng.chance(0.3) ? 1 : bpp === 4 && rng.chance(0.3) ? 2 : 0;
  if (bpp >= 16 && rng.chance(0.3)) compression = rng.pick([3, 6]);
  if (rng.chance(0.05)) compression = rng.pick([4, 5, 7, 99]);
  const big = rng.chance(0.05);
  const w = big ? rng.pick([16383, 30000, 65535]) : 1 + rng.size(40);
  let h = big ? rng.pick([16383, 30000, 1]) : 1 + rng.size(40);
  if (rng.chance(0.2)) h = -h; // top-down
  const palette = bpp <= 8 ? 4 * (rng.chance(0.8) ? 1 << bpp : rng.size(300)) : 0;
  const masks = compression === 3 || compression === 6
    ? (hs === 40 ? (compression === 6 ? 16 : 12) : 0)
    : 0;
  const pixelOffset = 14 + hs + masks + palette;
  let pixels: Uint8Array;
  if (compression === 1 || compression === 2) {
    const codes: number[] = [];
    for (let i = rng.size(200); i > 0; i--) {
      switch (rng.int(6)) {
        case 0:
          codes.push(0, 0); // end of line
          break;
        case 1:
          codes.push(0, 2, rng.int(256), rng.int(256)); // delta
          break;
        case 2: {
          const n = 3 + rng.int(20);
          codes.push(0, n, ...rng.bytes(compression === 2 ? Math.ceil(n / 2) : n));
          if (codes.length & 1) codes.push(0);
          break;
        }
        default:
          codes.push(1 + rng.int(255), rng.int(256)); // a run
      }
    }
    if (rng.chance(0.7)) codes.push(0, 1); // end of bitmap
    pixels = Uint8Array.from(codes);
  } else {
    const stride = Math.floor((Math.max(bpp, 1) * Math.min(Math.abs(w), 64) + 31) / 32) * 4;
    pixels = rng.bytes(Math.min(stride * Math.min(Math.abs(h), 64), 1 << 16));
  }
  const b = new Uint8Array(pixelOffset + pixels.length);
  const v = new DataView(b.buffer);
  b[0] = 0x42;
  b[1] = 0x4d;
  v.setUint32(2, b.length, true);
  v.setUint32(10, rng.chance(0.95) ? pixelOffset : rng.int(b.length + 10), true);
  v.setUint32(14, hs, true);
  if (hs === 12) {
    v.setUint16(18, Math.abs(w) & 0xffff, true);
    v.setInt16(20, Math.max(-32768, Math.min(32767, h)), true);
    v.setUint16(22, 1, true);
    v.setUint16(24, bpp, true);
  } else if (hs >= 16 && 14 + hs <= b.length) {
    v.setInt32(18, rng.chance(0.97) ? w : -w, true);
    v.setInt32(22, h, true);
    v.setUint16(26, 1, true);
    v.setUint16(28, bpp, true);
    if (hs >= 40) {
      v.setUint32(30, compression, true);
      v.setUint32(46, palette ? palette / 4 : 0, true);
    }
  }
  if (masks || (hs >= 56 && (compression === 3 || compression === 6))) {
    const at = 54;
    if (at + 16 <= b.length) {
      const m = rng.pick([[0xff0000, 0xff00, 0xff, 0xff000000], [0x7c00, 0x3e0, 0x1f, 0], [
        0,
        0,
        0,
        0,
      ], [0xffffffff, 1, 0x80000000, 0]]);
      m.forEach((x, i) => v.setUint32(at + 4 * i, x >>> 0, true));
    }
  }
  for (let i = 14 + hs + masks; i < pixelOffset; i++) b[i] = rng.int(256);
  b.set(pixels, pixelOffset);
  return maybeMutate(b, rng, 0.3);
}

// --- VOC ------------------------------------------------------------------------------------

/** A Pascal-VOC annotation: objects, boxes, comments, CDATA and entities; sometimes huge. */
export function generateVoc(rng: FuzzRng): Uint8Array {
  const obj = () => {
    const n =
      () => (rng.chance(0.9)
        ? String(rng.int(640))
        : rng.pick(["", "x", "1e309", "-5", "3.5", "NaN"]));
    const name = rng.pick(["WBC", "RBC", "Platelets", "<![CDATA[WBC]]>", "W&amp;BC", ""]);
    return `<object><name>${name}</name><pose>Unspecified</pose><bndbox><xmin>${n()}</xmin>` +
      `<ymin>${n()}</ymin><xmax>${n()}</xmax><ymax>${n()}</ymax></bndbox></object>`;
  };
  const objects = rng.chance(0.03) ? rng.range(2000, 8000) : rng.size(8);
  let xml = `<?xml version="1.0"?>\n<annotation${rng.chance(0.1) ? ' verified="yes"' : ""}>` +
    `<folder>JPEGImages</folder><filename>BloodImage_${rng.int(400)}.jpg</filename>` +
    (rng.chance(0.2) ? "<!-- a comment with <tags> -->" : "") +
    `<size><width>${rng.size(1000)}</width><height>${
      rng.size(1000)
    }</height><depth>3</depth></size>`;
  for (let i = 0; i < objects; i++) xml += obj();
  if (rng.chance(0.9)) xml += "</annotation>";
  if (rng.chance(0.03)) {
    // Deep or unclosed nesting, long runs of '<': inputs that make naive parsers quadratic.
    xml = rng.pick([
      "<annotation>" + "<a>".repeat(rng.range(1000, 50000)),
      "<annotation>" + "<".repeat(rng.range(1000, 200000)),
      "<annotation><object>".repeat(rng.range(100, 20000)),
      "<!--".repeat(rng.range(100, 50000)),
    ]);
  }
  return enc.encode(maybeMutateText(xml, rng, 0.4));
}

// --- CSV ------------------------------------------------------------------------------------

/** A BMC-style `Image Path,Label` list: quotes, CRLF, BOM, empty and escaping paths. */
export function generateCsv(rng: FuzzRng): Uint8Array {
  const header = rng.chance(0.9)
    ? "Image Path,Label"
    : rng.pick(["path,label", "", "Label,Image Path,Extra", '"Image Path","Label"']);
  const rows = [header];
  const n = rng.chance(0.03) ? rng.range(5000, 50000) : rng.size(20);
  for (let i = 0; i < n; i++) {
    const path = rng.chance(0.85)
      ? `images/${rng.pick(["a", "b"])}/${i}.${rng.pick(["png", "jpg", "bmp"])}`
      : rng.pick([
        "",
        "../../etc/passwd",
        "/abs/x.png",
        '"quoted, path".png',
        "a\nb.png",
        "\u0000.png",
        " ",
      ]);
    const label = rng.chance(0.9)
      ? rng.pick(["neutrophil", "lymphocyte", "blast"])
      : rng.pick(["", '"', "x,y"]);
    const q = (
      s: string,
    ) => (/[",\n]/.test(s) || rng.chance(0.1) ? `"${s.replaceAll('"', '""')}"` : s);
    rows.push(`${q(path)},${q(label)}`);
  }
  let text = (rng.chance(0.1) ? "\ufeff" : "") + rows.join(rng.chance(0.2) ? "\r\n" : "\n");
  if (rng.chance(0.02)) text = '"' + "x".repeat(rng.range(1000, 200000)); // an unterminated quote
  return enc.encode(maybeMutateText(text, rng, 0.3));
}

// --- training configs -----------------------------------------------------------------------

/** A JSON training config: a preset plus overrides of every type and range. */
export function generateConfig(rng: FuzzRng): Uint8Array {
  const num = () => rng.pick([0, 1, 2, -1, -5, 0.5, 14, 224, 1e9, 1e308, 16, 64, 3, 1e-9, 2 ** 53]);
  const value = (): unknown => {
    switch (rng.int(8)) {
      case 0:
        return rng.pick(["x", "", "sinkhorn_knopp", "centering", "softmax", "constructor"]);
      case 1:
        return rng.chance(0.5);
      case 2:
        return null;
      case 3:
        return [num(), num()];
      case 4:
        return { depth: num(), dim: num(), heads: num(), patch: num(), mlpHidden: num() };
      default:
        return num();
    }
  };
  const fields = [
    "batch",
    "microBatch",
    "imageSize",
    "baseLr",
    "minLr",
    "epochs",
    "warmupEpochs",
    "epochLength",
    "freezeLastLayerEpochs",
    "weightDecay",
    "weightDecayEnd",
    "momentumTeacher",
    "teacherTemp",
    "studentTemp",
    "clipGrad",
    "koleoWeight",
    "maskProbability",
    "maskRatio",
    "layerDecay",
    "centering",
    "vit",
    "head",
    "seed",
    "layerScaleInit",
    "arch",
    "unknownField",
    "__proto__",
  ];
  const c: Record<string, unknown> = {};
  if (rng.chance(0.9)) {
    c.preset = rng.chance(0.9)
      ? rng.pick(["demo", "dinobloom-s", "dinobloom-b"])
      : rng.pick(["constructor", "__proto__", "toString", "x", 3]);
  }
  for (let i = rng.size(6); i > 0; i--) {
    const k = rng.pick(fields);
    c[k] = k === "arch" && rng.chance(0.7) ? rng.pick(["vit_small", "vit_base", "vit_x"]) : value();
  }
  let text = JSON.stringify(c);
  if (rng.chance(0.05)) text = rng.pick(["null", "[]", "3", '"x"', '{"__proto__": {"batch": 1}}']);
  return enc.encode(maybeMutateText(text, rng, 0.2));
}

// --- embeddings files -----------------------------------------------------------------------

/** An embeddings file: safetensors with features and JSON-list metadata, or bloom's csv. */
export function generateEmbeddings(rng: FuzzRng): Uint8Array {
  const rows = rng.size(12);
  const dim = rng.chance(0.97) ? 1 + rng.size(8) : rng.range(1000, 5000);
  const list = (prefix: string) => {
    const n = rng.chance(0.9) ? rows : rng.size(14);
    const xs: unknown[] = Array.from({ length: n }, (_, i) => `${prefix}${i}`);
    if (rng.chance(0.05)) xs[0] = rng.pick(["", 3, null, ["x"]]);
    return JSON.stringify(xs);
  };
  if (rng.chance(0.5)) {
    const meta: Record<string, string> = { paths: list("img/"), "bloom.version": "1" };
    if (rng.chance(0.7)) meta.labels = list("class");
    if (rng.chance(0.2)) meta.patients = list("p");
    if (rng.chance(0.2)) meta.pool = rng.pick(["cls", "mean", "cls+mean", "max", "constructor"]);
    if (rng.chance(0.05)) meta[rng.pick(["constructor", "__proto__", "toString"])] = "x";
    if (rng.chance(0.05)) meta.labels = rng.pick(["[", "{}", '"x"', "[1,2"]);
    const shape = rng.chance(0.95) ? [rows, dim] : rng.pick([[rows], [rows, dim, 1], []]);
    const n = shape.reduce((a, b) => a * b, 1);
    const tensors = new Map([["features", {
      dtype: "f32" as const,
      shape,
      data: new Float32Array(n),
    }]]);
    if (rng.chance(0.2)) {
      const np = rng.size(4);
      const pt = rng.chance(0.9) ? [rows, np, dim] : [rows + 1, np, dim];
      tensors.set("patch_tokens", {
        dtype: "f32",
        shape: pt,
        data: new Float32Array(pt.reduce((a, b) => a * b, 1)),
      });
    }
    return maybeMutate(encodeSafetensors("fuzz.safetensors", tensors, meta), rng, 0.3);
  }
  const header = ["path", "label", "patient", ...Array.from({ length: dim }, (_, j) => `f${j}`)];
  const lines = [rng.chance(0.95) ? header.join(",") : header.slice(0, 3).join(",")];
  for (let i = 0; i < rows; i++) {
    const values = Array.from(
      { length: rng.chance(0.95) ? dim : dim + 1 },
      () => (rng.chance(0.98) ? String(rng.normal()) : rng.pick(["", "NaN", "1e999", "x", "-0"])),
    );
    lines.push([`"img/${i},a.png"`, rng.chance(0.9) ? "blast" : "", "", ...values].join(","));
  }
  return enc.encode(maybeMutateText(lines.join(rng.chance(0.2) ? "\r\n" : "\n"), rng, 0.3));
}
