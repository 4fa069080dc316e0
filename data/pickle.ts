/**
 * A restricted unpickler for PyTorch checkpoints. It NEVER executes anything
 * from the file: a pickle's globals are looked up in a fixed allow-list (the
 * containers and tensor-rebuild functions `torch.load(weights_only=True)`
 * accepts) and "calling" one only builds a plain description (a TensorRef, a
 * dict, a tuple). Any other global, and any opcode that would construct an
 * arbitrary object, is refused by name with the byte offset.
 *
 * Tensors come out as TensorRef (storage key, offset, size, stride); reading
 * their bytes is the `.pth` reader's job (data/pth.ts).
 *
 * Invariants: every length read from the pickle is checked against the bytes
 * left before anything is sliced or allocated, and every opcode consumes at
 * least one byte, so a hostile pickle cannot loop. Everything built is
 * charged to an AllocationBudget of a small multiple of the pickle's size
 * (objects, elements, strings, and the copies some calls make: bytearray,
 * _codecs.encode, torch.Size, set, OrderedDict of a list), so neither one
 * stored blob copied by every call nor a million empty dicts can blow up.
 * Rank and the nesting of rebuild calls are capped (data/limits.ts); nothing
 * here recurses on the pickle's structure.
 */
import { type DtypeName, lookup, TORCH_DTYPE, TORCH_STORAGE_DTYPE } from "./dtypes.ts";
import {
  CheckpointError,
  CorruptFileError,
  UnsafeFileError,
  UnsupportedFormatError,
} from "./errors.ts";
import { AllocationBudget, COST, limitError, LIMITS } from "./limits.ts";

/** A Python tuple. */
export class PickleTuple {
  constructor(readonly items: PickleValue[]) {}
}

/** Dict keys bloom accepts (state dicts use strings; ints appear in optimizer states). */
export type PickleKey = string | number | bigint | boolean | null;

/** A Python dict or collections.OrderedDict, in insertion order. */
export class PickleDict extends Map<PickleKey, PickleValue> {
  /** True for collections.OrderedDict. */
  ordered = false;
  /** Attributes set by BUILD (an OrderedDict's `_metadata`), kept but never interpreted. */
  state?: PickleValue;
}

/** A Python set or frozenset. */
export class PickleSet {
  constructor(readonly items: PickleValue[], readonly frozen: boolean) {}
}

/** A reference to an allowed global (a class or function), never a resolved object. */
export class PickleGlobal {
  constructor(readonly module: string, readonly name: string) {}
  /** `module.name` */
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A storage named by a persistent id `('storage', torch.XStorage, key, location, numel)`. */
export class StorageRef {
  constructor(
    readonly dtype: DtypeName,
    /** Entry name under `<archive>/data/`. */
    readonly key: string,
    /** Device it was saved from ("cpu", "cuda:0"); bloom reads everything to the CPU. */
    readonly location: string,
    /** Elements of `dtype` the storage holds. */
    readonly numel: number,
  ) {}
}

/** A tensor as `_rebuild_tensor_v2(storage, offset, size, stride, …)` describes it. */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    /** Offset into the storage, in elements. */
    readonly offset: number,
    readonly shape: number[],
    /** Strides in elements. */
    readonly stride: number[],
    readonly requiresGrad: boolean,
    /** Byte position of the rebuild call in the pickle, for messages. */
    readonly at: number,
  ) {}
}

/** A `torch.<dtype>` object (e.g. `torch.float32`). */
export class TorchDtype {
  constructor(readonly dtype: DtypeName, readonly name: string) {}
}

/** A `torch.device(...)`. */
export class TorchDevice {
  constructor(readonly spec: string) {}
}

/** Everything the restricted unpickler can produce. */
export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PickleValue[]
  | PickleTuple
  | PickleDict
  | PickleSet
  | PickleGlobal
  | StorageRef
  | TensorRef
  | TorchDtype
  | TorchDevice;

/** Where a pickle came from, for messages. */
export interface PickleSource {
  /** The file (archive) path. */
  file: string;
  /** The entry inside it ("archive/data.pkl"). */
  entry: string;
}

/** Opcode byte → name, for every opcode of pickle protocols 0–5 (for messages). */
const OPCODE_NAMES: { [code: number]: string } = {};
for (
  const [name, ch] of Object.entries({
    MARK: "(",
    STOP: ".",
    POP: "0",
    POP_MARK: "1",
    DUP: "2",
    FLOAT: "F",
    INT: "I",
    BININT: "J",
    BININT1: "K",
    LONG: "L",
    BININT2: "M",
    NONE: "N",
    PERSID: "P",
    BINPERSID: "Q",
    REDUCE: "R",
    STRING: "S",
    BINSTRING: "T",
    SHORT_BINSTRING: "U",
    UNICODE: "V",
    BINUNICODE: "X",
    APPEND: "a",
    BUILD: "b",
    GLOBAL: "c",
    DICT: "d",
    EMPTY_DICT: "}",
    APPENDS: "e",
    GET: "g",
    BINGET: "h",
    INST: "i",
    LONG_BINGET: "j",
    LIST: "l",
    EMPTY_LIST: "]",
    OBJ: "o",
    PUT: "p",
    BINPUT: "q",
    LONG_BINPUT: "r",
    SETITEM: "s",
    TUPLE: "t",
    EMPTY_TUPLE: ")",
    SETITEMS: "u",
    BINFLOAT: "G",
    BINBYTES: "B",
    SHORT_BINBYTES: "C",
  })
) OPCODE_NAMES[ch.charCodeAt(0)] = name;
Object.assign(OPCODE_NAMES, {
  0x80: "PROTO",
  0x81: "NEWOBJ",
  0x82: "EXT1",
  0x83: "EXT2",
  0x84: "EXT4",
  0x85: "TUPLE1",
  0x86: "TUPLE2",
  0x87: "TUPLE3",
  0x88: "NEWTRUE",
  0x89: "NEWFALSE",
  0x8a: "LONG1",
  0x8b: "LONG4",
  0x8c: "SHORT_BINUNICODE",
  0x8d: "BINUNICODE8",
  0x8e: "BINBYTES8",
  0x8f: "EMPTY_SET",
  0x90: "ADDITEMS",
  0x91: "FROZENSET",
  0x92: "NEWOBJ_EX",
  0x93: "STACK_GLOBAL",
  0x94: "MEMOIZE",
  0x95: "FRAME",
  0x96: "BYTEARRAY8",
  0x97: "NEXT_BUFFER",
  0x98: "READONLY_BUFFER",
});

/** Opcodes that build arbitrary objects or pull external data: refused as unsafe. */
const UNSAFE_OPCODES = new Set([
  "INST",
  "OBJ",
  "EXT1",
  "EXT2",
  "EXT4",
  "NEWOBJ_EX",
  "NEXT_BUFFER",
  "READONLY_BUFFER",
  "PERSID",
]);

/** The functions that rebuild tensors (what torch.load(weights_only=True) allows). */
const REBUILD_FUNCTIONS = new Set([
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
  "torch._tensor._rebuild_from_type_v2",
]);

const TENSOR_TYPES = new Set(["torch.Tensor", "torch.nn.parameter.Parameter"]);

/** Allowed non-torch globals (protocol 2 spells the builtins module `__builtin__`). */
const OTHER_GLOBALS = new Set([
  "collections.OrderedDict",
  "builtins.set",
  "builtins.frozenset",
  "builtins.bytearray",
  "__builtin__.set",
  "__builtin__.frozenset",
  "__builtin__.bytearray",
  "_codecs.encode",
  "torch.Size",
  "torch.device",
]);

/** Whether `module.name` is a global bloom's unpickler accepts. */
export function isAllowedGlobal(module: string, name: string): boolean {
  const q = `${module}.${name}`;
  if (REBUILD_FUNCTIONS.has(q) || TENSOR_TYPES.has(q) || OTHER_GLOBALS.has(q)) return true;
  if (
    module === "torch" &&
    (Object.hasOwn(TORCH_STORAGE_DTYPE, name) || Object.hasOwn(TORCH_DTYPE, name))
  ) {
    return true;
  }
  return module === "torch.storage" && name === "UntypedStorage";
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

/** Longest integer (in bytes) a LONG opcode may carry: state dicts hold small ints. */
const MAX_LONG_BYTES = 64;

/**
 * Unpickles `data` under the restrictions above. Throws UnsafeFileError for a
 * forbidden global or opcode, CorruptFileError for a malformed pickle,
 * UnsupportedFormatError for valid but unsupported content and LimitError
 * past a cap or the allocation budget (by default one sized for `data`);
 * each message names the file, the entry and the byte offset.
 */
export function unpickle(
  data: Uint8Array,
  source: PickleSource,
  budget: AllocationBudget = new AllocationBudget(source.file, source.entry, data.length),
): PickleValue {
  return new Unpickler(data, source, budget).run();
}

class Unpickler {
  #d: Uint8Array;
  #dv: DataView;
  #src: PickleSource;
  #pos = 0;
  /** Byte offset of the opcode being executed. */
  #op = 0;
  #opName = "";
  #stack: PickleValue[] = [];
  #marks: PickleValue[][] = [];
  #memo = new Map<number, PickleValue>();
  #budget: AllocationBudget;

  constructor(data: Uint8Array, source: PickleSource, budget: AllocationBudget) {
    this.#d = data;
    this.#dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.#src = source;
    this.#budget = budget;
  }

  /** Charges the budget for what the opcode at hand builds. */
  #charge(bytes: number, what?: string): void {
    this.#budget.charge(bytes, what === undefined ? this.#at : () => `${what} at byte ${this.#op}`);
  }
  /** Where the opcode at hand is, for the budget's error (made once: charged per opcode). */
  readonly #at = () => `${this.#opName} at byte ${this.#op}`;

  #info(extra: { expected?: string; found?: string; fix?: string } = {}) {
    return { file: this.#src.file, key: `${this.#src.entry} byte ${this.#op}`, ...extra };
  }
  #corrupt(what: string, expected?: string, found?: string): CheckpointError {
    return new CorruptFileError(`malformed pickle: ${what}`, this.#info({ expected, found }));
  }

  #need(n: number): number {
    if (!(n >= 0 && this.#pos + n <= this.#d.length)) {
      throw this.#corrupt(
        `${this.#opName} runs past the end of the pickle (truncated?)`,
        `${n} more bytes`,
        `${this.#d.length - this.#pos}`,
      );
    }
    const at = this.#pos;
    this.#pos += n;
    return at;
  }
  #u8(): number {
    return this.#d[this.#need(1)];
  }
  #u16(): number {
    return this.#dv.getUint16(this.#need(2), true);
  }
  #u32(): number {
    return this.#dv.getUint32(this.#need(4), true);
  }
  #u64(): number {
    const at = this.#need(8);
    return this.#dv.getUint32(at + 4, true) * 4294967296 + this.#dv.getUint32(at, true);
  }
  #bytes(n: number): Uint8Array {
    const at = this.#need(n);
    return this.#d.subarray(at, at + n);
  }
  #text(n: number): string {
    const b = this.#bytes(n);
    this.#charge(COST.object + COST.char * n);
    try {
      return utf8.decode(b);
    } catch (e) {
      if (e instanceof CheckpointError) throw e;
      throw this.#corrupt("string is not valid UTF-8");
    }
  }
  #line(): string {
    const end = this.#d.indexOf(0x0a, this.#pos);
    if (end < 0 || end - this.#pos > 1024) {
      throw this.#corrupt(`${this.#opName} name line is unterminated`);
    }
    this.#charge(COST.object + COST.char * (end - this.#pos));
    const s = latin1.decode(this.#d.subarray(this.#pos, end));
    this.#pos = end + 1;
    return s;
  }

  #pop(): PickleValue {
    if (this.#stack.length === 0) throw this.#corrupt(`${this.#opName} on an empty stack`);
    return this.#stack.pop()!;
  }
  #top(): PickleValue {
    if (this.#stack.length === 0) throw this.#corrupt(`${this.#opName} on an empty stack`);
    return this.#stack[this.#stack.length - 1];
  }
  #popMark(): PickleValue[] {
    const items = this.#stack;
    const prev = this.#marks.pop();
    if (!prev) throw this.#corrupt(`${this.#opName} without a MARK`);
    this.#stack = prev;
    return items;
  }
  #memoPut(i: number) {
    this.#charge(COST.element * 2);
    this.#memo.set(i, this.#top());
  }
  #memoGet(i: number): PickleValue {
    if (!this.#memo.has(i)) throw this.#corrupt(`memo slot ${i} read before it was written`);
    return this.#memo.get(i)!;
  }

  run(): PickleValue {
    const d = this.#d;
    while (this.#pos < d.length) {
      this.#op = this.#pos;
      const code = d[this.#pos++];
      const name = OPCODE_NAMES[code];
      this.#opName = name ?? `0x${code.toString(16)}`;
      if (name === "STOP") {
        const result = this.#pop();
        return result;
      }
      this.#exec(code, name);
    }
    throw this.#corrupt("no STOP opcode (truncated?)");
  }

  #exec(code: number, name: string | undefined): void {
    const push = (v: PickleValue): void => {
      this.#stack.push(v);
    };
    // A stack slot; what the opcode builds beyond it (objects, elements, strings) below.
    this.#charge(COST.element);
    switch (name) {
      case "PROTO": {
        const v = this.#u8();
        if (v > 5) throw this.#corrupt("unknown pickle protocol", "0..5", `${v}`);
        return;
      }
      case "FRAME": {
        const n = this.#u64();
        // Frames only group opcodes for buffered readers; the length must still fit.
        if (!(this.#pos + n <= this.#d.length)) {
          throw this.#corrupt(
            "FRAME longer than the pickle",
            `≤ ${this.#d.length - this.#pos}`,
            `${n}`,
          );
        }
        return;
      }
      case "MARK":
        this.#charge(COST.object);
        this.#marks.push(this.#stack);
        this.#stack = [];
        return;
      case "POP":
        this.#pop();
        return;
      case "POP_MARK":
        this.#popMark();
        return;
      case "DUP":
        push(this.#top());
        return;
      case "NONE":
        return push(null);
      case "NEWTRUE":
        return push(true);
      case "NEWFALSE":
        return push(false);
      case "BININT":
        return push(this.#dv.getInt32(this.#need(4), true));
      case "BININT1":
        return push(this.#u8());
      case "BININT2":
        return push(this.#u16());
      case "LONG1":
        return push(this.#long(this.#u8()));
      case "LONG4":
        return push(this.#long(this.#u32()));
      case "BINFLOAT":
        return push(this.#dv.getFloat64(this.#need(8), false));
      case "BINUNICODE":
        return push(this.#text(this.#u32()));
      case "SHORT_BINUNICODE":
        return push(this.#text(this.#u8()));
      case "BINUNICODE8":
        return push(this.#text(this.#u64()));
      case "SHORT_BINSTRING": // Python 2 str: bytes, read as latin-1 text like torch does
        return push(this.#latin1(this.#u8()));
      case "BINSTRING":
        return push(this.#latin1(this.#dv.getInt32(this.#need(4), true)));
      case "SHORT_BINBYTES":
        return push(this.#copy(this.#u8()));
      case "BINBYTES":
        return push(this.#copy(this.#u32()));
      case "BINBYTES8":
      case "BYTEARRAY8":
        return push(this.#copy(this.#u64()));
      case "EMPTY_TUPLE":
        this.#charge(COST.object);
        return push(new PickleTuple([]));
      case "TUPLE":
        return push(new PickleTuple(this.#items(this.#popMark())));
      case "TUPLE1": {
        this.#charge(COST.object + COST.element);
        const a = this.#pop();
        return push(new PickleTuple([a]));
      }
      case "TUPLE2": {
        this.#charge(COST.object + 2 * COST.element);
        const b = this.#pop();
        const a = this.#pop();
        return push(new PickleTuple([a, b]));
      }
      case "TUPLE3": {
        this.#charge(COST.object + 3 * COST.element);
        const c = this.#pop();
        const b = this.#pop();
        const a = this.#pop();
        return push(new PickleTuple([a, b, c]));
      }
      case "EMPTY_LIST":
        this.#charge(COST.object);
        return push([]);
      case "LIST":
        return push(this.#items(this.#popMark()));
      case "APPEND": {
        this.#charge(COST.element);
        const v = this.#pop();
        this.#list().push(v);
        return;
      }
      case "APPENDS": {
        const items = this.#items(this.#popMark());
        const list = this.#list();
        for (const v of items) list.push(v);
        return;
      }
      case "EMPTY_DICT":
        this.#charge(COST.object);
        return push(new PickleDict());
      case "DICT": {
        const items = this.#items(this.#popMark());
        const dict = new PickleDict();
        this.#setItems(dict, items);
        return push(dict);
      }
      case "SETITEM": {
        this.#charge(2 * COST.element);
        const v = this.#pop();
        const k = this.#pop();
        this.#setItems(this.#dict(), [k, v]);
        return;
      }
      case "SETITEMS": {
        const items = this.#items(this.#popMark());
        this.#setItems(this.#dict(), items);
        return;
      }
      case "EMPTY_SET":
        this.#charge(COST.object);
        return push(new PickleSet([], false));
      case "ADDITEMS": {
        const items = this.#items(this.#popMark());
        const s = this.#top();
        if (!(s instanceof PickleSet) || s.frozen) {
          throw this.#corrupt("ADDITEMS on something not a set");
        }
        for (const v of items) s.items.push(v);
        return;
      }
      case "FROZENSET":
        return push(new PickleSet(this.#items(this.#popMark()), true));
      case "BINPUT":
        return this.#memoPut(this.#u8());
      case "LONG_BINPUT":
        return this.#memoPut(this.#u32());
      case "MEMOIZE":
        return this.#memoPut(this.#memo.size);
      case "BINGET":
        return push(this.#memoGet(this.#u8()));
      case "LONG_BINGET":
        return push(this.#memoGet(this.#u32()));
      case "GLOBAL": {
        const module = this.#line();
        const gname = this.#line();
        return push(this.#global(module, gname));
      }
      case "STACK_GLOBAL": {
        const gname = this.#pop();
        const module = this.#pop();
        if (typeof module !== "string" || typeof gname !== "string") {
          throw this.#corrupt("STACK_GLOBAL needs two strings", "module and name strings");
        }
        return push(this.#global(module, gname));
      }
      case "REDUCE": {
        const args = this.#pop();
        const fn = this.#pop();
        this.#charge(2 * COST.object); // the result (a TensorRef, a dict, a device…)
        return push(this.#call(fn, args));
      }
      case "NEWOBJ": {
        const args = this.#pop();
        const cls = this.#pop();
        if (!(cls instanceof PickleGlobal) || cls.qualified !== "torch.nn.parameter.Parameter") {
          throw this.#unsafe(`NEWOBJ of ${describe(cls)}`);
        }
        return push(this.#call(cls, args));
      }
      case "BUILD": {
        const state = this.#pop();
        const inst = this.#top();
        if (inst instanceof PickleDict && inst.ordered) {
          inst.state = state; // OrderedDict attributes (_metadata): kept, never interpreted
        } else if (!(inst instanceof TensorRef)) {
          // Tensor python attributes do not change its data; anything else would need code.
          throw this.#unsafe(`BUILD (setting state) on ${describe(inst)}`);
        }
        return;
      }
      case "BINPERSID": {
        const pid = this.#pop();
        return push(this.#storage(pid));
      }
    }
    if (name && UNSAFE_OPCODES.has(name)) throw this.#unsafe(`opcode ${name}`);
    if (name) {
      throw new UnsupportedFormatError(
        `pickle opcode ${name} is not supported (text-mode pickle protocols 0/1)`,
        this.#info({ fix: "re-save the checkpoint with torch.save (protocol 2)" }),
      );
    }
    throw this.#corrupt(`unknown opcode 0x${code.toString(16).padStart(2, "0")}`);
  }

  #unsafe(what: string): CheckpointError {
    return new UnsafeFileError(
      `forbidden ${what}`,
      this.#info({
        fix: "bloom loads only tensors and containers (what torch.load(weights_only=True) " +
          "allows) and never runs code from a checkpoint",
      }),
    );
  }

  /** Charges a container built from `items` (an object and its elements) and returns them. */
  #items(items: PickleValue[]): PickleValue[] {
    this.#charge(COST.object + COST.element * items.length);
    return items;
  }

  /** `n` bytes of the pickle as latin-1 text. */
  #latin1(n: number): string {
    const b = this.#bytes(n);
    this.#charge(COST.object + COST.char * n);
    return latin1.decode(b);
  }

  /** A copy of the next `n` bytes. */
  #copy(n: number): Uint8Array {
    const b = this.#bytes(n);
    this.#charge(COST.object + n);
    return b.slice();
  }

  #long(n: number): number | bigint {
    if (n > MAX_LONG_BYTES) {
      throw new UnsupportedFormatError(
        "integer too long for a checkpoint",
        this.#info({ expected: `at most ${MAX_LONG_BYTES} bytes`, found: `${n}` }),
      );
    }
    const b = this.#bytes(n);
    if (n === 0) return 0;
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[n - 1] & 0x80) v -= 1n << BigInt(8 * n);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  }

  #list(): PickleValue[] {
    const l = this.#top();
    if (!Array.isArray(l)) throw this.#corrupt(`${this.#opName} on ${describe(l)}, not a list`);
    return l;
  }
  #dict(): PickleDict {
    const d = this.#top();
    if (!(d instanceof PickleDict)) {
      throw this.#corrupt(`${this.#opName} on ${describe(d)}, not a dict`);
    }
    return d;
  }
  #setItems(dict: PickleDict, items: PickleValue[]) {
    if (items.length % 2) throw this.#corrupt(`${this.#opName} with an odd number of items`);
    for (let i = 0; i < items.length; i += 2) {
      const k = items[i];
      if (!(k === null || ["string", "number", "bigint", "boolean"].includes(typeof k))) {
        throw new UnsupportedFormatError(
          `dict key of type ${describe(k)} is not supported`,
          this.#info({ expected: "string, int, bool or None keys" }),
        );
      }
      dict.set(k as PickleKey, items[i + 1]);
    }
  }

  #global(module: string, name: string): PickleGlobal | TorchDtype {
    const dtype = module === "torch" ? lookup(TORCH_DTYPE, name) : undefined;
    if (dtype) return new TorchDtype(dtype, `torch.${name}`);
    if (isAllowedGlobal(module, name)) return new PickleGlobal(module, name);
    if (module === "torch" && /Storage$/.test(name)) {
      throw new UnsupportedFormatError(
        `storage type torch.${name} is not supported`,
        this.#info({ expected: Object.keys(TORCH_STORAGE_DTYPE).join(", ") }),
      );
    }
    // torch's other rebuild functions (sparse, quantized, nested, meta, uint16+ dtypes) are
    // legitimate checkpoint content bloom does not read, not an attack: say so.
    if (
      (module === "torch._utils" && name.startsWith("_rebuild_")) ||
      (module === "torch.serialization" && name === "_get_layout")
    ) {
      throw new UnsupportedFormatError(
        `${module}.${name} rebuilds a tensor kind bloom does not read (sparse, quantized, ` +
          "nested, meta or a dtype outside f64/f32/f16/bf16/i64/i32/i16/i8/u8/bool)",
        this.#info({ fix: "save dense tensors: torch.save({k: v.to_dense() …})" }),
      );
    }
    throw this.#unsafe(`global ${module}.${name}`);
  }

  #call(fn: PickleValue, argsV: PickleValue): PickleValue {
    if (!(fn instanceof PickleGlobal)) {
      throw this.#unsafe(`call of ${describe(fn)}`);
    }
    if (!(argsV instanceof PickleTuple)) {
      throw this.#corrupt(`arguments of ${fn.qualified} are not a tuple`);
    }
    const args = argsV.items;
    const q = fn.qualified;
    const bad = (expected: string) =>
      this.#corrupt(
        `bad arguments to ${q}`,
        expected,
        `(${args.map((a) => describe(a)).join(", ")})`,
      );
    switch (q) {
      case "collections.OrderedDict": {
        const d = new PickleDict();
        d.ordered = true;
        if (args.length === 1 && Array.isArray(args[0])) {
          // The list may be a memo reference, built once and passed to many calls.
          this.#charge(4 * COST.element * args[0].length, "OrderedDict(list)");
          for (const pair of args[0]) {
            const kv = pair instanceof PickleTuple ? pair.items : Array.isArray(pair) ? pair : null;
            if (!kv || kv.length !== 2) throw bad("(list of (key, value) pairs)");
            this.#setItems(d, kv);
          }
        } else if (args.length !== 0) throw bad("() or (list of pairs)");
        return d;
      }
      case "torch._utils._rebuild_tensor":
      case "torch._utils._rebuild_tensor_v2": {
        const [storage, offset, size, stride, requiresGrad] = args;
        const v2 = q.endsWith("v2");
        for (const [field, t] of [["size", size], ["stride", stride]] as const) {
          // Before the checks below walk it: a long tuple may be shared by many calls.
          if (t instanceof PickleTuple && t.items.length > LIMITS.rank) {
            throw limitError(
              this.#src.file,
              `${this.#src.entry} byte ${this.#op}`,
              `tensor rank (length of ${field})`,
              LIMITS.rank,
              t.items.length,
            );
          }
        }
        if (
          !(storage instanceof StorageRef) || !isIndex(offset) || !isIntTuple(size) ||
          !isIntTuple(stride) || (v2 && args.length < 6) || args.length > 7 ||
          (!v2 && args.length !== 4)
        ) {
          throw bad("(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])");
        }
        return new TensorRef(
          storage,
          offset,
          ints(size),
          ints(stride),
          v2 ? requiresGrad === true : false,
          this.#op,
        );
      }
      case "torch._utils._rebuild_parameter":
      case "torch._utils._rebuild_parameter_with_state":
      case "torch.nn.parameter.Parameter": {
        const [data, requiresGrad] = args;
        if (!(data instanceof TensorRef) || args.length > 4) {
          throw bad("(tensor, requires_grad, backward_hooks[, state])");
        }
        const rg = args.length > 1 ? requiresGrad === true : true;
        return new TensorRef(data.storage, data.offset, data.shape, data.stride, rg, data.at);
      }
      case "torch._tensor._rebuild_from_type_v2": {
        // (func, new_type, args, state): the tensor is func(*args), then retyped. func may be
        // _rebuild_from_type_v2 again: unwrapped in a loop, a few levels at most.
        let [inner, newType, innerArgs] = args;
        for (let level = 1;; level++) {
          if (
            !(inner instanceof PickleGlobal) || !REBUILD_FUNCTIONS.has(inner.qualified) ||
            !(newType instanceof PickleGlobal) || !TENSOR_TYPES.has(newType.qualified)
          ) {
            throw this.#unsafe(
              `_rebuild_from_type_v2 of ${describe(inner)} as ${describe(newType)}`,
            );
          }
          if (inner.qualified !== q) break;
          if (level >= LIMITS.rebuildNesting) {
            throw limitError(
              this.#src.file,
              `${this.#src.entry} byte ${this.#op}`,
              "nesting of _rebuild_from_type_v2 calls",
              LIMITS.rebuildNesting,
              `more than ${LIMITS.rebuildNesting}`,
            );
          }
          if (!(innerArgs instanceof PickleTuple)) {
            throw this.#corrupt(`arguments of ${q} are not a tuple`);
          }
          [inner, newType, innerArgs] = innerArgs.items;
        }
        const t = this.#call(inner, innerArgs);
        if (!(t instanceof TensorRef)) throw bad("(rebuild function, tensor type, args, state)");
        return t;
      }
      case "torch.Size": {
        const src = args[0];
        const items = args.length === 0 ? [] : src instanceof PickleTuple ? src.items : src;
        if (args.length > 1 || !Array.isArray(items)) throw bad("(tuple of ints)");
        this.#charge(COST.element * items.length, "torch.Size");
        if (!items.every(isIndex)) throw bad("(tuple of ints)");
        return new PickleTuple([...items]);
      }
      case "torch.device": {
        const [type, index] = args;
        if (typeof type !== "string" || (index !== undefined && typeof index !== "number")) {
          throw bad("(type[, index])");
        }
        return new TorchDevice(index === undefined ? type : `${type}:${index}`);
      }
      case "builtins.set":
      case "builtins.frozenset":
      case "__builtin__.set":
      case "__builtin__.frozenset": {
        const frozen = fn.name === "frozenset";
        if (args.length === 0) return new PickleSet([], frozen);
        const src = args[0];
        const items = Array.isArray(src) ? src : src instanceof PickleTuple ? src.items : null;
        if (!items || args.length !== 1) throw bad("(list)");
        this.#charge(COST.element * items.length, fn.qualified);
        return new PickleSet([...items], frozen);
      }
      case "_codecs.encode":
      case "builtins.bytearray":
      case "__builtin__.bytearray": {
        if (args.length === 0 && fn.name === "bytearray") return new Uint8Array(0);
        const [s, enc] = args;
        if (s instanceof Uint8Array && args.length === 1) {
          this.#charge(s.length, q);
          return s.slice();
        }
        if (typeof s !== "string" || (enc !== "latin1" && enc !== "latin-1")) {
          throw bad("(str, 'latin1')");
        }
        this.#charge(s.length, q);
        const out = new Uint8Array(s.length);
        for (let i = 0; i < s.length; i++) {
          const c = s.charCodeAt(i);
          if (c > 255) throw bad("a latin-1 string");
          out[i] = c;
        }
        return out;
      }
    }
    // Storages and tensor types are allowed as values (persistent ids, type tags), never as calls.
    throw this.#unsafe(`call of ${q}`);
  }

  #storage(pid: PickleValue): StorageRef {
    const items = pid instanceof PickleTuple ? pid.items : null;
    if (!items || items.length !== 5 || items[0] !== "storage") {
      throw this.#unsafe(
        `persistent id ${describe(pid)}: only ('storage', type, key, location, numel) is allowed`,
      );
    }
    const [, type, key, location, numel] = items;
    if (
      !(type instanceof PickleGlobal) ||
      !(type.module === "torch" || type.module === "torch.storage")
    ) {
      throw this.#corrupt(
        "storage persistent id without a storage type",
        "torch.XStorage",
        describe(type),
      );
    }
    const dtype = lookup(TORCH_STORAGE_DTYPE, type.name);
    if (!dtype) {
      throw this.#corrupt(
        "storage persistent id names no storage type",
        "torch.XStorage",
        type.qualified,
      );
    }
    const keyLength = typeof key === "string" || key instanceof Uint8Array ? key.length : 0;
    if (keyLength > LIMITS.storageKeyChars) {
      throw limitError(
        this.#src.file,
        `${this.#src.entry} byte ${this.#op}`,
        "length of a storage key",
        LIMITS.storageKeyChars,
        keyLength,
      );
    }
    const k = typeof key === "string" ? key : key instanceof Uint8Array ? latin1.decode(key) : null;
    if (k === null || !/^[A-Za-z0-9_.-]+$/.test(k) || k.includes("..")) {
      throw this.#corrupt("storage key is not a plain name", "a key like '0'", describe(key));
    }
    if (typeof location !== "string" || !isIndex(numel)) {
      throw this.#corrupt(
        "bad storage persistent id",
        "(…, location: str, numel: int ≥ 0)",
        describe(pid),
      );
    }
    return new StorageRef(dtype, k, location, numel);
  }
}

function isIndex(v: PickleValue | undefined): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function isIntTuple(v: PickleValue | undefined): v is PickleTuple {
  return v instanceof PickleTuple && v.items.every(isIndex);
}

function ints(t: PickleTuple): number[] {
  return t.items as number[];
}

/** A short description of a value for messages (type, and value when small and shallow). */
export function describe(v: PickleValue | undefined, depth = 0): string {
  if (v === undefined) return "nothing";
  if (v === null) return "None";
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v);
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v);
  if (v instanceof Uint8Array) return `bytes[${v.length}]`;
  if (Array.isArray(v)) return `list[${v.length}]`;
  if (v instanceof PickleTuple) {
    return v.items.length <= 6 && depth < 3
      ? `(${v.items.map((x) => describe(x, depth + 1)).join(", ")})`
      : `tuple[${v.items.length}]`;
  }
  if (v instanceof PickleDict) return `${v.ordered ? "OrderedDict" : "dict"}[${v.size}]`;
  if (v instanceof PickleSet) return `${v.frozen ? "frozenset" : "set"}[${v.items.length}]`;
  if (v instanceof PickleGlobal) return v.qualified;
  if (v instanceof StorageRef) return `storage '${v.key}'`;
  if (v instanceof TensorRef) return `tensor [${v.shape}]`;
  if (v instanceof TorchDtype) return v.name;
  return `torch.device('${v.spec}')`;
}
