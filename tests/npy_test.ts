/**
 * .npy: numpy's own files (v1.0 and v2.0, every supported dtype) read
 * exactly, bloom-written arrays and streamed [N, D] matrices loaded by
 * np.load in a subprocess, and bad headers failing with a CheckpointError
 * that names the file and the field.
 */
import { fromFloat32 } from "../data/dtypes.ts";
import {
  CheckpointError,
  CorruptFileError,
  InvalidTensorError,
  UnsupportedFormatError,
} from "../data/errors.ts";
import { createNpyWriter, openNpy, readNpy, writeNpy } from "../data/npy.ts";
import { openTensorFile } from "../data/open.ts";
import type { TensorData } from "../data/record.ts";
import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { moduleTempDir, Rng } from "./helpers.ts";
import { CHECKPOINT_FIXTURES, checkpointFixturesExpected, hex, num } from "./fixtures.ts";

const FIX = CHECKPOINT_FIXTURES;
const EXPECTED = checkpointFixturesExpected();
const TMP = moduleTempDir("bloom-npy-test-");

Deno.test("npy: numpy's files read exactly (v1.0 and v2.0 headers)", async () => {
  const exp = EXPECTED.npy as Record<
    string,
    { dtype: string; shape: number[]; hex: string; values: (number | string)[] }
  >;
  for (const [name, e] of Object.entries(exp)) {
    using f = await openNpy(FIX + name);
    const t = f.array;
    assertEquals([t.dtype, [...t.shape]], [e.dtype, e.shape], name);
    assertEquals(hex(await t.bytes()), e.hex, name);
    assertClose(await t.f32(), e.values.map(num), { rtol: 0, atol: 0 }, name);
    assertEquals(f.header.version, name === "f4_v2.npy" ? [2, 0] : [1, 0], name);
    assertEquals(t.name, name.replace(".npy", ""));
  }
  const { dtype, shape, data } = await readNpy(FIX + "i8.npy");
  assertEquals([dtype, shape, [...data]], ["i64", [2, 2], [1, -2, 2 ** 40, 4]]);
});

function arrays(): Record<string, TensorData> {
  const rng = new Rng(4);
  return {
    f32: { dtype: "f32", shape: [2, 3], data: rng.normals(6) },
    f16: { dtype: "f16", shape: [3], data: rng.normals(3) },
    f64: { dtype: "f64", shape: [2], data: Float64Array.of(1e-300, 2) },
    i64: { dtype: "i64", shape: [1, 2], data: BigInt64Array.of(-5n, 2n ** 50n) },
    i32: { dtype: "i32", shape: [2], data: Int32Array.of(-1, 1) },
    i16: { dtype: "i16", shape: [1], data: Int16Array.of(-7) },
    i8: { dtype: "i8", shape: [1], data: Int8Array.of(-8) },
    u8: { dtype: "u8", shape: [3], data: Uint8Array.of(1, 2, 255) },
    bool: { dtype: "bool", shape: [2], data: Uint8Array.of(1, 0) },
    scalar: { dtype: "f32", shape: [], data: Float32Array.of(7) },
    empty: { dtype: "f32", shape: [0, 5], data: new Float32Array(0) },
  };
}

const bytesOf = (t: TensorData) =>
  t.data instanceof Float32Array && t.dtype !== "f32"
    ? fromFloat32(t.data, t.dtype)
    : new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);

Deno.test("npy writer: every numpy dtype round-trips; headers are 64-byte aligned", async () => {
  for (const [k, t] of Object.entries(arrays())) {
    const path = `${TMP}/${k}.npy`;
    await writeNpy(path, t);
    using f = await openNpy(path);
    assertEquals(f.header.dataOffset % 64, 0, k);
    assertEquals([f.array.dtype, [...f.array.shape]], [t.dtype, [...t.shape]], k);
    assertEquals(hex(await f.array.bytes()), hex(bytesOf(t)), k);
  }
  using any = await openTensorFile(`${TMP}/f32.npy`);
  assertEquals([...any.tensors.keys()], ["f32"]);
  await assertRejects(
    () => writeNpy(`${TMP}/bf.npy`, { dtype: "bf16", shape: [1], data: Float32Array.of(1) }),
    InvalidTensorError,
    /bf\.npy: dtype: numpy has no such dtype/,
  );
});

Deno.test("npy row writer: streams [N, D] blocks, with N declared or patched at the end", async () => {
  const rng = new Rng(9);
  const rows = rng.normals(7 * 5);
  for (const declared of [true, false]) {
    const path = `${TMP}/stream_${declared}.npy`;
    const w = await createNpyWriter(path, { cols: 5, rows: declared ? 7 : undefined });
    await w.write(rows.subarray(0, 15));
    await w.write(rows.subarray(15, 15)); // an empty block is fine
    await w.write(rows.subarray(15));
    await w.finish();
    using f = await openNpy(path);
    assertEquals(f.array.shape, [7, 5]);
    assertEquals(f.header.dataOffset % 64, 0);
    assertEquals(await f.array.f32(), rows);
  }
  // Too few rows: finish fails and nothing is left behind.
  const path = `${TMP}/short.npy`;
  const w = await createNpyWriter(path, { cols: 2, rows: 3 });
  await w.write(Float32Array.of(1, 2));
  await assertRejects(
    () => w.finish(),
    InvalidTensorError,
    /short\.npy: rows: fewer rows written than declared \(expected 3, found 1\)/,
  );
  await assertRejects(() => Deno.stat(path), Deno.errors.NotFound);
  await assertRejects(() => Deno.stat(`${path}.tmp`), Deno.errors.NotFound);
  const w2 = await createNpyWriter(path, { cols: 2, rows: 1 });
  await assertRejects(
    () => w2.write(Float32Array.of(1, 2, 3)),
    InvalidTensorError,
    /not a whole number of rows/,
  );
  await assertRejects(
    () => w2.write(Float32Array.of(1, 2, 3, 4)),
    InvalidTensorError,
    /more rows than declared/,
  );
  await w2.abort();
  await assertRejects(() => createNpyWriter(path, { cols: -1 }), InvalidTensorError, /bad shape/);
});

/** A .npy with the given header text (padded) and data. */
function craft(
  name: string,
  header: string,
  data: Uint8Array,
  opts: { magic?: string; version?: number; hlen?: number } = {},
) {
  const text = header + " ".repeat((64 - ((10 + header.length + 1) % 64)) % 64) + "\n";
  const out = new Uint8Array(10 + text.length + data.length);
  const magic = opts.magic ?? "\x93NUMPY";
  for (let i = 0; i < 6; i++) out[i] = magic.charCodeAt(i);
  out[6] = opts.version ?? 1;
  new DataView(out.buffer).setUint16(8, opts.hlen ?? text.length, true);
  for (let i = 0; i < text.length; i++) out[10 + i] = text.charCodeAt(i);
  out.set(data, 10 + text.length);
  const path = `${TMP}/${name}.npy`;
  Deno.writeFileSync(path, out);
  return path;
}

Deno.test("npy: bad files fail naming the file and the field", async () => {
  const d16 = new Uint8Array(16);
  const h = (descr: string, shape: string, fortran = "False") =>
    `{'descr': '${descr}', 'fortran_order': ${fortran}, 'shape': ${shape}, }`;
  const cases: [string, typeof CheckpointError, RegExp, string][] = [
    [
      craft("fortran", h("<f4", "(2, 2)", "True"), d16),
      UnsupportedFormatError,
      /Fortran-order/,
      "fortran_order",
    ],
    [
      craft("big_endian", h(">f4", "(4,)"), d16),
      UnsupportedFormatError,
      /dtype not supported.*">f4".*little-endian/,
      "descr",
    ],
    [
      craft("complex", h("<c8", "(2,)"), d16),
      UnsupportedFormatError,
      /dtype not supported/,
      "descr",
    ],
    [
      craft(
        "structured",
        "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }",
        d16,
      ),
      UnsupportedFormatError,
      /structured/,
      "descr",
    ],
    [
      craft("magic", h("<f4", "(4,)"), d16, { magic: "\x93NUMPX" }),
      CorruptFileError,
      /not a \.npy file/,
      "npy header",
    ],
    [
      craft("version", h("<f4", "(4,)"), d16, { version: 7 }),
      UnsupportedFormatError,
      /format version/,
      "npy header",
    ],
    [
      craft("hlen", h("<f4", "(4,)"), d16, { hlen: 60000 }),
      CorruptFileError,
      /header is longer than the file/,
      "npy header",
    ],
    [
      craft("truncated", h("<f4", "(5,)"), d16),
      CorruptFileError,
      /data is shorter than the shape says/,
      "data",
    ],
    [
      craft("garbled", "{'descr': '<f4', 'fortran_order': Maybe, }", d16),
      CorruptFileError,
      /unreadable header dict/,
      "npy header",
    ],
    [
      craft("missing", "{'descr': '<f4'}", d16),
      CorruptFileError,
      /lacks descr, fortran_order or shape/,
      "npy header",
    ],
  ];
  for (const [path, cls, pattern, key] of cases) {
    const e = await assertRejects(() => openNpy(path), cls, pattern);
    assert(e.message.includes(path), `names the file: ${e.message}`);
    assert(e.message.includes(`: ${key}`), `names ${key}: ${e.message}`);
  }
});

const NUMPY_ORACLE = `
import json, sys
import numpy as np
out = {}
for p in sys.argv[1:]:
    a = np.load(p)
    out[p] = {"dtype": a.dtype.str, "shape": list(a.shape), "hex": np.ascontiguousarray(a).tobytes().hex()}
print(json.dumps(out))
`;

Deno.test("npy: np.load reads bloom-written arrays and streamed matrices", async (t) => {
  const written = arrays();
  const paths: string[] = [];
  for (const [k, a] of Object.entries(written)) {
    paths.push(`${TMP}/np_${k}.npy`);
    await writeNpy(paths.at(-1)!, a);
  }
  const rows = new Rng(5).normals(6 * 4);
  const streamed = `${TMP}/np_stream.npy`;
  const w = await createNpyWriter(streamed, { cols: 4 });
  for (let i = 0; i < 6; i += 2) await w.write(rows.subarray(i * 4, (i + 2) * 4));
  await w.finish();
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("/usr/bin/python3", {
      args: ["-c", NUMPY_ORACLE, ...paths, streamed],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch {
    await t.step({ name: "python3 not available: skipped", ignore: true, fn: () => {} });
    return;
  }
  if (!out.success && /No module named 'numpy'/.test(new TextDecoder().decode(out.stderr))) {
    await t.step({ name: "numpy not available: skipped", ignore: true, fn: () => {} });
    return;
  }
  assert(out.success, new TextDecoder().decode(out.stderr));
  const res = JSON.parse(new TextDecoder().decode(out.stdout));
  const descr: Record<string, string> = {
    f32: "<f4",
    f16: "<f2",
    f64: "<f8",
    i64: "<i8",
    i32: "<i4",
    i16: "<i2",
    i8: "|i1",
    u8: "|u1",
    bool: "|b1",
  };
  for (const [i, [k, a]] of Object.entries(written).entries()) {
    assertEquals(res[paths[i]], {
      dtype: descr[a.dtype],
      shape: [...a.shape],
      hex: hex(bytesOf(a)),
    }, k);
  }
  assertEquals(res[streamed], {
    dtype: "<f4",
    shape: [6, 4],
    hex: hex(new Uint8Array(rows.buffer)),
  });
});
