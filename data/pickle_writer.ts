/**
 * Pickle writer (protocol 2) for checkpoints, emitting exactly the shape
 * torch.save gives a dict / OrderedDict of tensors: each tensor is
 * `torch._utils._rebuild_tensor_v2((persistent id), offset, size, stride,
 * False, OrderedDict())` with persistent id
 * `('storage', torch.FloatStorage, key, 'cpu', numel)`.
 *
 * Only opcodes that torch 1.13's `weights_only=True` unpickler knows are
 * used, except BINFLOAT for non-integer numbers (newer torch reads it).
 */
import { DTYPE_TORCH_STORAGE, type DtypeName } from "./dtypes.ts";

/** A node of the object to pickle. */
export type PickleNode =
  | {
    kind: "tensor";
    storageKey: string;
    dtype: DtypeName;
    shape: readonly number[];
    numel: number;
  }
  | { kind: "dict"; ordered: boolean; entries: [string, PickleNode][] }
  | { kind: "list"; items: PickleNode[] }
  | { kind: "scalar"; value: null | boolean | number | string };

/** Python's pickler batches SETITEMS/APPENDS by this many items. */
const BATCH = 1000;

/** Growable byte buffer. */
class Out {
  #buf = new Uint8Array(1024);
  #n = 0;
  #room(k: number) {
    if (this.#n + k <= this.#buf.length) return;
    const next = new Uint8Array(Math.max(this.#buf.length * 2, this.#n + k));
    next.set(this.#buf.subarray(0, this.#n));
    this.#buf = next;
  }
  byte(...b: number[]) {
    this.#room(b.length);
    for (const x of b) this.#buf[this.#n++] = x;
  }
  bytes(b: Uint8Array) {
    this.#room(b.length);
    this.#buf.set(b, this.#n);
    this.#n += b.length;
  }
  u32(v: number) {
    this.byte(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }
  done(): Uint8Array {
    return this.#buf.slice(0, this.#n);
  }
}

const enc = new TextEncoder();
const OP = {
  PROTO: 0x80,
  STOP: 0x2e,
  MARK: 0x28,
  EMPTY_DICT: 0x7d,
  EMPTY_LIST: 0x5d,
  EMPTY_TUPLE: 0x29,
  TUPLE: 0x74,
  TUPLE1: 0x85,
  TUPLE2: 0x86,
  TUPLE3: 0x87,
  SETITEMS: 0x75,
  APPENDS: 0x65,
  GLOBAL: 0x63,
  REDUCE: 0x52,
  BINPERSID: 0x51,
  BINPUT: 0x71,
  LONG_BINPUT: 0x72,
  BINGET: 0x68,
  LONG_BINGET: 0x6a,
  BININT: 0x4a,
  BININT1: 0x4b,
  BININT2: 0x4d,
  LONG1: 0x8a,
  BINFLOAT: 0x47,
  BINUNICODE: 0x58,
  NONE: 0x4e,
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
} as const;

/** Pickles `root` (protocol 2). Integers must be safe integers. */
export function pickle(root: PickleNode): Uint8Array {
  const w = new Writer();
  w.out.byte(OP.PROTO, 2);
  w.node(root);
  w.out.byte(OP.STOP);
  return w.out.done();
}

class Writer {
  out = new Out();
  /** Memo slots of globals and strings already written, keyed by their text. */
  #memo = new Map<string, number>();
  #next = 0;

  #put() {
    const i = this.#next++;
    if (i < 256) this.out.byte(OP.BINPUT, i);
    else (this.out.byte(OP.LONG_BINPUT), this.out.u32(i));
    return i;
  }
  #get(i: number) {
    if (i < 256) this.out.byte(OP.BINGET, i);
    else (this.out.byte(OP.LONG_BINGET), this.out.u32(i));
  }
  /** Writes a memoised object once, then refers to it. */
  #memoised(key: string, write: () => void) {
    const slot = this.#memo.get(key);
    if (slot !== undefined) return this.#get(slot);
    write();
    this.#memo.set(key, this.#put());
  }

  global(module: string, name: string) {
    this.#memoised(`global:${module}.${name}`, () => {
      this.out.byte(OP.GLOBAL);
      this.out.bytes(enc.encode(`${module}\n${name}\n`));
    });
  }

  str(s: string, memo = false) {
    const write = () => {
      const b = enc.encode(s);
      this.out.byte(OP.BINUNICODE);
      this.out.u32(b.length);
      this.out.bytes(b);
    };
    if (memo) this.#memoised(`str:${s}`, write);
    else write();
  }

  int(v: number) {
    if (v >= 0 && v < 256) return this.out.byte(OP.BININT1, v);
    if (v >= 0 && v < 65536) return this.out.byte(OP.BININT2, v & 0xff, v >>> 8);
    if (v >= -0x80000000 && v <= 0x7fffffff) {
      this.out.byte(OP.BININT);
      return this.out.u32(v >>> 0);
    }
    // LONG1: minimal two's-complement little-endian bytes.
    let x = BigInt(v);
    const bytes: number[] = [];
    while (true) {
      const b = Number(x & 0xffn);
      bytes.push(b);
      x >>= 8n;
      if ((x === 0n && !(b & 0x80)) || (x === -1n && b & 0x80)) break;
    }
    this.out.byte(OP.LONG1, bytes.length, ...bytes);
  }

  float(v: number) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, false);
    this.out.byte(OP.BINFLOAT);
    this.out.bytes(b);
  }

  tuple(items: (() => void)[]) {
    if (items.length === 0) return this.out.byte(OP.EMPTY_TUPLE);
    if (items.length > 3) this.out.byte(OP.MARK);
    for (const f of items) f();
    this.out.byte([OP.TUPLE, OP.TUPLE1, OP.TUPLE2, OP.TUPLE3][items.length > 3 ? 0 : items.length]);
  }

  emptyOrderedDict() {
    this.global("collections", "OrderedDict");
    this.out.byte(OP.EMPTY_TUPLE, OP.REDUCE);
    this.#put();
  }

  node(n: PickleNode): void {
    switch (n.kind) {
      case "scalar": {
        const v = n.value;
        if (v === null) return this.out.byte(OP.NONE);
        if (typeof v === "boolean") return this.out.byte(v ? OP.NEWTRUE : OP.NEWFALSE);
        if (typeof v === "string") return this.str(v);
        return Number.isSafeInteger(v) ? this.int(v) : this.float(v);
      }
      case "list": {
        this.out.byte(OP.EMPTY_LIST);
        this.#put();
        for (let i = 0; i < n.items.length; i += BATCH) {
          this.out.byte(OP.MARK);
          for (const x of n.items.slice(i, i + BATCH)) this.node(x);
          this.out.byte(OP.APPENDS);
        }
        return;
      }
      case "dict": {
        if (n.ordered) this.emptyOrderedDict();
        else (this.out.byte(OP.EMPTY_DICT), this.#put());
        for (let i = 0; i < n.entries.length; i += BATCH) {
          this.out.byte(OP.MARK);
          for (const [k, x] of n.entries.slice(i, i + BATCH)) {
            this.str(k);
            this.node(x);
          }
          this.out.byte(OP.SETITEMS);
        }
        return;
      }
      case "tensor":
        return this.tensor(n);
    }
  }

  tensor(t: Extract<PickleNode, { kind: "tensor" }>) {
    // C-contiguous strides, as torch.save writes a contiguous tensor.
    const stride = t.shape.map((_, d) => t.shape.slice(d + 1).reduce((a, b) => a * b, 1));
    this.global("torch._utils", "_rebuild_tensor_v2");
    this.out.byte(OP.MARK);
    this.tuple([
      () => this.str("storage", true),
      () => this.global("torch", DTYPE_TORCH_STORAGE[t.dtype]),
      () => this.str(t.storageKey),
      () => this.str("cpu", true),
      () => this.int(t.numel),
    ]);
    this.out.byte(OP.BINPERSID);
    this.int(0);
    this.tuple(t.shape.map((d) => () => this.int(d)));
    this.tuple(stride.map((s) => () => this.int(s)));
    this.out.byte(OP.NEWFALSE);
    this.emptyOrderedDict();
    this.out.byte(OP.TUPLE, OP.REDUCE);
  }
}
