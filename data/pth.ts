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
 * view reaches.
 */
import { DTYPE_SIZE, type DtypeName, takeFloat32 } from "./dtypes.ts";
import { CorruptFileError, MissingKeyError, UnsupportedFormatError } from "./errors.ts";
import { RandomAccessFile } from "./file.ts";
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
import { missingTensor, type TensorFile, type TensorRecord } from "./record.ts";
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
  /** Check each storage's CRC-32 on every read (torch's own reader does not). Default false. */
  verifyStorages?: boolean;
}

/** Nesting deeper than this is refused (torch's pickler itself stops at Python's 1000 frames). */
const MAX_DEPTH = 1000;

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
  #verify: boolean;

  constructor(zip: ZipReader, entry: ZipEntry, name: string, ref: TensorRef, verify: boolean) {
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
    this.#verify = verify;
  }

  /** C-contiguous little-endian bytes; non-contiguous views are gathered. */
  async bytes(): Promise<Uint8Array> {
    const size = DTYPE_SIZE[this.dtype];
    if (this.numel === 0) return new Uint8Array(0);
    if (this.#verify) {
      const all = await this.#zip.read(this.#entry, true);
      return gatherStrided(all, size, this.shape, this.stride, this.storageOffset);
    }
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

/** An open .pth checkpoint. Close it when done (or `using ckpt = await openPth(…)`). */
export class PthCheckpoint implements TensorFile {
  readonly path: string;
  /** The folder every entry lives in ("archive", or the saved file's stem). */
  readonly archiveName: string;
  /** The unpickled object: usually a PthDict (a state dict, or {"teacher": state dict}). */
  readonly root: PthValue;
  /**
   * Every tensor by its dotted path from the root ("teacher.backbone.cls_token"; list items by
   * index; a bare `torch.save(tensor)` is "(root)"), in file order. A tensor reachable twice is
   * listed under its first path.
   */
  readonly tensors: ReadonlyMap<string, TensorRecord>;
  #zip: ZipReader;

  constructor(
    zip: ZipReader,
    archiveName: string,
    root: PthValue,
    tensors: Map<string, TensorRecord>,
  ) {
    this.path = zip.path;
    this.#zip = zip;
    this.archiveName = archiveName;
    this.root = root;
    this.tensors = tensors;
  }

  /** The tensor called `name` (dotted path, e.g. "teacher.backbone.cls_token"). */
  tensor(name: string): TensorRecord {
    const t = this.tensors.get(name);
    if (!t) throw missingTensor(this.path, name, this.tensors.keys());
    return t;
  }

  /** Closes the archive. */
  close(): void {
    this.#zip.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Opens a torch.save'd checkpoint. Throws a CheckpointError (naming the file
 * and the entry or tensor) for anything that is not a safe, intact
 * zip-serialized checkpoint of tensors and containers.
 */
export async function openPth(path: string, opts: OpenPthOptions = {}): Promise<PthCheckpoint> {
  const file = await RandomAccessFile.open(path);
  try {
    await refuseNonZip(file);
  } catch (e) {
    file.close();
    throw e;
  }
  const zip = await ZipReader.open(file);
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
    const pkl = await zip.read(zip.require(pklName));
    const value = unpickle(pkl, { file: path, entry: pklName });
    const tensors = new Map<string, TensorRecord>();
    const root = new Resolver(zip, archive, tensors, opts.verifyStorages ?? false).value(
      value,
      [],
      0,
    );
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

/** Turns unpickled values into PthValues, validating and wrapping every tensor. */
class Resolver {
  #done = new Map<object, PthValue>();
  constructor(
    readonly zip: ZipReader,
    readonly archive: string,
    readonly tensors: Map<string, TensorRecord>,
    readonly verify: boolean,
  ) {}

  value(v: PickleValue, path: (string | number)[], depth: number): PthValue {
    if (v === null || typeof v !== "object" || v instanceof Uint8Array) return v;
    if (depth > MAX_DEPTH) {
      throw new UnsupportedFormatError("containers nested too deeply", {
        file: this.zip.path,
        key: path.slice(0, 8).join(".") + "…",
        expected: `at most ${MAX_DEPTH} levels`,
      });
    }
    // Shared (and cyclic) containers resolve once; the first path names their tensors.
    const seen = this.#done.get(v);
    if (seen !== undefined) return seen;
    if (v instanceof TensorRef) {
      const t = this.tensor(v, path.join("."));
      this.#done.set(v, t);
      return t;
    }
    if (v instanceof PickleDict) {
      const d = new PthDict();
      d.ordered = v.ordered;
      d.state = v.state;
      this.#done.set(v, d);
      for (const [k, x] of v) {
        d.set(k, this.value(x, [...path, typeof k === "number" ? k : String(k)], depth + 1));
      }
      return d;
    }
    if (Array.isArray(v) || v instanceof PickleTuple || v instanceof PickleSet) {
      const items = Array.isArray(v) ? v : v.items;
      const out: PthValue[] = [];
      this.#done.set(v, out);
      for (let i = 0; i < items.length; i++) {
        out.push(this.value(items[i], [...path, i], depth + 1));
      }
      return out;
    }
    if (v instanceof TorchDtype) return v.name;
    if (v instanceof TorchDevice) return v.spec;
    if (v instanceof PickleGlobal) return v.qualified;
    if (v instanceof StorageRef) {
      throw new UnsupportedFormatError("a bare storage (not inside a tensor) is not supported", {
        file: this.zip.path,
        key: path.join(".") || "(root)",
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
    const t = new PthTensor(this.zip, entry, key, ref, this.verify);
    if (!this.tensors.has(key)) this.tensors.set(key, t);
    return t;
  }
}
