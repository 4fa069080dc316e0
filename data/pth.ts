/**
 * Reader for PyTorch `.pth` checkpoints in torch's zip serialization (torch
 * ≥ 1.6): `<archive>/data.pkl` (the pickled object, read with the restricted
 * unpickler) plus one raw little-endian file per storage,
 * `<archive>/data/<key>`. Tensors are TensorRecords whose bytes are read from
 * the archive only when asked for, so a 4.5 GB checkpoint opens in
 * milliseconds and reads tensor by tensor.
 *
 * Every tensor is validated when the file opens: its storage entry exists,
 * is as long as the pickle says, and holds every element its size × stride
 * view reaches. Every zip entry's CRC-32 is checked the first time its bytes
 * are read (data.pkl at open, a storage when a tensor is first read), so no
 * damaged byte reaches a tensor.
 *
 * Names, nesting and everything the unpickler copies are capped
 * (data/limits.ts): a tensor's name is built from the dict keys leading to it,
 * and a pickle can reuse one long key at every level, so the name length is
 * checked before any name is joined, and names are charged to the pickle's
 * allocation budget.
 */
import { DTYPE_SIZE, type DtypeName, takeFloat32 } from "./dtypes.ts";
import { CorruptFileError, MissingKeyError, UnsupportedFormatError } from "./errors.ts";
import { type FileSource, RandomAccessFile } from "./file.ts";
import { AllocationBudget, COST, limitError, LIMITS } from "./limits.ts";
import {
  describe,
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
} from "./pickle.ts";
import { OpenTensorFile, type TensorRecord } from "./record.ts";
import { gatherStrided, isContiguous, numelOf, viewExtent } from "./strided.ts";
import { type ZipEntry, ZipReader } from "./zip.ts";

/** A loaded checkpoint value: the unpickled object with tensors as TensorRecords. */
export type PthValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | TensorRecord
  | PthValue[]
  | PthDict;

/**
 * A dict or OrderedDict of the checkpoint, in file order. Tuples and sets
 * come out as arrays; dtype, device and class objects as their names
 * ("torch.float32", "cuda:0", "collections.OrderedDict").
 */
export class PthDict extends Map<string | number | bigint | boolean | null, PthValue> {
  /** True for collections.OrderedDict (what `model.state_dict()` returns). */
  ordered = false;
  /** OrderedDict attributes (`_metadata`) as the pickle set them; informational only. */
  state?: PickleValue;
}

/** Options of openPth. */
export interface OpenPthOptions {
  /**
   * Check each zip entry's CRC-32 the first time it is read (default true):
   * data.pkl when the file opens, a storage when one of its tensors is first
   * read, streamed with that read.
   */
  verify?: boolean;
}

/** A tensor of a .pth archive, read lazily from its storage entry. */
export class PthTensor implements TensorRecord {
  readonly name: string;
  readonly dtype: DtypeName;
  readonly shape: readonly number[];
  readonly stride: readonly number[];
  /** Offset into the storage, in elements. */
  readonly storageOffset: number;
  /** Key of the storage under `<archive>/data/`; tensors sharing a storage share the key. */
  readonly storageKey: string;
  readonly requiresGrad: boolean;
  readonly numel: number;
  #zip: ZipReader;
  #entry: ZipEntry;

  constructor(zip: ZipReader, entry: ZipEntry, name: string, ref: TensorRef) {
    this.name = name;
    this.dtype = ref.storage.dtype;
    this.shape = ref.shape;
    this.stride = ref.stride;
    this.storageOffset = ref.offset;
    this.storageKey = ref.storage.key;
    this.requiresGrad = ref.requiresGrad;
    this.numel = numelOf(ref.shape);
    this.#zip = zip;
    this.#entry = entry;
  }

  /**
   * C-contiguous little-endian bytes; non-contiguous views are gathered.
   * The storage's CRC-32 is checked on its first read (ZipReader).
   */
  async bytes(): Promise<Uint8Array> {
    const size = DTYPE_SIZE[this.dtype];
    if (this.numel === 0) return new Uint8Array(0);
    if (isContiguous(this.shape, this.stride)) {
      return await this.#zip.readRange(this.#entry, this.storageOffset * size, this.numel * size);
    }
    // Read only the span the view touches, then gather it.
    const { first, end } = viewExtent(this.shape, this.stride, this.storageOffset);
    const span = await this.#zip.readRange(this.#entry, first * size, (end - first) * size);
    return gatherStrided(span, size, this.shape, this.stride, 0);
  }

  /** Values as float32 (the source dtype stays in `dtype`). */
  async f32(): Promise<Float32Array> {
    return takeFloat32(await this.bytes(), this.dtype);
  }
}

/**
 * An open .pth checkpoint. Close it when done (or `using ckpt = await openPth(…)`).
 * Its `tensors` are every tensor by its dotted path from the root
 * ("teacher.backbone.cls_token"; list items by index; a bare
 * `torch.save(tensor)` is "(root)"), in file order; a tensor reachable twice
 * is listed under its first path.
 */
export class PthCheckpoint extends OpenTensorFile {
  /** The folder every entry lives in ("archive", or the saved file's stem). */
  readonly archiveName: string;
  /** The unpickled object: usually a PthDict (a state dict, or {"teacher": state dict}). */
  readonly root: PthValue;

  constructor(
    zip: ZipReader,
    archiveName: string,
    root: PthValue,
    tensors: Map<string, TensorRecord>,
  ) {
    super(zip.path, tensors, zip);
    this.archiveName = archiveName;
    this.root = root;
  }
}

/**
 * Opens a torch.save'd checkpoint. Throws a CheckpointError (naming the file
 * and the entry or tensor) for anything that is not a safe, intact
 * zip-serialized checkpoint of tensors and containers.
 */
export async function openPth(
  source: FileSource,
  opts: OpenPthOptions = {},
): Promise<PthCheckpoint> {
  const file = await RandomAccessFile.open(source);
  const path = file.path;
  try {
    await refuseNonZip(file);
  } catch (e) {
    file.close();
    throw e;
  }
  const zip = await ZipReader.open(file, { verify: opts.verify ?? true });
  try {
    const archive = archiveName(zip);
    const byteorder = zip.entry(`${archive}/byteorder`);
    if (byteorder) {
      const order = new TextDecoder().decode(await zip.read(byteorder)).trim();
      if (order !== "little") {
        throw new UnsupportedFormatError("storages are not little-endian", {
          file: path,
          key: byteorder.name,
          expected: "little",
          found: JSON.stringify(order),
          fix: "re-save the checkpoint with torch.save on a little-endian machine",
        });
      }
    }
    const pklName = `${archive}/data.pkl`;
    const pklEntry = zip.require(pklName);
    const pkl = await zip.read(pklEntry);
    // Sized by the pickle's bytes as stored: a deflated pickle gets no more than its file bytes.
    const budget = new AllocationBudget(path, pklName, pklEntry.compressedSize);
    const value = unpickle(pkl, { file: path, entry: pklName }, budget);
    const tensors = new Map<string, TensorRecord>();
    const root = new Resolver(zip, archive, tensors, budget).value(value, 0);
    return new PthCheckpoint(zip, archive, root, tensors);
  } catch (e) {
    zip.close();
    throw e;
  }
}

/** Legacy (pre-1.6) torch.save files are a bare pickle stream, not a zip: say so plainly. */
async function refuseNonZip(file: RandomAccessFile): Promise<void> {
  const head = await file.readAt(0, Math.min(4, file.size), "file header");
  const isZip = head.length === 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 3 &&
    head[3] === 4;
  if (isZip) return;
  if (head[0] === 0x80) {
    throw new UnsupportedFormatError(
      "legacy torch.save format (PyTorch < 1.6 or _use_new_zipfile_serialization=False)",
      {
        file: file.path,
        key: "file header",
        fix: "re-save it with a newer PyTorch: torch.save(torch.load(old), new)",
      },
    );
  }
  throw new CorruptFileError("not a PyTorch zip checkpoint", {
    file: file.path,
    key: "file header",
    expected: "a zip archive (bytes PK\\x03\\x04)",
    found: [...head].map((b) => b.toString(16).padStart(2, "0")).join(" ") || "an empty file",
  });
}

/** The archive folder holding data.pkl: the first entry's top folder, as torch's reader picks it. */
function archiveName(zip: ZipReader): string {
  const first = zip.entries[0]?.name ?? "";
  const top = first.split("/")[0];
  if (first.includes("/") && zip.entry(`${top}/data.pkl`)) return top;
  const pkl = zip.entries.find((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (pkl) return pkl.name.split("/")[0];
  const jit = zip.entries.some((e) => /^[^/]+\/constants\.pkl$/.test(e.name));
  throw new CorruptFileError(
    jit
      ? "this is a TorchScript archive (torch.jit.save), not a state dict"
      : "no <archive>/data.pkl in the zip",
    {
      file: zip.path,
      key: "data.pkl",
      fix: jit
        ? "save the weights with torch.save(model.state_dict(), path)"
        : "the file is not a torch.save checkpoint",
    },
  );
}

/**
 * Turns unpickled values into PthValues, validating and wrapping every
 * tensor. Walks depth first with one path stack (keys by reference, never
 * copied); nesting is capped, so the recursion is too.
 */
class Resolver {
  #done = new Map<object, PthValue>();
  /** Keys from the root to the value at hand. */
  #path: (string | number)[] = [];
  /** Length of `#path.join(".")`, kept without joining. */
  #nameChars = 0;
  /** Bytes of every tensor so far, as read (views counted in full). */
  #logical = 0;

  constructor(
    readonly zip: ZipReader,
    readonly archive: string,
    readonly tensors: Map<string, TensorRecord>,
    readonly budget: AllocationBudget,
  ) {}

  /** The first keys of the path, for messages (never the whole of a long one). */
  #where(): string {
    const shown = this.#path.slice(0, 8).map((k) => {
      const s = String(k);
      return s.length > 40 ? s.slice(0, 40) + "…" : s;
    });
    return (shown.join(".") || "(root)") + (this.#path.length > 8 ? ".…" : "");
  }

  /** Resolves `x` under key `k` of the value at hand. */
  #child(k: string | number, x: PickleValue, depth: number): PthValue {
    if (x === null || typeof x !== "object" || x instanceof Uint8Array) return x;
    const before = this.#nameChars;
    this.#nameChars += String(k).length + (this.#path.length > 0 ? 1 : 0);
    this.#path.push(k);
    try {
      return this.value(x, depth + 1);
    } finally {
      this.#path.pop();
      this.#nameChars = before;
    }
  }

  value(v: PickleValue, depth: number): PthValue {
    if (v === null || typeof v !== "object" || v instanceof Uint8Array) return v;
    if (depth > LIMITS.nesting) {
      throw limitError(this.zip.path, this.#where(), "container nesting", LIMITS.nesting, depth);
    }
    // Shared (and cyclic) containers resolve once; the first path names their tensors.
    const seen = this.#done.get(v);
    if (seen !== undefined) return seen;
    if (v instanceof TensorRef) {
      if (this.#nameChars > LIMITS.nameChars) {
        throw limitError(
          this.zip.path,
          this.#where(),
          "tensor name length (its dict keys joined by dots)",
          LIMITS.nameChars,
          this.#nameChars,
        );
      }
      // Names are built from keys the pickle may share: charged, like everything built here.
      this.budget.charge(
        4 * COST.object + COST.char * this.#nameChars,
        () => `the name of tensor ${this.#where()}`,
      );
      const t = this.tensor(v, this.#path.join("."));
      this.#done.set(v, t);
      return t;
    }
    if (v instanceof PickleDict) {
      this.budget.charge(COST.object + COST.element * v.size, () => this.#where());
      const d = new PthDict();
      d.ordered = v.ordered;
      d.state = v.state;
      this.#done.set(v, d);
      for (const [k, x] of v) {
        d.set(k, this.#child(typeof k === "number" ? k : String(k), x, depth));
      }
      return d;
    }
    if (Array.isArray(v) || v instanceof PickleTuple || v instanceof PickleSet) {
      const items = Array.isArray(v) ? v : v.items;
      this.budget.charge(COST.object + COST.element * items.length, () => this.#where());
      const out: PthValue[] = [];
      this.#done.set(v, out);
      for (let i = 0; i < items.length; i++) out.push(this.#child(i, items[i], depth));
      return out;
    }
    if (v instanceof TorchDtype) return v.name;
    if (v instanceof TorchDevice) return v.spec;
    if (v instanceof PickleGlobal) return v.qualified;
    if (v instanceof StorageRef) {
      throw new UnsupportedFormatError("a bare storage (not inside a tensor) is not supported", {
        file: this.zip.path,
        key: this.#where(),
        found: describe(v),
      });
    }
    return v satisfies never;
  }

  tensor(ref: TensorRef, name: string): TensorRecord {
    const file = this.zip.path;
    const key = name || "(root)";
    const entryName = `${this.archive}/data/${ref.storage.key}`;
    const entry = this.zip.entry(entryName);
    if (!entry) {
      throw new MissingKeyError("tensor's storage is missing from the archive", {
        file,
        key,
        expected: `zip entry ${entryName}`,
        found: "none (the file is incomplete)",
      });
    }
    const size = DTYPE_SIZE[ref.storage.dtype];
    if (ref.shape.length !== ref.stride.length) {
      throw new CorruptFileError("size and stride have different lengths", {
        file,
        key,
        expected: `${ref.shape.length} strides for size [${ref.shape}]`,
        found: `[${ref.stride}]`,
      });
    }
    const declared = ref.storage.numel * size;
    if (entry.size < declared) {
      throw new CorruptFileError("storage entry is shorter than the pickle declares", {
        file,
        key: `${key} (storage ${entryName})`,
        expected: `${declared} bytes (${ref.storage.numel} × ${ref.storage.dtype})`,
        found: `${entry.size} bytes`,
      });
    }
    const { end } = viewExtent(ref.shape, ref.stride, ref.offset);
    const available = Math.floor(entry.size / size);
    if (end > available) {
      throw new CorruptFileError("size × stride needs more elements than its storage holds", {
        file,
        key: `${key} (storage ${entryName})`,
        expected: `at most ${available} elements`,
        found:
          `size [${ref.shape}], stride [${ref.stride}], offset ${ref.offset} reaching element ${end}`,
      });
    }
    // Stride-0 views may expand a storage; cap the copy at the file's size so a crafted
    // header cannot make us allocate more than the file holds.
    const bytes = numelOf(ref.shape) * size;
    if (!(bytes <= this.zip.file.size)) {
      throw new CorruptFileError("tensor would need more bytes than the whole file", {
        file,
        key,
        expected: `at most ${this.zip.file.size} bytes`,
        found: `${bytes} bytes for size [${ref.shape}]`,
      });
    }
    // Views may overlap (stride 0, or several over one storage): all tensors together may
    // reach a small multiple of the file, not one file per tensor.
    this.#logical += bytes;
    const most = LIMITS.budgetFixed + LIMITS.budgetPerByte * this.zip.file.size;
    if (this.#logical > most) {
      throw limitError(file, key, "bytes of all tensors together", most, this.#logical);
    }
    const t = new PthTensor(this.zip, entry, key, ref);
    if (!this.tensors.has(key)) this.tensors.set(key, t);
    return t;
  }
}
