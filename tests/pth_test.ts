/**
 * .pth checkpoints: torch 1.13's own files (every dtype, views sharing a
 * storage, an OrderedDict with _metadata, {"teacher": …}, protocol 4,
 * parameters) read exactly; bloom-written files read back exactly, by bloom
 * and by torch.load(weights_only=True) in a subprocess when torch is there;
 * the zip layer (ZIP64, deflate, alignment, entry names); and every bad file
 * failing with the right CheckpointError naming the file and the key.
 */
import { fromFloat32, toFloat32 } from "../data/dtypes.ts";
import {
  CheckpointError,
  CorruptFileError,
  InvalidTensorError,
  MissingKeyError,
  UnsafeFileError,
  UnsupportedFormatError,
} from "../data/errors.ts";
import { withPrefix } from "../data/open.ts";
import { openPth, PthDict, PthTensor } from "../data/pth.ts";
import { writePth } from "../data/pth_writer.ts";
import type { TensorData, TensorRecord } from "../data/record.ts";
import { checkEntryName, ZipReader } from "../data/zip.ts";
import { ZipWriter } from "../data/zip_writer.ts";
import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { moduleTempDir, Rng } from "./helpers.ts";
import { CHECKPOINT_FIXTURES, checkpointFixturesExpected, hex, num } from "./fixtures.ts";

const FIX = CHECKPOINT_FIXTURES;
const EXPECTED = checkpointFixturesExpected();
const TMP = moduleTempDir("bloom-pth-test-");

interface Expected {
  dtype: string;
  shape: number[];
  hex: string;
  values: (number | string)[];
}

/** Exact comparison: raw bytes by hex, f32 values with zero tolerance (the conversion is exact). */
async function checkTensor(t: TensorRecord, e: Expected, what: string) {
  assertEquals([t.dtype, [...t.shape]], [e.dtype, e.shape], `${what}: dtype and shape`);
  assertEquals(hex(await t.bytes()), e.hex, `${what}: bytes`);
  assertClose(await t.f32(), e.values.map(num), { rtol: 0, atol: 0 }, `${what}: f32 values`);
}

for (const name of ["state_dict.pth", "teacher.pth", "teacher_p4.pth", "parameter.pth"]) {
  Deno.test(`pth: torch 1.13 fixture ${name} reads exactly`, async () => {
    const exp = EXPECTED[name].tensors as Record<string, Expected>;
    using ckpt = await openPth(FIX + name);
    assertEquals([...ckpt.tensors.keys()], Object.keys(exp), "tensor names in file order");
    for (const [key, e] of Object.entries(exp)) await checkTensor(ckpt.tensor(key), e, key);
  });
}

Deno.test("pth: shared storages, views and OrderedDict metadata", async () => {
  using ckpt = await openPth(FIX + "state_dict.pth");
  const root = ckpt.root as PthDict;
  assert(root instanceof PthDict && root.ordered, "state_dict() is an OrderedDict");
  assertEquals(ckpt.archiveName, "state_dict");
  const w = ckpt.tensor("weight") as PthTensor;
  const wt = ckpt.tensor("weight_t") as PthTensor;
  const col = ckpt.tensor("col") as PthTensor;
  assertEquals([wt.storageKey, col.storageKey], [w.storageKey, w.storageKey], "one shared storage");
  assertEquals([wt.stride, col.stride, col.storageOffset], [[1, 4], [4], 2]);
  assertEquals((ckpt.tensor("expanded") as PthTensor).stride, [0, 1]);
  // _metadata survives as the OrderedDict's state.
  const meta = (root.state as Map<string, unknown>).get("_metadata") as Map<
    string,
    Map<string, number>
  >;
  assertEquals(meta.get("lin")?.get("version"), 2);
});

Deno.test("pth: parameters and scalars", async () => {
  using ckpt = await openPth(FIX + "parameter.pth");
  assertEquals((ckpt.tensor("w") as PthTensor).requiresGrad, true);
  assertEquals((ckpt.tensor("b") as PthTensor).requiresGrad, false);
  const root = ckpt.root as PthDict;
  assertEquals(
    ["step", "big", "neg", "name", "lr", "tags", "pair", "none", "flag"].map((k) => root.get(k)),
    [7, 2 ** 40, -3, "bloom", 0.5, ["a", "b"], [1, 2], null, true],
  );
});

Deno.test("pth: DinoBloom layout — teacher.backbone prefix, helpful missing-key error", async () => {
  using ckpt = await openPth(FIX + "teacher.pth");
  const backbone = withPrefix(ckpt.tensors, "teacher.backbone.");
  assertEquals([...backbone.keys()], ["cls_token", "pos_embed", "blocks.0.norm1.weight"]);
  const e = assertThrows(
    () => ckpt.tensor("cls_token"),
    MissingKeyError,
    /did you mean 'teacher\.backbone\.cls_token'/,
  );
  assert(e.message.includes(FIX + "teacher.pth"));
});

Deno.test("pth: tensor bytes are read lazily, from the open file", async () => {
  const ckpt = await openPth(FIX + "teacher.pth");
  const t = ckpt.tensor("teacher.backbone.pos_embed");
  assertEquals((await t.f32()).length, 40);
  ckpt.close();
  // Nothing was preloaded: after close, reading needs the file and fails cleanly.
  await assertRejects(() => t.bytes(), CheckpointError, /read after the file was closed/);
});

Deno.test("pth: concurrent reads of many tensors (seek + read is serialised per file)", async () => {
  const exp = EXPECTED["state_dict.pth"].tensors as Record<string, Expected>;
  using ckpt = await openPth(FIX + "state_dict.pth");
  const names = Object.keys(exp);
  const all = await Promise.all(
    names.flatMap((k) => [ckpt.tensor(k).bytes(), ckpt.tensor(k).bytes()]),
  );
  names.forEach((k, i) => {
    assertEquals(hex(all[2 * i]), exp[k].hex, k);
    assertEquals(hex(all[2 * i + 1]), exp[k].hex, k);
  });
});

/** Tensors of every dtype, as a writer takes them. */
function sampleTensors(rng: Rng): Record<string, TensorData> {
  const f = (n: number) => rng.normals(n, 3);
  return {
    f32: { dtype: "f32", shape: [3, 4], data: f(12) },
    f64: { dtype: "f64", shape: [2], data: Float64Array.from([1 / 3, -1e300]) },
    f16: { dtype: "f16", shape: [5], data: f(5) }, // converted from f32
    bf16: { dtype: "bf16", shape: [2, 2], data: f(4) }, // converted from f32
    i64: { dtype: "i64", shape: [3], data: BigInt64Array.from([0n, -(2n ** 40n), 2n ** 62n]) },
    i32: { dtype: "i32", shape: [2], data: Int32Array.from([-7, 2 ** 31 - 1]) },
    i16: { dtype: "i16", shape: [2], data: Int16Array.from([-300, 300]) },
    i8: { dtype: "i8", shape: [2], data: Int8Array.from([-128, 5]) },
    u8: { dtype: "u8", shape: [3], data: Uint8Array.from([0, 9, 255]) },
    bool: { dtype: "bool", shape: [2], data: Uint8Array.from([1, 0]) },
    scalar: { dtype: "f32", shape: [], data: Float32Array.of(2.5) },
    empty: { dtype: "f32", shape: [0, 4], data: new Float32Array(0) },
  };
}

/** The bytes a TensorData stands for (what every reader must give back). */
function expectedBytes(t: TensorData): Uint8Array {
  if (t.data instanceof Float32Array && t.dtype !== "f32") return fromFloat32(t.data, t.dtype);
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

Deno.test("pth writer: bloom's checkpoints read back exactly (dict, OrderedDict, shared tensors, scalars)", async () => {
  const tensors = sampleTensors(new Rng(1));
  const shared = tensors.f32;
  for (const zip64 of ["auto", "always"] as const) {
    const path = `${TMP}/roundtrip_${zip64}.pth`;
    await writePth(path, {
      teacher: new Map(Object.entries({ ...tensors, again: shared })),
      step: 3,
      lr: 0.25,
      name: "bloom",
      tags: [1, "x", null, true],
    }, { zip64 });
    using ckpt = await openPth(path);
    assertEquals(ckpt.archiveName, "archive");
    const root = ckpt.root as PthDict;
    assert(
      !root.ordered && (root.get("teacher") as PthDict).ordered,
      "plain object → dict, Map → OrderedDict",
    );
    assertEquals(["step", "lr", "name", "tags"].map((k) => root.get(k)), [3, 0.25, "bloom", [
      1,
      "x",
      null,
      true,
    ]]);
    for (const [k, t] of Object.entries(tensors)) {
      const r = ckpt.tensor(`teacher.${k}`);
      assertEquals([r.dtype, [...r.shape]], [t.dtype, [...t.shape]], k);
      assertEquals(hex(await r.bytes()), hex(expectedBytes(t)), `${k} (${zip64})`);
    }
    // The same object twice is stored once and shared, as torch.save shares storages.
    const a = ckpt.tensor("teacher.f32") as PthTensor;
    const b = ckpt.tensor("teacher.again") as PthTensor;
    assertEquals(a.storageKey, b.storageKey);
    // torch aligns every entry's data to 64 bytes; so does bloom.
    using zip = await ZipReader.open(path);
    for (const e of zip.entries) assertEquals((await zip.dataOffset(e)) % 64, 0, e.name);
  }
});

Deno.test("pth writer: converting a checkpoint streams records from another file", async () => {
  using src = await openPth(FIX + "state_dict.pth");
  const path = `${TMP}/converted.pth`;
  await writePth(path, new Map(src.tensors));
  using out = await openPth(path);
  for (const [k, t] of src.tensors) {
    assertEquals(hex(await out.tensor(k).bytes()), hex(await t.bytes()), k);
  }
  // Views were saved contiguous: weight_t is its own [4, 3] tensor now.
  assertEquals((out.tensor("weight_t") as PthTensor).stride, [3, 1]);
});

Deno.test("pth writer: bad input is refused before anything is written", async () => {
  const path = `${TMP}/bad.pth`;
  const bad = async (tree: Parameters<typeof writePth>[1], pattern: RegExp) => {
    const e = await assertRejects(() => writePth(path, tree), InvalidTensorError, pattern);
    assert(e.message.includes(path), e.message);
    await assertRejects(() => Deno.stat(path), Deno.errors.NotFound);
    await assertRejects(() => Deno.stat(`${path}.tmp`), Deno.errors.NotFound);
  };
  await bad(
    { a: { b: { dtype: "f32", shape: [2, 2], data: new Float32Array(3) } } },
    /a\.b: data length/,
  );
  await bad(
    { x: { dtype: "f8" as "f32", shape: [1], data: new Float32Array(1) } },
    /x: unknown dtype/,
  );
  await bad({ x: { dtype: "i32", shape: [1.5], data: new Int32Array(1) } }, /x: bad shape/);
  await bad(
    { x: { dtype: "i32", shape: [2], data: new Float64Array(2) } },
    /x: data array does not match/,
  );
  await bad({ x: new Float32Array(2) as unknown as number }, /x: a bare typed array/);
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  await bad(cyclic as never, /self: tree is cyclic/);
  await bad({ n: 2 ** 60 }, /n: number cannot be pickled exactly/);
});

/** Runs the torch oracle on bloom-written files: loads each, prints flattened tensors and scalars. */
const TORCH_ORACLE = `
import json, sys, zipfile, numpy as np, torch
DT = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
      torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
      torch.uint8: "u8", torch.bool: "bool"}
def flat(o, pre, out):
    if isinstance(o, dict):
        for k, v in o.items(): flat(v, f"{pre}.{k}" if pre else k, out)
    elif isinstance(o, torch.Tensor):
        c = o.contiguous()
        out[pre] = {"dtype": DT[o.dtype], "shape": list(o.shape), "type": type(o).__name__,
                    "hex": c.reshape(-1).view(torch.uint8).numpy().tobytes().hex() if c.numel() else ""}
    else:
        out[pre] = o
res = {}
for path, weights_only in zip(sys.argv[1::2], sys.argv[2::2]):
    assert zipfile.ZipFile(path).testzip() is None, "CRC check"
    obj = torch.load(path, weights_only=weights_only == "1")
    out = {}
    flat(obj, "", out)
    res[path] = {"tensors": out, "types": {k: type(v).__name__ for k, v in obj.items()}}
# How torch itself rounds float32 to each dtype (the writer's conversions must agree).
vals = torch.from_numpy(np.frombuffer(bytes.fromhex(sys.stdin.read()), dtype="<f4").copy())
res["conversions"] = {name: vals.to(dt).contiguous().view(torch.uint8).numpy().tobytes().hex()
                      for dt, name in [(torch.float16, "f16"), (torch.bfloat16, "bf16"), (torch.float64, "f64")]}
res["int_conversions"] = {name: vals.clamp(-100, 100).to(dt).contiguous().view(torch.uint8).numpy().tobytes().hex()
                          for dt, name in [(torch.int64, "i64"), (torch.int32, "i32"), (torch.int16, "i16"), (torch.int8, "i8")]}
print(json.dumps(res))
`;

/**
 * Runs `script` with Debian's python3, `input` on stdin; parses its stdout as
 * JSON. Null when python3 or torch is missing (the caller skips); throws on any
 * other failure.
 */
// deno-lint-ignore no-explicit-any -- the oracle's JSON; the test asserts its shape field by field
async function runPython(script: string, args: string[], input: string): Promise<any> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("/usr/bin/python3", {
      args: ["-c", script, ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch {
    return null;
  }
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(input));
  await w.close();
  const out = await child.output();
  const err = new TextDecoder().decode(out.stderr);
  if (!out.success && /No module named '(torch|numpy)'/.test(err)) return null;
  assert(out.success, err);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** f32 values probing rounding: ties, subnormals, overflow, specials, and random values. */
function conversionProbe(): Float32Array {
  const specials = [
    0.1,
    -2.5,
    65504,
    65519.99,
    65520,
    1e6,
    1e-8,
    3e-8,
    2 ** -25,
    3 * 2 ** -26,
    6.1e-5,
    6.09e-5,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
    -(1 + 2 ** -11),
    1 + 2 ** -8,
    1 + 3 * 2 ** -8,
    3.3895e38,
    3.4028234e38,
    1e-40,
    -0,
    0,
    Infinity,
    -Infinity,
    NaN,
  ];
  const rng = new Rng(7);
  return Float32Array.from([...specials, ...rng.normals(200, 50)]);
}

Deno.test("pth: torch.load(weights_only=True) reads bloom's checkpoints; conversions match torch", async (t) => {
  const tensors = sampleTensors(new Rng(2));
  const files: [string, string][] = [];
  for (const zip64 of ["auto", "always"] as const) {
    const path = `${TMP}/oracle_${zip64}.pth`;
    // torch 1.13's weights_only unpickler has no BINFLOAT: no float scalars in these.
    await writePth(path, {
      teacher: new Map(Object.entries(tensors)),
      step: 3,
      name: "bloom",
      big: 2 ** 40,
    }, {
      zip64,
    });
    files.push([path, "1"]);
  }
  const plain = `${TMP}/oracle_plain.pth`;
  await writePth(plain, { w: tensors.f32, lr: 0.25, tags: ["a", 1] });
  files.push([plain, "0"]);

  const probe = conversionProbe();
  // One python process (importing torch is the slow part); probing for torch first would import it twice.
  const res = await runPython(TORCH_ORACLE, files.flat(), hex(new Uint8Array(probe.buffer)));
  if (res === null) {
    await t.step({ name: "python3 with torch not available: skipped", ignore: true, fn: () => {} });
    return;
  }

  for (const [path] of files.slice(0, 2)) {
    const got = res[path].tensors;
    for (const [k, t] of Object.entries(tensors)) {
      assertEquals(got[`teacher.${k}`].dtype, t.dtype, `${path} ${k} dtype`);
      assertEquals(got[`teacher.${k}`].shape, [...t.shape], `${path} ${k} shape`);
      assertEquals(got[`teacher.${k}`].hex, hex(expectedBytes(t)), `${path} ${k} bytes`);
    }
    assertEquals([got.step, got.name, got.big], [3, "bloom", 2 ** 40]);
    assertEquals(res[path].types.teacher, "OrderedDict");
  }
  assertEquals(res[plain].tensors.lr, 0.25);
  assertEquals(res[plain].tensors.tags, ["a", 1]);

  // Every element must match torch's bits, except that torch's vectorised bf16 path writes NaN
  // as 0xffff where its scalar path (and bloom) write 0x7fc0: both are NaN, checked as such.
  const nanAt = [...probe].findIndex(Number.isNaN);
  const unhex = (h: string) => Uint8Array.from(h.match(/../g)!.map((x) => parseInt(x, 16)));
  for (const dt of ["f16", "bf16", "f64"] as const) {
    const ours = fromFloat32(probe, dt);
    const theirs = unhex(res.conversions[dt]);
    const k = ours.length / probe.length;
    const cut = (b: Uint8Array) => hex(b.subarray(0, nanAt * k)) + hex(b.subarray((nanAt + 1) * k));
    assertEquals(cut(ours), cut(theirs), `f32 → ${dt} rounding`);
    const nan = (b: Uint8Array) => toFloat32(b.slice(nanAt * k, (nanAt + 1) * k), dt)[0];
    assert(Number.isNaN(nan(ours)) && Number.isNaN(nan(theirs)), `${dt}: NaN stays NaN`);
  }
  // Integers from floats truncate toward zero like torch's casts (in range; torch's NaN → int
  // is undefined behaviour, so the NaN element is left out).
  const clamped = probe.map((v) => Math.min(100, Math.max(-100, v)));
  for (const dt of ["i64", "i32", "i16", "i8"] as const) {
    const ours = fromFloat32(clamped, dt);
    const theirs = unhex(res.int_conversions[dt]);
    const k = ours.length / probe.length;
    const cut = (b: Uint8Array) => hex(b.subarray(0, nanAt * k)) + hex(b.subarray((nanAt + 1) * k));
    assertEquals(cut(ours), cut(theirs), `f32 → ${dt} truncation`);
  }
});

Deno.test("pth: bad files fail with a CheckpointError naming the file and the key", async () => {
  const check = async (path: string, cls: typeof CheckpointError, pattern: RegExp, key: string) => {
    const e = await assertRejects(() => openPth(path), cls, pattern);
    assert(e.message.includes(path), `names the file: ${e.message}`);
    assert(e.message.includes(key), `names ${key}: ${e.message}`);
  };
  await check(
    FIX + "forbidden_global.pth",
    UnsafeFileError,
    /forbidden global os\.system/,
    "archive/data.pkl",
  );
  await check(FIX + "missing_storage.pth", MissingKeyError, /storage is missing/, "archive/data/1");
  await check(
    FIX + "stride_overflow.pth",
    CorruptFileError,
    /size × stride needs more elements/,
    "bad",
  );
  await check(
    FIX + "traversal.pth",
    UnsafeFileError,
    /leave the archive/,
    "archive/../../escape.txt",
  );

  const good = Deno.readFileSync(FIX + "state_dict.pth");
  const write = (name: string, bytes: Uint8Array) => {
    Deno.writeFileSync(`${TMP}/${name}`, bytes);
    return `${TMP}/${name}`;
  };
  // Truncated archive: the end records are gone.
  await check(
    write("truncated.pth", good.subarray(0, good.length >> 1)),
    CorruptFileError,
    /end-of-central-directory/,
    "zip directory",
  );
  await check(
    write("empty.pth", new Uint8Array(0)),
    CorruptFileError,
    /not a PyTorch zip checkpoint/,
    "file header",
  );
  await check(
    write("legacy.pth", Uint8Array.of(0x80, 0x02, 0x8a, 0x0a)),
    UnsupportedFormatError,
    /legacy torch\.save/,
    "file header",
  );
  await check(
    `${TMP}/does-not-exist.pth`,
    CheckpointError,
    /cannot open the file/,
    "does-not-exist",
  );
  // A flipped byte inside data.pkl: the CRC catches it before the unpickler sees it.
  const pkl = good.indexOf(0x80, 60);
  const flipped = good.slice();
  flipped[pkl + 3] ^= 0xff;
  await check(
    write("flipped.pth", flipped),
    CorruptFileError,
    /CRC-32 mismatch/,
    "state_dict/data.pkl",
  );
  // A damaged storage is caught on its first read (every entry is CRC-checked as it is read).
  const dmg = good.slice();
  using zip = await ZipReader.open(FIX + "state_dict.pth");
  dmg[await zip.dataOffset(zip.require("state_dict/data/10"))] ^= 1;
  const path = write("damaged_storage.pth", dmg);
  using ckpt = await openPth(path);
  await assertRejects(
    () => ckpt.tensor("weight_t").bytes(),
    CorruptFileError,
    /state_dict\/data\/10: CRC-32 mismatch/,
  );
});

Deno.test("zip: deflated entries, ranges, and names that leave the archive", async () => {
  using zip = await ZipReader.open(FIX + "deflated.zip");
  const exp = EXPECTED["deflated.zip"] as Record<string, string>;
  assertEquals(zip.entries.map((e) => e.name), Object.keys(exp));
  for (const [name, h] of Object.entries(exp)) assertEquals(hex(await zip.read(name)), h, name);
  assertEquals(zip.require("notes/hello.txt").method, 8);
  assertEquals([...(await zip.readRange(zip.require("raw.bin"), 3, 4))], [3, 4, 5, 6]);
  await assertRejects(
    () => zip.readRange(zip.require("raw.bin"), 14, 4),
    CorruptFileError,
    /raw\.bin: range lies outside/,
  );
  assertThrows(() => zip.require("nope"), MissingKeyError, /nope: entry missing/);
  for (const bad of ["../x", "a/../../x", "/etc/passwd", "a\\b", "C:/x", "", "a\0b"]) {
    assertThrows(
      () => checkEntryName("f.zip", bad),
      UnsafeFileError,
      /f\.zip: .*leave the archive/,
    );
  }
  checkEntryName("f.zip", "archive/.data/version"); // dots inside names are fine
});

Deno.test("zip writer: ZIP64 records, alignment, and refusing bad names", async () => {
  const path = `${TMP}/z.zip`;
  const zw = await ZipWriter.create(path, { zip64: "always", align: 64 });
  await zw.add("a/one", Uint8Array.of(1, 2, 3));
  await zw.add("a/two", Uint8Array.of(4), Uint8Array.of(5, 6));
  await assertRejects(
    () => zw.add("a/one", new Uint8Array(1)),
    InvalidTensorError,
    /a\/one: zip entry written twice/,
  );
  await assertRejects(
    () => zw.add("../up", new Uint8Array(1)),
    UnsafeFileError,
    /leave the archive/,
  );
  await zw.finish();
  const bytes = Deno.readFileSync(path);
  const dv = new DataView(bytes.buffer);
  // EOCD saturated, ZIP64 end record and locator present.
  assertEquals(dv.getUint32(bytes.length - 22, true), 0x06054b50);
  assertEquals(dv.getUint32(bytes.length - 22 + 16, true), 0xffffffff);
  assertEquals(dv.getUint32(bytes.length - 42, true), 0x07064b50);
  using zip = await ZipReader.open(path);
  assertEquals([...(await zip.read("a/two"))], [4, 5, 6]);
  for (const e of zip.entries) assertEquals((await zip.dataOffset(e)) % 64, 0);
});
