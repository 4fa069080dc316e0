/**
 * Structure-aware `.pth` generation: a random object (state dicts, nested
 * containers, tensors and views over shared storages, parameters, subclass
 * rebuilds, torch.Size, sets, bytearrays, devices, dtypes, memo reuse and
 * now and then a known attack shape) pickled opcode by opcode, then zipped
 * the way torch lays it out (or ZIP64, deflated, reordered, missing or short
 * storages). The pickle and the archive are then damaged, or not.
 */
import { PickleOps, pthBytes, zipBytes, type ZipInput } from "./build.ts";
import { type FuzzRng, mutateMany, writeLe } from "./mutate.ts";

const STORAGES: [string, number][] = [
  ["FloatStorage", 4],
  ["HalfStorage", 2],
  ["BFloat16Storage", 2],
  ["DoubleStorage", 8],
  ["LongStorage", 8],
  ["IntStorage", 4],
  ["ShortStorage", 2],
  ["CharStorage", 1],
  ["ByteStorage", 1],
  ["BoolStorage", 1],
];

interface Storage {
  key: string;
  cls: string;
  numel: number;
  bytes: number;
}

/** Emits pickle ops for a random value, tracking storages and memo slots. */
class PickleGen {
  readonly p = new PickleOps();
  readonly storages: Storage[] = [];
  #memo = 0;
  #slots: number[] = [];
  #budget: number;

  constructor(readonly rng: FuzzRng, budget = 200) {
    this.#budget = budget;
  }

  /** Pushes one value; sometimes memoises it for later reuse. */
  value(depth: number): void {
    const r = this.rng;
    this.#budget--;
    if (this.#slots.length > 0 && r.chance(0.08)) {
      this.p.get(r.pick(this.#slots));
      return;
    }
    const leaf = depth > 4 || this.#budget <= 0;
    const kind = leaf ? r.pick(["scalar", "tensor", "tensor"]) : r.pick([
      "scalar",
      "tensor",
      "tensor",
      "tensor",
      "dict",
      "dict",
      "odict",
      "list",
      "tuple",
      "param",
      "subclass",
      "size",
      "set",
      "bytearray",
      "encode",
      "device",
      "dtype",
    ]);
    this.#emit(kind, depth);
    if (r.chance(0.15)) {
      this.p.put(this.#memo);
      this.#slots.push(this.#memo++);
    }
  }

  #key(): void {
    const r = this.rng;
    if (r.chance(0.1)) this.p.int(r.int(100));
    else {
      this.p.str(
        r.pick(["weight", "bias", "teacher", "backbone", "blocks", "0", "pos_embed", "k", "état"]) +
          (r.chance(0.3) ? `.${r.int(12)}` : ""),
      );
    }
  }

  #tensorArgs(): void {
    const r = this.rng;
    const p = this.p;
    let st: Storage;
    if (this.storages.length > 0 && r.chance(0.4)) st = r.pick(this.storages);
    else {
      const [cls, size] = r.pick(STORAGES);
      const numel = r.size(24);
      st = { key: String(this.storages.length), cls, numel, bytes: numel * size };
      this.storages.push(st);
    }
    const rank = r.chance(0.05) ? r.range(5, 70) : r.int(4);
    const shape = Array.from(
      { length: rank },
      () => (r.chance(0.05) ? r.size(1 << 20) : r.size(4)),
    );
    let stride: number[];
    const mode = r.int(5);
    if (mode <= 1) {
      stride = new Array(rank);
      let acc = 1;
      for (let d = rank - 1; d >= 0; d--) (stride[d] = acc), (acc *= Math.max(1, shape[d]));
    } else if (mode === 2) stride = shape.map(() => 0);
    else if (mode === 3) stride = shape.map(() => r.size(8));
    else stride = shape.map(() => r.chance(0.5) ? r.size(1 << 30) : r.int(3));
    if (r.chance(0.05)) stride.push(1); // rank mismatch
    p.mark().mark().str("storage").global(r.chance(0.97) ? "torch" : "torch.storage", st.cls)
      .str(r.chance(0.97) ? st.key : r.pick(["../x", "", "a/b", "x".repeat(300)]))
      .str(r.pick(["cpu", "cuda:0"])).int(r.chance(0.9) ? st.numel : r.size(1 << 20)).tuple()
      .binpersid().int(r.chance(0.85) ? 0 : r.size(8));
    p.mark();
    for (const d of shape) p.int(d);
    p.tuple().mark();
    for (const s of stride) p.int(s);
    p.tuple().bool(r.chance(0.3)).global("collections", "OrderedDict").emptyTuple().reduce();
    if (r.chance(0.1)) p.emptyDict(); // metadata (7 args)
    p.tuple();
  }

  #emit(kind: string, depth: number): void {
    const r = this.rng;
    const p = this.p;
    switch (kind) {
      case "scalar":
        switch (r.int(6)) {
          case 0:
            return void p.int(r.chance(0.5) ? r.int(1000) : r.range(-(2 ** 40), 2 ** 40));
          case 1:
            return void p.bool(r.chance(0.5));
          case 2:
            return void p.none();
          case 3:
            return void p.str(r.pick(["", "x", "cpu", "hello", "torch.float32"]));
          case 4:
            return void p.bytes(r.bytes(r.size(16)));
          default:
            return void p.raw(0x47, ...r.bytes(8)); // BINFLOAT
        }
      case "tensor":
        p.global("torch._utils", r.chance(0.9) ? "_rebuild_tensor_v2" : "_rebuild_tensor");
        this.#tensorArgs();
        return void p.reduce();
      case "dict":
      case "odict": {
        if (kind === "dict") p.emptyDict();
        else p.global("collections", "OrderedDict").emptyTuple().reduce();
        const n = r.size(6);
        if (n === 0) return;
        p.mark();
        for (let i = 0; i < n; i++) this.#key(), this.value(depth + 1);
        p.setitems();
        if (kind === "odict" && r.chance(0.3)) p.emptyDict().build(); // _metadata
        return;
      }
      case "list": {
        p.emptyList();
        const n = r.size(6);
        if (n === 0) return;
        p.mark();
        for (let i = 0; i < n; i++) this.value(depth + 1);
        return void p.appends();
      }
      case "tuple": {
        const n = r.size(5);
        p.mark();
        for (let i = 0; i < n; i++) this.value(depth + 1);
        return void p.tuple();
      }
      case "param":
        p.global("torch._utils", "_rebuild_parameter").mark();
        p.global("torch._utils", "_rebuild_tensor_v2");
        this.#tensorArgs();
        p.reduce().bool(true).global("collections", "OrderedDict").emptyTuple().reduce().tuple();
        return void p.reduce();
      case "subclass": {
        // _rebuild_from_type_v2 (func, type, args, state), nested a few (or many) levels.
        const levels = r.chance(0.1) ? r.range(5, 40) : 1 + r.int(2);
        p.global("torch._tensor", "_rebuild_from_type_v2");
        for (let i = 1; i < levels; i++) {
          p.mark().global("torch._tensor", "_rebuild_from_type_v2").global("torch", "Tensor");
        }
        p.mark().global("torch._utils", "_rebuild_tensor_v2").global("torch", "Tensor");
        this.#tensorArgs();
        p.emptyDict().tuple();
        for (let i = 1; i < levels; i++) p.emptyDict().tuple();
        return void p.reduce();
      }
      case "size": {
        p.global("torch", "Size").mark();
        for (let i = r.size(6); i > 0; i--) p.int(r.size(100));
        return void p.tuple().tuple1().reduce();
      }
      case "set":
        p.global(r.pick(["builtins", "__builtin__"]), r.pick(["set", "frozenset"])).emptyList();
        p.mark().int(1).str("a").appends();
        return void p.tuple1().reduce();
      case "bytearray":
        p.global("__builtin__", "bytearray").bytes(r.bytes(r.size(16))).tuple1();
        return void p.reduce();
      case "encode":
        p.global("_codecs", "encode").str(r.pick(["abc", "\u00ff\u0001", "é"]))
          .str(r.pick(["latin1", "latin-1", "utf8"])).tuple2();
        return void p.reduce();
      case "device":
        p.global("torch", "device").str(r.pick(["cuda", "cpu"])).int(r.int(4)).tuple2();
        return void p.reduce();
      default:
        return void p.global("torch", r.pick(["float32", "float16", "bfloat16", "int64", "bool"]));
    }
  }

  /** A known attack shape: one memoised blob, key or tuple reused many times over. */
  attack(): void {
    const r = this.rng;
    const p = this.p;
    // Bimodal sizes: small ones test the logic, large ones would take gigabytes without a budget.
    const big = r.chance(0.5);
    const calls = big ? r.range(3000, 6000) : r.range(10, 500);
    switch (r.int(7)) {
      case 0: // copies of a blob (issue 12, finding 3)
        p.global(r.pick(["__builtin__", "builtins"]), "bytearray").put(900_000).pop()
          .bytes(r.bytes(big ? r.range(32768, 65536) : r.range(1, 4096))).tuple1().put(900_001)
          .pop().emptyList();
        for (let i = 0; i < calls; i++) p.get(900_000).get(900_001).reduce().append();
        return;
      case 1: { // nested dicts under one long key, with tensors (finding 1)
        p.str("k".repeat(big ? r.range(10000, 30000) : r.range(1, 2000))).put(900_002).pop();
        const levels = big ? r.range(500, 1000) : r.range(2, 200);
        for (let i = 0; i < levels; i++) {
          p.emptyDict();
          if (r.chance(0.2)) {
            p.str("t").global("torch._utils", "_rebuild_tensor_v2");
            this.#tensorArgs();
            p.reduce().setitem();
          }
          p.get(900_002);
        }
        p.emptyDict();
        for (let i = 0; i < levels; i++) p.setitem();
        return;
      }
      case 2: { // one OrderedDict list made into many dicts
        p.global("collections", "OrderedDict").put(900_003).pop().emptyList().mark();
        for (let i = big ? r.range(300, 600) : r.range(1, 50); i > 0; i--) {
          p.str(`k${i}`).int(i).tuple2();
        }
        p.appends().tuple1().put(900_004).pop().emptyList();
        for (let i = 0; i < calls; i++) p.get(900_003).get(900_004).reduce().append();
        return;
      }
      case 3: { // torch.Size / set of one long memoised tuple, called many times
        const set = r.chance(0.5);
        p.global(set ? "builtins" : "torch", set ? "set" : "Size").put(900_006).pop();
        if (set) p.emptyList();
        p.mark();
        for (let i = big ? r.range(4096, 8192) : r.range(1, 500); i > 0; i--) p.int(1);
        (set ? p.appends() : p.tuple()).tuple1().put(900_007).pop().emptyList();
        for (let i = 0; i < calls; i++) p.get(900_006).get(900_007).reduce().append();
        return;
      }
      case 4: { // _rebuild_from_type_v2 nested thousands of levels (finding 11)
        const levels = r.range(9, 100_000);
        p.global("torch._tensor", "_rebuild_from_type_v2").put(900_008).pop();
        p.global("torch", "Tensor").put(900_009).pop();
        p.mark().global("torch._utils", "_rebuild_tensor_v2").get(900_009);
        this.#tensorArgs();
        p.emptyDict().tuple();
        for (let i = 0; i < levels; i++) {
          p.put(900_010).pop().mark().get(900_008).get(900_009).get(900_010).emptyDict().tuple();
        }
        p.put(900_010).pop().get(900_008).get(900_010).reduce();
        return;
      }
      case 5: { // one huge-rank size tuple shared by many tensors (rank × tensors of work)
        p.mark();
        for (let i = r.range(65, 50_000); i > 0; i--) p.int(1);
        p.tuple().put(900_011).pop().storage("0", 1).put(900_012).pop().emptyList();
        this.storages.push({ key: "0", cls: "FloatStorage", numel: 1, bytes: 4 });
        for (let i = 0; i < calls; i++) {
          p.global("torch._utils", "_rebuild_tensor_v2").mark().get(900_012).int(0)
            .get(900_011).get(900_011).bool(false).emptyDict().tuple().reduce().append();
        }
        return;
      }
      default: { // a list that contains itself, many times
        p.emptyList().put(900_005);
        for (let i = 0; i < calls; i++) p.get(900_005).append();
        return;
      }
    }
  }
}

/** A pickle and the storages it names. */
export interface GeneratedPickle {
  pickle: Uint8Array;
  storages: Storage[];
}

/** A random checkpoint pickle (protocol 2 or 4 header). */
export function generatePickle(rng: FuzzRng): GeneratedPickle {
  const g = new PickleGen(rng, rng.range(5, 200));
  g.p.proto(rng.pick([2, 2, 4]));
  if (rng.chance(0.1)) g.attack();
  else if (rng.chance(0.7)) {
    // A state dict, maybe DinoBloom's {"teacher": …} around it.
    const teacher = rng.chance(0.3);
    if (teacher) g.p.emptyDict().str("teacher");
    g.p.global("collections", "OrderedDict").emptyTuple().reduce().mark();
    for (let i = rng.size(12); i > 0; i--) {
      g.p.str(rng.pick(["cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "norm.bias"]) + i);
      g.value(2);
    }
    g.p.setitems();
    if (teacher) g.p.setitem();
  } else g.value(0);
  return { pickle: g.p.done(), storages: g.storages };
}

/** A random `.pth`: a generated pickle zipped as torch does, then perhaps damaged. */
export function generatePth(rng: FuzzRng): Uint8Array {
  const { pickle: pkl0, storages } = generatePickle(rng);
  let pkl = pkl0;
  // Damage the pickle before zipping, so the CRC is right and the damage reaches the unpickler.
  if (rng.chance(0.25)) pkl = mutateMany(pkl, rng, 2).bytes;
  const archive = rng.pick(["archive", "archive", "state_dict", "model", "x y"]);
  const data: Record<string, Uint8Array> = {};
  for (const s of storages) {
    if (rng.chance(0.03)) continue; // missing storage
    const len = rng.chance(0.05) ? rng.int(s.bytes + 1) : s.bytes;
    data[s.key] = rng.bytes(len);
  }
  let bytes: Uint8Array;
  if (rng.chance(0.15)) {
    // Entries shuffled, some deflated, odd extras: still a zip, not torch's exact layout.
    const entries: ZipInput[] = [
      { name: `${archive}/data.pkl`, data: pkl, deflate: rng.chance(0.3) },
      ...Object.entries(data).map(([k, d]) => ({
        name: `${archive}/data/${k}`,
        data: d,
        deflate: rng.chance(0.2),
      })),
    ];
    if (rng.chance(0.5)) {
      entries.push({
        name: `${archive}/byteorder`,
        data: new TextEncoder().encode(rng.pick(["little", "big", ""])),
      });
    }
    for (let i = entries.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [entries[i], entries[j]] = [entries[j], entries[i]];
    }
    if (rng.chance(0.1)) entries.push({ ...entries[0] }); // duplicate name
    bytes = zipBytes(entries, { zip64: rng.chance(0.3), pad: rng.pick([0, 0, 3, 40]) }).bytes;
  } else {
    bytes = pthBytes(pkl, data, { archive, zip64: rng.chance(0.2), pad: rng.pick([0, 20]) }).bytes;
  }
  const m = rng.int(10);
  if (m < 5) return bytes; // intact archive
  if (m < 8) return mutateMany(bytes, rng, 3).bytes;
  // Inflate a length, count or offset field of a zip record.
  const fields = zipFields(bytes);
  if (fields.length === 0) return bytes;
  const [at, w] = rng.pick(fields);
  writeLe(
    bytes,
    at,
    w,
    rng.pick([
      0n,
      1n,
      0xffffn,
      0xffffffffn,
      0x7fffffffn,
      BigInt(bytes.length),
      2n ** 63n,
      2n ** 53n,
    ]),
  );
  return bytes;
}

/** Positions and widths of a zip's length, offset and count fields, found by record signature. */
export function zipFields(b: Uint8Array): [number, 2 | 4 | 8][] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: [number, 2 | 4 | 8][] = [];
  for (let i = 0; i + 4 <= b.length; i++) {
    const sig = dv.getUint32(i, true);
    if (sig === 0x04034b50) out.push([i + 18, 4], [i + 22, 4], [i + 26, 2], [i + 28, 2]);
    else if (sig === 0x02014b50) {
      out.push([i + 20, 4], [i + 24, 4], [i + 28, 2], [i + 30, 2], [i + 32, 2], [i + 42, 4]);
    } else if (sig === 0x06054b50) out.push([i + 10, 2], [i + 12, 4], [i + 16, 4], [i + 20, 2]);
    else if (sig === 0x06064b50) out.push([i + 32, 8], [i + 40, 8], [i + 48, 8]);
    else if (sig === 0x07064b50) out.push([i + 8, 8]);
  }
  return out.filter(([p, w]) => p + w <= b.length);
}
