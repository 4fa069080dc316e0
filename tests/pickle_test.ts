/**
 * The restricted unpickler and the pickle writer: hand-made pickles for each
 * opcode family, Python's own pickles (protocols 2–5) as an oracle, refusal
 * of every code-running global and opcode by name and byte offset, and clean
 * errors for malformed input.
 */
import {
  CheckpointError,
  CorruptFileError,
  UnsafeFileError,
  UnsupportedFormatError,
} from "../data/errors.ts";
import {
  PickleDict,
  PickleGlobal,
  PickleSet,
  PickleTuple,
  type PickleValue,
  StorageRef,
  TensorRef,
  TorchDevice,
  TorchDtype,
  unpickle,
} from "../data/pickle.ts";
import { pickle, type PickleNode } from "../data/pickle_writer.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { bytes as base64Bytes } from "./fixtures.ts";
import { hasPython } from "./helpers.ts";

const SRC = { file: "/models/test.pth", entry: "archive/data.pkl" };

/** Pickle bytes from latin-1 text pieces and byte arrays. */
function p(...parts: (string | number[])[]): Uint8Array {
  const out: number[] = [];
  for (const x of parts) {
    if (typeof x === "string") { for (const c of x) out.push(c.charCodeAt(0)); }
    else out.push(...x);
  }
  return Uint8Array.from(out);
}

/** BINUNICODE of `s` (UTF-8, as latin-1 text for `p`). */
function X(s: string): string {
  const b = new TextEncoder().encode(s);
  return "X" + String.fromCharCode(b.length & 0xff, (b.length >> 8) & 0xff, 0, 0) +
    String.fromCharCode(...b);
}

const load = (bytes: Uint8Array) => unpickle(bytes, SRC);

/** Asserts unpickling fails with `cls`, naming the file, the entry and a byte offset. */
function refuses(bytes: Uint8Array, cls: typeof CheckpointError, pattern: RegExp): Error {
  const e = assertThrows(() => load(bytes), cls, pattern);
  assert(e.message.includes(SRC.file), `message names the file: ${e.message}`);
  assert(
    /archive\/data\.pkl byte \d+/.test(e.message),
    `message names entry and byte: ${e.message}`,
  );
  return e;
}

Deno.test("pickle: containers, scalars and memo (protocol 2 opcodes)", () => {
  const v = load(p(
    "\x80\x02}q\x00(",
    X("int"),
    "K\x07",
    X("neg"),
    "J\xfb\xff\xff\xff", // BININT -5
    X("u16"),
    "M\x00\x01", // 256
    X("long"),
    "\x8a\x06\x00\x00\x00\x00\x00\x01", // 2^40
    X("neglong"),
    "\x8a\x01\xff", // -1
    X("float"),
    "G\x3f\xb9\x99\x99\x99\x99\x99\x9a", // 0.1 big-endian
    X("list"),
    "]q\x01(K\x01K\x02e", // [1, 2]
    X("tuple"),
    "K\x01K\x02K\x03\x87",
    X("none"),
    "N",
    X("flags"),
    "\x88\x89\x86",
    X("again"),
    "h\x01", // memo 1: the same list object
    "u.",
  )) as PickleDict;
  assert(v instanceof PickleDict && !v.ordered);
  assertEquals(v.get("int"), 7);
  assertEquals(v.get("neg"), -5);
  assertEquals(v.get("u16"), 256);
  assertEquals(v.get("long"), 2 ** 40);
  assertEquals(v.get("neglong"), -1);
  assertEquals(v.get("float"), 0.1);
  assertEquals(v.get("list"), [1, 2]);
  assertEquals((v.get("tuple") as PickleTuple).items, [1, 2, 3]);
  assertEquals(v.get("none"), null);
  assertEquals((v.get("flags") as PickleTuple).items, [true, false]);
  assert(v.get("again") === v.get("list"), "BINGET returns the memoised object itself");
});

Deno.test("pickle: protocol 4 framing, short strings, MEMOIZE and STACK_GLOBAL", () => {
  const body = p(
    "\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94",
    "\x8c\x01k\x94\x8c\x03v\xc3\xa9\x94s", // SHORT_BINUNICODE with UTF-8 "vé"
    "\x8c\x01s\x94\x8f(K\x01K\x02\x90", // EMPTY_SET + ADDITEMS
    "s.",
  );
  const frame = [0x95, body.length, 0, 0, 0, 0, 0, 0, 0];
  const v = load(p("\x80\x04", frame, [...body])) as PickleDict;
  assert(v.ordered, "OrderedDict via STACK_GLOBAL + REDUCE");
  assertEquals(v.get("k"), "vé");
  assertEquals((v.get("s") as PickleSet).items, [1, 2]);
});

Deno.test("pickle: torch globals become descriptions, never calls", () => {
  const v = load(p(
    "\x80\x02(",
    "ctorch\nfloat16\n",
    "ctorch\ndevice\n",
    X("cuda"),
    "K\x01\x86R",
    "ctorch\nSize\n",
    "K\x02K\x03\x86\x85R",
    "c_codecs\nencode\n",
    X("\xff\x00"),
    X("latin1"),
    "\x86R",
    "t.",
  )) as PickleTuple;
  const [dtype, device, size, bytes] = v.items;
  assert(dtype instanceof TorchDtype && dtype.dtype === "f16");
  assert(device instanceof TorchDevice && device.spec === "cuda:1");
  assertEquals((size as PickleTuple).items, [2, 3]);
  // _codecs.encode of a latin-1 string gives its bytes (how protocol 2 pickles bytes).
  assertEquals(bytes, new Uint8Array([0xff, 0x00]));
});

Deno.test("pickle: a state-dict tensor and a parameter", () => {
  const tensor = [
    "ctorch._utils\n_rebuild_tensor_v2\n(",
    "(",
    X("storage"),
    "ctorch\nBFloat16Storage\n",
    X("3"),
    X("cuda:0"),
    "K\x0ct", // numel 12
    "QK\x02K\x02K\x03\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)RtR",
  ].join("");
  const v = load(p(
    "\x80\x02}(",
    X("t"),
    tensor,
    X("p"),
    "ctorch._utils\n_rebuild_parameter\n",
    tensor,
    "\x88ccollections\nOrderedDict\n)R\x87R",
    "u.",
  )) as PickleDict;
  const t = v.get("t") as TensorRef;
  assert(t instanceof TensorRef);
  assert(t.storage instanceof StorageRef);
  assertEquals(
    [t.storage.dtype, t.storage.key, t.storage.location, t.storage.numel],
    ["bf16", "3", "cuda:0", 12],
  );
  assertEquals([t.offset, t.shape, t.stride, t.requiresGrad], [2, [2, 3], [1, 2], false]);
  const prm = v.get("p") as TensorRef;
  assert(prm instanceof TensorRef && prm.requiresGrad, "_rebuild_parameter keeps requires_grad");
});

Deno.test("pickle: OrderedDict BUILD keeps _metadata without interpreting it", () => {
  const v = load(p(
    "\x80\x02ccollections\nOrderedDict\n)R(",
    X("a"),
    "K\x01u}",
    X("_metadata"),
    "}",
    X(""),
    "}",
    X("version"),
    "K\x01sssb.",
  )) as PickleDict;
  assert(v.ordered);
  assertEquals([...v.keys()], ["a"]);
  const meta = (v.state as PickleDict).get("_metadata") as PickleDict;
  assertEquals((meta.get("") as PickleDict).get("version"), 1);
});

Deno.test("pickle: forbidden globals are refused by module and name", () => {
  const cases: [Uint8Array, RegExp][] = [
    [p("\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R."), /forbidden global os\.system/],
    [p("\x80\x02cposix\nsystem\n."), /forbidden global posix\.system/],
    [p("\x80\x02c__builtin__\neval\n."), /forbidden global __builtin__\.eval/],
    [p("\x80\x02cbuiltins\ngetattr\n."), /forbidden global builtins\.getattr/],
    [p("\x80\x02ctorch\nload\n."), /forbidden global torch\.load/],
    [p("\x80\x02csubprocess\nPopen\n."), /forbidden global subprocess\.Popen/],
    [p("\x80\x02cnumpy.core.multiarray\n_reconstruct\n."), /forbidden global numpy/],
    // STACK_GLOBAL resolves the same allow-list.
    [p("\x80\x04\x8c\x08builtins\x8c\x04exec\x93."), /forbidden global builtins\.exec/],
  ];
  for (const [bytes, pattern] of cases) {
    const e = refuses(bytes, UnsafeFileError, pattern);
    assert(e.message.includes("bloom loads only tensors and containers"), e.message);
  }
  // The offset is the GLOBAL opcode's byte.
  refuses(p("\x80\x02]cos\nsystem\n."), UnsafeFileError, /byte 3: forbidden global os\.system/);
});

Deno.test("pickle: code-running opcodes and misuse of allowed globals are refused", () => {
  refuses(p("\x80\x02(cos\nsystem\nX\x02\x00\x00\x00lso."), UnsafeFileError, /byte \d+: forbidden/);
  refuses(p("\x80\x02(X\x01\x00\x00\x00aios\nsystem\n."), UnsafeFileError, /opcode INST/);
  refuses(p("\x80\x02\x82\x01."), UnsafeFileError, /opcode EXT1/);
  // Allowed as a value (in persistent ids), but calling a storage class constructs one.
  refuses(
    p("\x80\x02ctorch\nFloatStorage\nK\x03\x85R."),
    UnsafeFileError,
    /call of torch\.FloatStorage/,
  );
  refuses(p("\x80\x02ccollections\nOrderedDict\n)\x81."), UnsafeFileError, /NEWOBJ/);
  refuses(p("\x80\x02}}b."), UnsafeFileError, /BUILD/);
  refuses(p("\x80\x02X\x03\x00\x00\x00abcQ."), UnsafeFileError, /persistent id/);
  refuses(p("\x80\x02K\x01K\x02R."), UnsafeFileError, /call of 1/);
});

Deno.test("pickle: malformed pickles fail with CorruptFileError at the right byte", () => {
  refuses(p("\x80\x02\xff."), CorruptFileError, /byte 2: malformed pickle: unknown opcode 0xff/);
  refuses(p("\x80\x02X\xff\xff\xff\x7fab."), CorruptFileError, /BINUNICODE runs past the end/);
  refuses(
    p("\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\x7f."),
    CorruptFileError,
    /BINUNICODE8 runs past/,
  );
  refuses(p("\x80\x02\x95\x00\x00\x00\x00\x01\x00\x00\x00."), CorruptFileError, /FRAME longer/);
  refuses(p("\x80\x02t."), CorruptFileError, /TUPLE without a MARK/);
  refuses(p("\x80\x02a."), CorruptFileError, /APPEND on an empty stack/);
  refuses(p("\x80\x02h\x05."), CorruptFileError, /memo slot 5 read before it was written/);
  refuses(p("\x80\x02K\x01"), CorruptFileError, /no STOP opcode/);
  refuses(p("\x80\x02X\x02\x00\x00\x00\xc3(."), CorruptFileError, /not valid UTF-8/);
  refuses(p("\x80\x02}K\x01u."), CorruptFileError, /SETITEMS without a MARK/);
  refuses(p("\x80\x02K\x00K\x01K\x02s."), CorruptFileError, /SETITEM on 0, not a dict/);
  refuses(p("\x80\x09."), CorruptFileError, /unknown pickle protocol/);
  refuses(p("\x80\x02cos"), CorruptFileError, /GLOBAL name line is unterminated/);
  // Text-mode protocols (0/1) are valid pickles bloom does not read.
  refuses(p("I1\n."), UnsupportedFormatError, /opcode INT is not supported/);
  refuses(p("\x80\x02\x8b\x00\x00\x01\x00."), UnsupportedFormatError, /integer too long/);
});

Deno.test("pickle: bad _rebuild_tensor_v2 arguments and storage ids are corrupt, not crashes", () => {
  const pid = "(" + X("storage") + "ctorch\nFloatStorage\n" + X("0") + X("cpu") + "K\x04tQ";
  refuses(
    p("\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(", pid, "K\x00K\x02\x85tR."),
    CorruptFileError,
    /bad arguments to torch\._utils\._rebuild_tensor_v2/,
  );
  refuses(
    p("\x80\x02(" + X("storage") + "ctorch\nFloatStorage\n" + X("../x") + X("cpu") + "K\x04tQ."),
    CorruptFileError,
    /storage key is not a plain name/,
  );
  refuses(
    p("\x80\x02ctorch._utils\n_rebuild_sparse_tensor\n."),
    UnsupportedFormatError,
    /_rebuild_sparse_tensor rebuilds a tensor kind bloom does not read/,
  );
  refuses(
    p("\x80\x02(" + X("storage") + "ctorch\nComplexFloatStorage\n."),
    UnsupportedFormatError,
    /storage type torch\.ComplexFloatStorage is not supported/,
  );
});

/** Parses our writer's output back; the pickle must describe the same tree. */
Deno.test("pickle writer: torch.save's shape, read back by the unpickler", () => {
  const tensor = (key: string, shape: number[]): PickleNode => ({
    kind: "tensor",
    storageKey: key,
    dtype: "f16",
    shape,
    numel: shape.reduce((a, b) => a * b, 1),
  });
  const many: PickleNode[] = Array.from({ length: 1200 }, (_, i) => ({ kind: "scalar", value: i }));
  const root: PickleNode = {
    kind: "dict",
    ordered: false,
    entries: [
      ["teacher", {
        kind: "dict",
        ordered: true,
        entries: [["w", tensor("0", [2, 3])], ["s", tensor("1", [])], [
          "big",
          tensor("2", [5, 1, 4, 2]),
        ]],
      }],
      ["ints", {
        kind: "list",
        items: [-1, 255, 256, 65536, -(2 ** 31), 2 ** 31, 2 ** 53 - 1, -(2 ** 53) + 1].map((
          value,
        ) => ({ kind: "scalar", value }) as PickleNode),
      }],
      ["misc", {
        kind: "list",
        items: [{ kind: "scalar", value: 0.25 }, { kind: "scalar", value: "é✓" }, {
          kind: "scalar",
          value: null,
        }, { kind: "scalar", value: true }],
      }],
      ["many", { kind: "list", items: many }],
    ],
  };
  const bytes = pickle(root);
  assertEquals([...bytes.subarray(0, 2)], [0x80, 0x02]);
  const v = load(bytes) as PickleDict;
  const teacher = v.get("teacher") as PickleDict;
  assert(teacher.ordered);
  const w = teacher.get("w") as TensorRef;
  assertEquals([w.storage.dtype, w.storage.key, w.storage.numel, w.shape, w.stride, w.offset], [
    "f16",
    "0",
    6,
    [2, 3],
    [3, 1],
    0,
  ]);
  const s = teacher.get("s") as TensorRef;
  assertEquals([s.shape, s.stride, s.storage.numel], [[], [], 1]);
  assertEquals((teacher.get("big") as TensorRef).stride, [8, 8, 2, 1]);
  assertEquals(v.get("ints"), [
    -1,
    255,
    256,
    65536,
    -(2 ** 31),
    2 ** 31,
    2 ** 53 - 1,
    -(2 ** 53) + 1,
  ]);
  assertEquals(v.get("misc"), [0.25, "é✓", null, true]);
  assertEquals(v.get("many"), many.map((_, i) => i));
});

/** JSON-able form of a PickleValue, matching the Python side's `enc`. */
function enc(v: PickleValue): unknown {
  if (v === null || typeof v === "boolean" || typeof v === "string") return v;
  if (typeof v === "number") return Number.isInteger(v) ? { int: String(v) } : v;
  if (typeof v === "bigint") return { int: String(v) };
  if (v instanceof Uint8Array) {
    return { bytes: [...v].map((b) => b.toString(16).padStart(2, "0")).join("") };
  }
  if (Array.isArray(v)) return v.map(enc);
  if (v instanceof PickleTuple) return { tuple: v.items.map(enc) };
  if (v instanceof PickleSet) {
    return {
      [v.frozen ? "frozenset" : "set"]: v.items.map(enc).map((x) => JSON.stringify(x)).sort(),
    };
  }
  if (v instanceof PickleDict) {
    return { [v.ordered ? "odict" : "dict"]: [...v].map(([k, x]) => [enc(k), enc(x)]) };
  }
  if (v instanceof PickleGlobal) return { global: v.qualified };
  throw new Error(`unexpected ${String(v)}`);
}

const PY_ORACLE = `
import base64, collections, json, pickle, sys
obj = {
    "small": 7, "neg": -5, "u16": 40000, "i32": -2**31, "medium": 2**40, "big": 2**70, "nbig": -2**65,
    "float": 0.1, "text": "h\\u00e9llo \\u2713", "bytes": b"\\x00\\xff\\x10",
    "list": [1, [2, 3], ()], "tuple": (1, "x", None, True, False),
    "set": {1, 2}, "fset": frozenset([3]), "od": collections.OrderedDict([("x", 1), ("y", [])]),
    5: "int key", "empty": {}, "barr": bytearray(b"ab"),
}
obj["shared"] = obj["list"]
def enc(v):
    if v is None or isinstance(v, (bool, str)): return v
    if isinstance(v, int): return {"int": str(v)}
    if isinstance(v, float): return v
    if isinstance(v, (bytes, bytearray)): return {"bytes": bytes(v).hex()}
    if isinstance(v, list): return [enc(x) for x in v]
    if isinstance(v, tuple): return {"tuple": [enc(x) for x in v]}
    if isinstance(v, frozenset): return {"frozenset": sorted(json.dumps(enc(x), separators=(",", ":")) for x in v)}
    if isinstance(v, set): return {"set": sorted(json.dumps(enc(x), separators=(",", ":")) for x in v)}
    if isinstance(v, collections.OrderedDict): return {"odict": [[enc(k), enc(x)] for k, x in v.items()]}
    if isinstance(v, dict): return {"dict": [[enc(k), enc(x)] for k, x in v.items()]}
    raise TypeError(type(v))
out = {str(p): base64.b64encode(pickle.dumps(obj, protocol=p)).decode() for p in (2, 3, 4, 5)}
print(json.dumps({"pickles": out, "expected": enc(obj)}))
`;

Deno.test("pickle: Python's own pickles, protocols 2-5, decode to the same values", async (t) => {
  if (!(await hasPython())) {
    t.step({ name: "python3 not available: skipped", ignore: true, fn: () => {} });
    return;
  }
  const out = await new Deno.Command("/usr/bin/python3", {
    args: ["-c", PY_ORACLE],
    stdout: "piped",
  }).output();
  assert(out.success, "python oracle ran");
  const { pickles, expected } = JSON.parse(new TextDecoder().decode(out.stdout));
  for (const [proto, b64] of Object.entries(pickles as Record<string, string>)) {
    const v = load(base64Bytes(b64));
    // JSON.stringify of the set members matches Python's compact json.dumps.
    const got = JSON.parse(JSON.stringify(enc(v)));
    assertEquals(got, expected, `protocol ${proto}`);
    const d = v as PickleDict;
    assert(d.get("shared") === d.get("list"), `protocol ${proto}: shared list stays one object`);
  }
});
