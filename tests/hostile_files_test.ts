/**
 * Issue 12's hostile files, each crafted here byte by byte and each now
 * refused with a typed error that names the file, within a time and memory
 * budget the test measures (data/limits.ts states the caps):
 * 1. a .pth whose tensor names reuse one long key at every nesting level;
 * 2. a safetensors file claiming `blocks.99999999`;
 * 3. pickle calls that copy a stored blob on every call;
 * 11. self-nesting `_rebuild_from_type_v2`, and ranks past the cap;
 * 8. tar sizes that are huge, negative or past the stream;
 * 12. dtype names like "constructor", manifests of null, without shards,
 *     or naming `../../x`, and atomic writes that fsync file and folder.
 * Besides: data/README.md's caps table against the code, and a crafted file
 * past each cap no finding above reaches.
 */
import {
  CheckpointError,
  CorruptFileError,
  InputError,
  LimitError,
  MissingKeyError,
  UnsupportedFormatError,
} from "../data/errors.ts";
import { LIMITS } from "../data/limits.ts";
import { openNpy } from "../data/npy.ts";
import { PickleTuple, TensorRef, unpickle } from "../data/pickle.ts";
import { openPth } from "../data/pth.ts";
import type { TensorRecord } from "../data/record.ts";
import { encodeSafetensors, MAX_HEADER_BYTES, openSafetensors } from "../data/safetensors.ts";
import { readTar, readTarFile, TarFormatError } from "../data/tar.ts";
import { ZipReader } from "../data/zip.ts";
import { inferConfig, openCheckpoint } from "../graph/checkpoint.ts";
import { VIT_LIMITS } from "../graph/vit.ts";
import { RLE_MAX_PIXELS_PER_BYTE } from "../pipelines/dataset/bmp.ts";
import {
  MAX_IMAGE_FILE_BYTES,
  MAX_IMAGE_PIXELS,
  PIXEL_BUDGET,
} from "../pipelines/dataset/decode_budget.ts";
import { readManifest } from "../pipelines/dataset/manifest.ts";
import { MAX_ANNOTATION_BYTES, MAX_XML_DEPTH } from "../pipelines/dataset/voc.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import {
  chunks,
  concat,
  contiguousStrides,
  memorySource,
  PickleOps,
  pthBytes,
  tarHeader,
  zipBytes,
} from "./fuzz/build.ts";
import { measure } from "./fuzz/measure.ts";
import { collect } from "./helpers.ts";

const TMP = Deno.makeTempDirSync({ prefix: "bloom-hostile-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

/** What a refused file may cost at most: far below what each attack used to take. */
const BUDGET = { ms: 5000, bytes: 256 << 20 };

/**
 * Runs `fn`, which must reject with `cls` whose message names `file` and
 * matches `pattern`, within BUDGET; returns the error.
 */
async function refused<E extends Error>(
  fn: () => Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  cls: new (...args: any[]) => E,
  file: string,
  pattern: RegExp,
): Promise<E> {
  const r = await measure(fn);
  assert(r.threw, `expected ${cls.name}, but it succeeded`);
  const e = r.error;
  if (!(e instanceof cls)) {
    throw new Error(`expected ${cls.name}, got ${e instanceof Error ? e.stack : e}`);
  }
  assert(e.message.includes(file), `names the file ${file}: ${e.message}`);
  assert(pattern.test(e.message), `${e.message} matches ${pattern}`);
  assert(r.cost.ms < BUDGET.ms, `took ${r.cost.ms.toFixed(0)} ms`);
  assert(
    r.cost.peakBytes < BUDGET.bytes,
    `peak memory ${(r.cost.peakBytes / 2 ** 20).toFixed(0)} MiB (${r.cost.how})`,
  );
  return e;
}

const f32 = (n: number) => new Uint8Array(4 * n);

// --- 1. tensor names from one long key reused at every level -------------------------------

/** dict → {key: {key: … {key: tensor}}} with one `keyLen`-character key stored once. */
function nestedKeyPickle(levels: number, keyLen: number, tensorEvery = 1): Uint8Array {
  const p = new PickleOps().proto().str("k".repeat(keyLen)).put(0);
  p.global("torch._utils", "_rebuild_tensor_v2").put(1);
  p.mark().storage("0", 1).int(0).emptyTuple().emptyTuple().bool(false)
    .global("collections", "OrderedDict").emptyTuple().reduce().tuple().put(2).pop();
  for (let i = 0; i < levels; i++) {
    p.emptyDict();
    // Every few levels a tensor sits next to the deeper dict, named by the whole path.
    if (i % tensorEvery === 0) p.str("t").get(1).get(2).reduce().setitem();
    p.get(0); // the key of the next level
  }
  p.emptyDict();
  for (let i = 0; i < levels; i++) p.setitem();
  return p.done();
}

Deno.test("hostile 1: one long key reused at 1,000 levels is refused, not gigabytes of names", async () => {
  const pkl = nestedKeyPickle(1000, 25_000, 10);
  const { bytes } = pthBytes(pkl, { "0": f32(1) });
  assert(bytes.length < 64 << 10, `a small file (${bytes.length} bytes)`);
  const e = await refused(
    () => openPth(memorySource("nested_keys.pth", bytes)),
    LimitError,
    "nested_keys.pth",
    /limit \(expected at most \d+/,
  );
  // The first tensor already has a 25,000-character name: the name cap, not the nesting cap.
  assert(/tensor name length/.test(e.message), e.message);
  // Within the caps the same shape loads, with the names it should have.
  const ok = pthBytes(nestedKeyPickle(LIMITS.nesting - 1, 8, 33), { "0": f32(1) }).bytes;
  using ck = await openPth(memorySource("nested_ok.pth", ok));
  assertEquals([...ck.tensors.keys()], [0, 33, 66].map((n) => "kkkkkkkk.".repeat(n) + "t"));
  // Nesting past the cap, with short keys, is its own LimitError.
  await refused(
    () =>
      openPth(
        memorySource("deep.pth", pthBytes(nestedKeyPickle(150, 1, 1000), { "0": f32(1) }).bytes),
      ),
    LimitError,
    "deep.pth",
    /container nesting exceeds bloom's limit \(expected at most 100/,
  );
});

// --- 2. safetensors blocks.99999999 ---------------------------------------------------------

/** A tiny ViT's backbone tensors (dim 4, patch 2, 2×2 grid), with `extra` added. */
function tinyBackbone(extra: Record<string, number[]> = {}, depth = 1) {
  const t = (shape: number[]) => ({
    dtype: "f32" as const,
    shape,
    data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
  });
  const D = 4, H = 8;
  const out: Record<string, ReturnType<typeof t>> = {
    cls_token: t([1, 1, D]),
    pos_embed: t([1, 5, D]),
    mask_token: t([1, D]),
    "patch_embed.proj.weight": t([D, 3, 2, 2]),
    "patch_embed.proj.bias": t([D]),
    "norm.weight": t([D]),
    "norm.bias": t([D]),
  };
  for (let i = 0; i < depth; i++) {
    for (
      const [k, s] of Object.entries({
        "norm1.weight": [D],
        "norm1.bias": [D],
        "attn.qkv.weight": [3 * D, D],
        "attn.qkv.bias": [3 * D],
        "attn.proj.weight": [D, D],
        "attn.proj.bias": [D],
        "ls1.gamma": [D],
        "norm2.weight": [D],
        "norm2.bias": [D],
        "mlp.fc1.weight": [H, D],
        "mlp.fc1.bias": [H],
        "mlp.fc2.weight": [D, H],
        "mlp.fc2.bias": [D],
        "ls2.gamma": [D],
      })
    ) out[`blocks.${i}.${k}`] = t(s);
  }
  for (const [k, s] of Object.entries(extra)) out[k] = t(s);
  return out;
}

Deno.test("hostile 2: a safetensors file naming blocks.99999999 is a missing block, at once", async () => {
  // The original: ~1 KB, no blocks.0, one key far out.
  const tiny = tinyBackbone({ "blocks.99999999.x": [1] }, 0);
  const path = `${TMP}/far_block.safetensors`;
  await Deno.writeFile(path, encodeSafetensors(path, tiny));
  assert((await Deno.stat(path)).size < 2048);
  const e = await refused(
    () => openCheckpoint(path),
    MissingKeyError,
    path,
    /blocks\.0\.\*: transformer blocks are missing before a later block/,
  );
  assert(e.message.includes("blocks.99999999"), e.message);
  // With blocks 0 and 1 present, a stray block 7 is named the same way.
  const gap = `${TMP}/gap.safetensors`;
  await Deno.writeFile(gap, encodeSafetensors(gap, tinyBackbone({ "blocks.7.x": [1] }, 2)));
  await refused(() => openCheckpoint(gap), MissingKeyError, gap, /blocks\.2\.\*/);
  // The contiguous model opens, with the depth its keys say.
  const good = `${TMP}/good.safetensors`;
  await Deno.writeFile(good, encodeSafetensors(good, tinyBackbone({}, 2)));
  const ck = await openCheckpoint(good);
  ck.file.close();
  assertEquals([ck.config.depth, ck.config.dim, ck.config.posGrid], [2, 4, 2]);
});

Deno.test("hostile 2: shapes past VIT_LIMITS and absurd head counts are LimitErrors", async () => {
  // dim 8200 > 8192 (f16 keeps the file small).
  const D = 8200;
  const big = {
    "patch_embed.proj.weight": {
      dtype: "f16" as const,
      shape: [D, 3, 1, 1],
      data: new Uint16Array(3 * D),
    },
    pos_embed: { dtype: "f16" as const, shape: [1, 2, D], data: new Uint16Array(2 * D) },
    "blocks.0.mlp.fc1.weight": { dtype: "f16" as const, shape: [1, D], data: new Uint16Array(D) },
  };
  const path = `${TMP}/wide.safetensors`;
  await Deno.writeFile(path, encodeSafetensors(path, big));
  await refused(
    () => openCheckpoint(path),
    LimitError,
    path,
    /dim: expected an integer in 1\.\.8192, found 8200/,
  );
  const heads = `${TMP}/heads.safetensors`;
  await Deno.writeFile(heads, encodeSafetensors(heads, tinyBackbone(), { "bloom.heads": "1e9" }));
  await refused(
    () => openCheckpoint(heads),
    LimitError,
    heads,
    /heads: expected an integer in 1\.\.128/,
  );
  await Deno.writeFile(heads, encodeSafetensors(heads, tinyBackbone(), { "bloom.heads": "3" }));
  await refused(
    () => openCheckpoint(heads),
    LimitError,
    heads,
    /heads: expected a divisor of dim 4/,
  );
});

// --- 3. pickle calls that copy their argument -----------------------------------------------

const SRC = { file: "/models/amplify.pth", entry: "archive/data.pkl" };
/** `fn(*args)` called `calls` times on one memoised argument tuple, each result dropped. */
function copyCalls(module: string, name: string, args: (p: PickleOps) => void, calls: number) {
  const p = new PickleOps().proto().global(module, name).put(0).pop();
  args(p);
  p.put(1).pop();
  for (let i = 0; i < calls; i++) p.get(0).get(1).reduce().pop();
  return p.none().done();
}

Deno.test("hostile 3: bytearray, _codecs.encode, torch.Size and set copies are held to a budget", async () => {
  const many = (p: PickleOps, close: (p: PickleOps) => PickleOps) => {
    p.mark();
    for (let i = 0; i < 8192; i++) p.int(1);
    close(p);
  };
  // Each call copies ~64 KiB from a few bytes of pickle; 30,000 calls asked for ~2 GB.
  const cases: [string, string, (p: PickleOps) => void][] = [
    ["__builtin__", "bytearray", (p) => p.bytes(new Uint8Array(64 << 10).fill(7)).tuple1()],
    ["_codecs", "encode", (p) => p.str("a".repeat(64 << 10)).str("latin1").tuple2()],
    ["torch", "Size", (p) => many(p, (q) => q.tuple().tuple1())],
    ["builtins", "set", (p) => (p.emptyList(), many(p, (q) => q.appends().tuple1()))],
  ];
  for (const [module, name, args] of cases) {
    const pkl = copyCalls(module, name, args, 30_000);
    assert(pkl.length < 1 << 20, `${name}: a pickle under 1 MiB (${pkl.length})`);
    const e = await refused(
      () => Promise.resolve(unpickle(pkl, SRC)),
      LimitError,
      SRC.file,
      /would build more than a small multiple of the file's own size \(expected at most/,
    );
    assert(e.message.includes(`${module}.${name}`), e.message);
  }
  // A few calls are fine: the budget is a multiple of the pickle, not a ban.
  const few = copyCalls("__builtin__", "bytearray", cases[0][2], 5);
  assertEquals(unpickle(few, SRC), null);
});

// --- 11. self-nesting _rebuild_from_type_v2, and rank -----------------------------------------

/** `_rebuild_from_type_v2` wrapped `levels` times: each level (from_type_v2, Tensor, inner args, {}). */
function rebuildChain(levels: number): Uint8Array {
  const p = new PickleOps().proto();
  p.global("torch._tensor", "_rebuild_from_type_v2").put(0).pop();
  p.global("torch", "Tensor").put(1).pop();
  p.emptyDict().put(2).pop();
  // innermost: (_rebuild_tensor_v2, Tensor, (storage…), {})
  p.mark().global("torch._utils", "_rebuild_tensor_v2").get(1).tensorArgs("0", 1, [1], [1])
    .get(2).tuple();
  // Each level: the previous tuple goes to memo 3, then MARK from_type Tensor prev {} TUPLE.
  for (let i = 0; i < levels; i++) p.put(3).pop().mark().get(0).get(1).get(3).get(2).tuple();
  // The call: from_type_v2(*args) where args is the outermost tuple.
  p.put(3).pop().get(0).get(3).reduce();
  return p.done();
}

Deno.test("hostile 11: self-nesting _rebuild_from_type_v2 is a LimitError, not a stack overflow", async () => {
  const deep = rebuildChain(100_000);
  const e = await refused(
    () => Promise.resolve(unpickle(deep, SRC)),
    LimitError,
    SRC.file,
    /nesting of _rebuild_from_type_v2 calls exceeds bloom's limit \(expected at most 8/,
  );
  assert(!(e instanceof RangeError));
  // Through a whole .pth too.
  await refused(
    () => openPth(memorySource("nested_rebuild.pth", pthBytes(deep, { "0": f32(1) }).bytes)),
    LimitError,
    "nested_rebuild.pth",
    /_rebuild_from_type_v2/,
  );
  // One level (what torch writes for tensor subclasses) and a few more are fine.
  for (const levels of [0, 1, 6]) {
    const t = unpickle(rebuildChain(levels), SRC);
    assert(t instanceof TensorRef, `${levels} levels give a tensor`);
  }
});

Deno.test("hostile 11: ranks past the cap are refused before any per-dimension work", async () => {
  const rank = 100_000;
  const ones = new Array(rank).fill(1);
  const pkl = new PickleOps().proto().tensor("0", 1, ones, ones).done();
  await refused(
    () => Promise.resolve(unpickle(pkl, SRC)),
    LimitError,
    SRC.file,
    /tensor rank \(length of size\) exceeds bloom's limit \(expected at most 64, found 100000\)/,
  );
  // At the cap: a rank-64 view with size-1 dimensions gathers (non-contiguous) correctly.
  const shape = new Array(LIMITS.rank).fill(1);
  shape[3] = 3;
  shape[60] = 2;
  const stride = contiguousStrides(shape).map((s) => s * 2); // every other element
  const data = new Float32Array(12).map((_, i) => i);
  const ok = pthBytes(new PickleOps().proto().tensor("0", 12, shape, stride).done(), {
    "0": new Uint8Array(data.buffer),
  });
  using ck = await openPth(memorySource("rank64.pth", ok.bytes));
  assertEquals([...await ck.tensor("(root)").f32()], [0, 2, 4, 6, 8, 10]);
  // safetensors and npy hold the same cap.
  const st = `${TMP}/rank.safetensors`;
  const header = JSON.stringify({
    x: { dtype: "F32", shape: new Array(65).fill(1), data_offsets: [0, 4] },
  });
  const h = new TextEncoder().encode(header);
  const file = new Uint8Array(8 + h.length + 4);
  new DataView(file.buffer).setBigUint64(0, BigInt(h.length), true);
  file.set(h, 8);
  await Deno.writeFile(st, file);
  await refused(() => openSafetensors(st), LimitError, st, /rank \(length of shape\) exceeds/);
});

// --- 8. tar sizes --------------------------------------------------------------------------

/** A PAX extended header whose data is `body`, padded to a block. */
function paxBlock(body: string): Uint8Array {
  const b = new TextEncoder().encode(body);
  const pad = new Uint8Array((512 - (b.length % 512)) % 512);
  return concat(tarHeader({ name: "PaxHeader/a", size: b.length, type: "x" }), b, pad);
}

/** A PAX extended header holding `records` ("key=value") with their right lengths. */
function paxHeader(...records: string[]): Uint8Array {
  return paxBlock(
    records.map((r) => {
      let len = r.length + 3;
      while (`${len} ${r}\n`.length !== len) len = `${len} ${r}\n`.length;
      return `${len} ${r}\n`;
    }).join(""),
  );
}

/** A tar of one member with header fields as given and `data` after it. */
function tarWith(size: number | Uint8Array, data = new Uint8Array(512), type = "0") {
  return concat(tarHeader({ name: "a.png", size, type }), data, new Uint8Array(1024));
}

Deno.test("hostile 8: tar sizes that are huge, negative or past the file are TarFormatErrors naming the shard", async () => {
  const base256 = (bytes: number[]) =>
    Uint8Array.from([...new Array(12 - bytes.length).fill(0), ...bytes]);
  const cases: [string, Uint8Array, RegExp][] = [
    ["octal 8 GiB", tarWith(0o77777777777), /larger than the rest of the file/],
    [
      "base-256 negative",
      tarWith(new Uint8Array(12).fill(0xff)),
      /bad size field.*negative base-256/,
    ],
    [
      "base-256 past 2^53",
      tarWith(Uint8Array.from([0x80, ...new Array(11).fill(0xff)])),
      /past 2\^53/,
    ],
    [
      "base-256 1 GiB",
      tarWith(Uint8Array.from([0x80, ...base256([0x40, 0, 0, 0]).subarray(1)])),
      /larger than the rest/,
    ],
    ["bad octal", tarWith(new TextEncoder().encode("12345678x\0\0\0")), /bad size field/],
    ["PAX size -5", concat(paxHeader("size=-5"), tarWith(0)), /bad PAX size record/],
    ["PAX size 10^20", concat(paxHeader("size=1" + "0".repeat(20)), tarWith(0)), /bad PAX size/],
    ["PAX size 2^40", concat(paxHeader("size=1099511627776"), tarWith(0)), /larger than the rest/],
    [
      "PAX path 5000 chars",
      concat(paxHeader("path=" + "p".repeat(5000)), tarWith(0)),
      /member name exceeds/,
    ],
    ["PAX length 10^30", paxBlock("1" + "0".repeat(30) + " path=x\n"), /malformed PAX record/],
    ["PAX length short", paxBlock("3 path=x\n"), /malformed PAX record/],
  ];
  for (const [what, bytes, pattern] of cases) {
    const path = `${TMP}/${what.replace(/\W+/g, "_")}.tar`;
    await Deno.writeFile(path, bytes);
    const e = await refused(() => collect(readTarFile(path)), TarFormatError, path, pattern);
    assert(e instanceof CorruptFileError && e instanceof InputError, `${what}: in the family`);
    assert(/header at byte \d+/.test(e.message), `${what}: names the header's offset`);
  }
  // A stream of unknown size: the huge size is read for what arrives, and only that is held.
  const big = tarWith(0o77777777777, new Uint8Array(100_000));
  await refused(
    () => collect(readTar(chunks(big), { name: "stream.tar" })),
    TarFormatError,
    "stream.tar",
    /(truncated inside the entry|exceeds bloom's limit)/,
  );
  // A member past LIMITS.tarMemberBytes is refused before it is read, whatever the file holds.
  const over = tarWith(LIMITS.tarMemberBytes + 1, new Uint8Array(0));
  await refused(
    () => collect(readTar(chunks(over), { name: "over.tar", size: 2 ** 40 })),
    TarFormatError,
    "over.tar",
    /entry size exceeds bloom's limit/,
  );
});

// --- 12. table lookups and manifests ------------------------------------------------------

Deno.test("hostile 12: dtype names like 'constructor' are unknown dtypes, not Object's properties", async () => {
  for (const dtype of ["constructor", "__proto__", "toString", "hasOwnProperty"]) {
    const header = new TextEncoder().encode(
      JSON.stringify({ x: { dtype, shape: [1], data_offsets: [0, 4] } }),
    );
    const file = concat(new Uint8Array(8), header, new Uint8Array(4));
    new DataView(file.buffer).setBigUint64(0, BigInt(header.length), true);
    await refused(
      () => openSafetensors(memorySource(`st_${dtype}.safetensors`, file)),
      UnsupportedFormatError,
      `st_${dtype}.safetensors`,
      /unknown or unsupported dtype/,
    );
    const dict = `{'descr': '${dtype}', 'fortran_order': False, 'shape': (1,), }`;
    const npyHeader = new TextEncoder().encode(dict.padEnd(118) + "\n");
    const npy = concat(
      Uint8Array.of(0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, npyHeader.length, 0),
      npyHeader,
      new Uint8Array(8),
    );
    await refused(
      () => openNpy(memorySource(`npy_${dtype}.npy`, npy)),
      UnsupportedFormatError,
      `npy_${dtype}.npy`,
      /dtype not supported/,
    );
  }
  // A .pth storage persistent id naming torch.constructor is refused as a global, not looked up.
  const pkl = new PickleOps().proto().mark().str("storage").global("torch", "constructor")
    .str("0").str("cpu").int(1).tuple().binpersid().done();
  assertThrows(() => unpickle(pkl, SRC), CheckpointError, /torch\.constructor/);
});

Deno.test("hostile 12: manifests of null, without shards, or naming ../../x are InputErrors", async () => {
  const good = {
    format: "bloom-webdataset",
    version: 1,
    classes: ["a"],
    size: 224,
    counts: { train: { samples: 1, perClass: {} } },
    shards: [{ name: "train-000000.tar", split: "train", samples: 1, bytes: 1, sha256: "" }],
  };
  const cases: [string, unknown, RegExp][] = [
    ["null", null, /not a manifest/],
    ["array", [], /not a manifest/],
    ["no shards", { ...good, shards: undefined }, /'shards' must be a list/],
    ["shards null", { ...good, shards: null }, /'shards' must be a list/],
    ["counts missing", { ...good, counts: undefined }, /'counts' must be an object/],
    ["shard null", { ...good, shards: [null] }, /'shards\[0\]' must be an object/],
    ...["../../x.tar", "/etc/x.tar", "a/b.tar", "..\\x.tar", "x", "C:x.tar"].map((
      name,
    ) =>
      [`name ${name}`, { ...good, shards: [{ ...good.shards[0], name }] }, /shards\[0\]\.name/] as [
        string,
        unknown,
        RegExp,
      ]
    ),
    ["samples -1", { ...good, shards: [{ ...good.shards[0], samples: -1 }] }, /samples/],
  ];
  for (const [what, m, pattern] of cases) {
    const dir = `${TMP}/manifest_${what.replace(/\W+/g, "_")}`;
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(`${dir}/manifest.json`, JSON.stringify(m));
    const e = await assertRejects(() => readManifest(dir), InputError, pattern);
    assert(e.message.includes(`${dir}/manifest.json`), `${what}: names the file: ${e.message}`);
    assert(!(e instanceof TypeError), what);
  }
  const dir = `${TMP}/manifest_good`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/manifest.json`, JSON.stringify(good));
  assertEquals((await readManifest(dir)).shards[0].name, "train-000000.tar");
});

Deno.test("hostile: an unpickled tensor's shape tuple shared by many tensors stays cheap", () => {
  // One memoised 64-long size tuple used by 20,000 tensors: rank-capped, so linear.
  const p = new PickleOps().proto().global("torch._utils", "_rebuild_tensor_v2").put(0).pop();
  p.storage("0", 1).put(1).pop();
  p.mark();
  for (let i = 0; i < 64; i++) p.int(1);
  p.tuple().put(2).pop();
  p.emptyList();
  for (let i = 0; i < 20_000; i++) {
    p.get(0).mark().get(1).int(0).get(2).get(2).bool(false).emptyDict().tuple().reduce().append();
  }
  const t0 = performance.now();
  const v = unpickle(p.done(), SRC) as unknown[];
  assertEquals(v.length, 20_000);
  assert(performance.now() - t0 < 2000, "linear in the pickle");
  assert(!(v[0] instanceof PickleTuple));
});

// --- 2. block numbers past a gap, more of them than a call takes arguments -----------------

Deno.test("hostile 2: 250,000 block numbers past a gap are a missing block, not a RangeError", () => {
  // A 20 MB safetensors header holds this many keys; Math.max(...keys) overflowed the stack.
  const rec = (name: string, shape: number[]) => ({ name, shape, dtype: "f32", numel: 0 });
  const bb = new Map<string, unknown>([
    ["patch_embed.proj.weight", rec("patch_embed.proj.weight", [4, 3, 2, 2])],
    ["pos_embed", rec("pos_embed", [1, 5, 4])],
    ["blocks.0.mlp.fc1.weight", rec("blocks.0.mlp.fc1.weight", [8, 4])],
  ]);
  for (let i = 2; i < 250_002; i++) bb.set(`blocks.${i}.x`, rec(`blocks.${i}.x`, [0]));
  assertThrows(
    () => inferConfig("many_blocks.safetensors", bb as Map<string, TensorRecord>),
    MissingKeyError,
    "many_blocks.safetensors: blocks.1.*: transformer blocks are missing before a later block " +
      "(expected every block 0..250001",
  );
});

// --- the caps table of data/README.md --------------------------------------------------------

Deno.test("caps: data/README.md's table states the limits the code enforces", async () => {
  const readme = await Deno.readTextFile(new URL("../data/README.md", import.meta.url));
  const caps = readme.slice(readme.indexOf("\n## Caps\n"), readme.indexOf("\n## Fixtures\n"));
  const table = new Map(
    caps.split("\n").filter((l) => /^\| (?!-)/.test(l)).map((l) => {
      const [cap, limit] = l.split("|").slice(1, 3).map((c) => c.trim());
      return [cap, limit];
    }),
  );
  const n = (v: number) => v.toLocaleString("en-US");
  const expected: [string, string][] = [
    ["allocation budget", `${LIMITS.budgetFixed >> 20} MiB + ${LIMITS.budgetPerByte} × bytes`],
    ["tensor name (dict keys joined by `.`)", `${n(LIMITS.nameChars)} characters`],
    ["container nesting", `${LIMITS.nesting} levels`],
    ["tensor rank", `${LIMITS.rank}`],
    ["`_rebuild_from_type_v2` nesting", `${LIMITS.rebuildNesting} levels`],
    ["storage key", `${LIMITS.storageKeyChars} characters`],
    ["all tensors of a file together", "the allocation budget"],
    ["deflated entry, inflated", "the allocation budget"],
    ["safetensors header", `${n(MAX_HEADER_BYTES)} bytes`],
    ["tar member", `${LIMITS.tarMemberBytes >> 20} MiB, and the file left`],
    ["tar member path (PAX, GNU)", `${n(LIMITS.pathChars)} characters`],
    ["image pixels (any decoder)", `${n(MAX_IMAGE_PIXELS)} (2^${Math.log2(MAX_IMAGE_PIXELS)})`],
    ["image file read", `${MAX_IMAGE_FILE_BYTES >> 20} MiB`],
    ["RLE BMP pixels per byte of stream", `${RLE_MAX_PIXELS_PER_BYTE}`],
    ["pixel memory of all decodes at once", `${PIXEL_BUDGET.total / 2 ** 30} GiB, leased`],
    ["VOC annotation file", `${MAX_ANNOTATION_BYTES >> 20} MiB, ${MAX_XML_DEPTH} levels deep`],
  ];
  for (const [cap, limit] of expected) assertEquals([cap, table.get(cap)], [cap, limit]);
  assertEquals(table.size - 1, expected.length, "every row of the table is checked (and the head)");
  const V = VIT_LIMITS;
  const vit = `dim ${n(V.dim)}, depth ${V.depth}, heads ${V.heads}, MLP width ` +
    `${n(V.mlpHidden)}, patch ${V.patch}, registers ${V.registers}, position grid ${V.posGrid}`;
  assert(readme.replace(/\s+/g, " ").includes(`(\`VIT_LIMITS\`: ${vit})`), vit);
});

/** A safetensors file of one tensor `x` whose header entry is `entry`. */
function safetensorsWith(entry: Record<string, unknown>, dataBytes = 4): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(entry));
  const file = new Uint8Array(8 + h.length + dataBytes);
  new DataView(file.buffer).setBigUint64(0, BigInt(h.length), true);
  file.set(h, 8);
  return file;
}

/** An .npy (v1) whose header dict is `dict`, then `data`. */
function npyWith(dict: string, data = new Uint8Array(8)): Uint8Array {
  const pad = 64 * Math.ceil((10 + dict.length + 1) / 64) - 10;
  const header = new TextEncoder().encode(dict.padEnd(pad - 1) + "\n");
  const pre = Uint8Array.of(0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 0, 0);
  new DataView(pre.buffer).setUint16(8, header.length, true);
  return concat(pre, header, data);
}

Deno.test("caps: a file past each remaining cap is refused, naming the file, the field and the limit", async () => {
  // Tensor name (safetensors): 1,025 characters.
  const long = "n".repeat(LIMITS.nameChars + 1);
  await refused(
    () =>
      openSafetensors(
        memorySource(
          "name.safetensors",
          safetensorsWith({ [long]: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }),
        ),
      ),
    LimitError,
    "name.safetensors",
    /nnnn…: tensor name length exceeds bloom's limit \(expected at most 1024, found 1025\)/,
  );
  // Rank (npy): 65 dimensions, while 64 read.
  const npyOfRank = (rank: number) =>
    npyWith(`{'descr': '<f4', 'fortran_order': False, 'shape': (${"1, ".repeat(rank)}), }`);
  await refused(
    () => openNpy(memorySource("rank.npy", npyOfRank(LIMITS.rank + 1))),
    LimitError,
    "rank.npy",
    /shape: rank exceeds bloom's limit \(expected at most 64, found 65\)/,
  );
  using npy = await openNpy(memorySource("rank64.npy", npyOfRank(LIMITS.rank)));
  assertEquals([...npy.tensors.values()][0].shape.length, LIMITS.rank);
  // Storage key (.pth): 257 characters.
  const key = "7".repeat(LIMITS.storageKeyChars + 1);
  await refused(
    () =>
      openPth(
        memorySource(
          "key.pth",
          pthBytes(new PickleOps().proto().tensor(key, 1, [1]).done(), { [key]: f32(1) }).bytes,
        ),
      ),
    LimitError,
    "key.pth",
    /length of a storage key exceeds bloom's limit \(expected at most 256, found 257\)/,
  );
  // All tensors together (.pth): stride-0 views of one float, each as large as the file.
  const views = (count: number) => {
    const p = new PickleOps().proto().global("torch._utils", "_rebuild_tensor_v2").put(0).pop();
    p.storage("0", 1).put(1).pop();
    p.mark().int(250_000).tuple().put(2).pop().mark().int(0).tuple().put(3).pop();
    p.emptyList();
    for (let i = 0; i < count; i++) {
      p.get(0).mark().get(1).int(0).get(2).get(3).bool(false).emptyDict().tuple().reduce()
        .append();
    }
    // 1 MiB of padding makes each 1,000,000-byte view fit the file on its own.
    return pthBytes(p.done(), { "0": f32(1), pad: new Uint8Array(1 << 20) }).bytes;
  };
  // Budget: 64 MiB + 48 × ~1.05 MB ≈ 117.6 MB, so 100 views fit and 200 do not.
  using fits = await openPth(memorySource("views100.pth", views(100)));
  assertEquals(fits.tensors.size, 100);
  await refused(
    () => openPth(memorySource("views200.pth", views(200))),
    LimitError,
    "views200.pth",
    /: bytes of all tensors together exceeds bloom's limit \(expected at most \d+, found \d+\)/,
  );
  // Deflated entry (zip): its stated size past the budget of a 200-byte file.
  const z = zipBytes([{ name: "archive/data.pkl", data: new Uint8Array(100), deflate: true }]);
  new DataView(z.bytes.buffer).setUint32(z.entries[0].central + 24, 200 << 20, true);
  await refused(
    () => ZipReader.open(memorySource("inflate.pth", z.bytes)),
    LimitError,
    "inflate.pth",
    /archive\/data\.pkl: deflated entry inflates past bloom's limit for this file \(expected at most \d+ bytes/,
  );
  // Safetensors header: 150 MB claimed in a (virtual) 200 MB file; nothing but 8 bytes is read.
  const head = new Uint8Array(8);
  new DataView(head.buffer).setBigUint64(0, 150_000_000n, true);
  const huge = {
    name: "header.safetensors",
    size: 200_000_000,
    read(offset: number, into: Uint8Array) {
      into.set(head.subarray(offset, offset + into.length));
      return Promise.resolve(into.length);
    },
  };
  await refused(
    () => openSafetensors(huge),
    LimitError,
    "header.safetensors",
    /header length: safetensors header exceeds bloom's limit \(expected at most 100000000, found 150000000\)/,
  );
  // Tar member path (GNU long name): 5,000 characters; the tar reader's errors skip the shard.
  const name = new TextEncoder().encode("p".repeat(5000));
  const gnu = concat(
    tarHeader({ name: "././@LongLink", size: name.length, type: "L" }),
    name,
    new Uint8Array(512 - (name.length % 512)),
    tarHeader({ name: "a.png", size: 0 }),
    new Uint8Array(1024),
  );
  await refused(
    () => collect(readTar(chunks(gnu), { name: "gnu.tar", size: gnu.length })),
    TarFormatError,
    "gnu.tar",
    /member name exceeds bloom's limit \(expected at most 4096, found 5000\)/,
  );
  // Model depth: blocks 0..128 all present (129 > VIT_LIMITS.depth), before any parameter.
  const deep = `${TMP}/deep.safetensors`;
  await Deno.writeFile(deep, encodeSafetensors(deep, tinyBackbone({}, VIT_LIMITS.depth + 1)));
  await refused(
    () => openCheckpoint(deep),
    LimitError,
    deep,
    /depth: expected an integer in 1\.\.128, found 129/,
  );
});

// --- 12. small atomic writes fsync the file and its folder ------------------------------------

/** Whether strace can trace a child here (installed, and ptrace allowed). */
const CAN_STRACE = (() => {
  if (Deno.build.os !== "linux") return false;
  try {
    return new Deno.Command("strace", { args: ["-f", "-qq", "-e", "trace=none", "true"] })
      .outputSync().success;
  } catch {
    return false;
  }
})();

/**
 * The file syscalls of `strace -f` output in order: which path each fsync
 * or fdatasync flushed (fds followed through openat and F_DUPFD), and each
 * rename.
 */
function fileEvents(log: string): ({ sync: string } | { from: string; to: string })[] {
  const fds = new Map<number, string>();
  const pending = new Map<string, string>();
  const out: ({ sync: string } | { from: string; to: string })[] = [];
  for (const raw of log.split("\n")) {
    const m = /^(\d+)\s+(.*)$/.exec(raw);
    if (!m) continue;
    let call = m[2];
    // A call split by another thread's: "<unfinished ...>" now, "<... X resumed>" later.
    if (call.endsWith("<unfinished ...>")) {
      pending.set(m[1], call.slice(0, -"<unfinished ...>".length).trimEnd());
      continue;
    }
    const resumed = /^<\.\.\. \w+ resumed>(.*)$/.exec(call);
    if (resumed) call = (pending.get(m[1]) ?? "") + resumed[1];
    let r: RegExpExecArray | null;
    if ((r = /^open(?:at)?\((?:AT_FDCWD, )?"([^"]*)".*= (\d+)$/.exec(call))) {
      fds.set(Number(r[2]), r[1]);
    } else if ((r = /^(?:fcntl\((\d+), F_DUPFD\w*|dup[23]?\((\d+)).*= (\d+)$/.exec(call))) {
      fds.set(Number(r[3]), fds.get(Number(r[1] ?? r[2])) ?? "?");
    } else if ((r = /^f(?:data)?sync\((\d+)\)\s+= 0$/.exec(call))) {
      out.push({ sync: fds.get(Number(r[1])) ?? "?" });
    } else if (
      (r = /^rename(?:at2?)?\((?:AT_FDCWD, )?"([^"]*)", (?:AT_FDCWD, )?"([^"]*)".*= 0$/.exec(call))
    ) {
      out.push({ from: r[1], to: r[2] });
    }
  }
  return out;
}

Deno.test({
  name: "hostile 12: atomic writes fsync the file before the rename and its folder after it",
  ignore: !CAN_STRACE,
  fn: async () => {
    const dir = `${TMP}/durable`;
    await Deno.mkdir(dir);
    const url = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
    const script = `${TMP}/durable.ts`;
    await Deno.writeTextFile(
      script,
      `import { writeTextAtomic } from ${url("../data/file.ts")};
import { writeSafetensors } from ${url("../data/safetensors.ts")};
const dir = Deno.args[0];
await writeTextAtomic(dir + "/manifest.json", "{}\\n");
await writeSafetensors(dir + "/w.safetensors", { x: { dtype: "f32", shape: [2], data: new Float32Array(2) } });
`,
    );
    const log = `${TMP}/durable.strace`;
    const r = await new Deno.Command("strace", {
      args: [
        "-f",
        "-qq",
        "-o",
        log,
        "-e",
        "trace=open,openat,fsync,fdatasync,rename,renameat,renameat2,fcntl,dup,dup2,dup3",
        Deno.execPath(),
        "run",
        "--no-config",
        "-A",
        script,
        dir,
      ],
      stderr: "piped",
    }).output();
    assert(r.success, new TextDecoder().decode(r.stderr));
    const events = fileEvents(await Deno.readTextFile(log));
    for (const file of [`${dir}/manifest.json`, `${dir}/w.safetensors`]) {
      const at = events.findIndex((e) => "to" in e && e.to === file);
      assert(at >= 0, `${file} is renamed into place: ${JSON.stringify(events)}`);
      assertEquals((events[at] as { from: string }).from, `${file}.tmp`);
      assert(
        events.slice(0, at).some((e) => "sync" in e && e.sync === `${file}.tmp`),
        `${file}.tmp is flushed before its rename`,
      );
      assert(
        events.slice(at + 1).some((e) => "sync" in e && e.sync === dir),
        `${dir} is flushed after the rename of ${file}`,
      );
    }
  },
});
