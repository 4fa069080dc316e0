/**
 * Writes `.pth` checkpoints that plain `torch.load(path)` (and
 * `weights_only=True`) reads: torch's zip layout (`archive/data.pkl`,
 * `archive/byteorder`, `archive/data/<key>`, `archive/version`) with
 * 64-byte-aligned stored entries, ZIP64 past 4 GiB, and a protocol-2 pickle
 * of the same shape torch.save emits. Tensors are fetched and written one at
 * a time, so converting a large checkpoint never holds it all in memory.
 */
import { InvalidTensorError } from "./errors.ts";
import { pickle, type PickleNode } from "./pickle_writer.ts";
import {
  checkSource,
  isTensorData,
  isTensorRecord,
  sourceBytes,
  type TensorSource,
} from "./record.ts";
import { ZipWriter } from "./zip_writer.ts";

/**
 * What writePth takes: a plain object becomes a Python dict, a Map an
 * OrderedDict (what `model.state_dict()` is); values are tensors, nested
 * dicts, lists, or scalars (integers, floats, strings, booleans, null).
 */
export type PthTree = { [key: string]: PthLeaf } | Map<string, PthLeaf>;
/** A value inside a PthTree. */
export type PthLeaf = TensorSource | PthTree | PthLeaf[] | number | string | boolean | null;

/** Options of writePth. */
export interface WritePthOptions {
  /** Folder inside the zip (torch ≥ 2 writes "archive"; torch 1.x the file's stem). */
  archiveName?: string;
  /** ZIP64 records: "auto" (past 4 GiB) or "always". */
  zip64?: "auto" | "always";
}

/** torch.save's current serialization version record. */
const VERSION = "3\n";
const MAX_DEPTH = 1000;

interface Planned {
  name: string;
  key: string;
  source: TensorSource;
}

/**
 * Writes `tree` to `path` atomically (via `path.tmp`). Throws
 * InvalidTensorError naming the key for a bad tensor or value.
 */
export async function writePth(
  path: string,
  tree: PthTree,
  opts: WritePthOptions = {},
): Promise<void> {
  const archive = opts.archiveName ?? "archive";
  if (!/^[A-Za-z0-9_.-]+$/.test(archive) || archive === "." || archive === "..") {
    throw new InvalidTensorError("bad archive name", {
      file: path,
      key: "archiveName",
      expected: "letters, digits, '_', '-', '.'",
      found: JSON.stringify(archive),
    });
  }
  const planned: Planned[] = [];
  const root = plan(path, tree, planned);
  const pkl = pickle(root);
  const zip = await ZipWriter.create(path, { zip64: opts.zip64 });
  try {
    const enc = new TextEncoder();
    await zip.add(`${archive}/data.pkl`, pkl);
    await zip.add(`${archive}/byteorder`, enc.encode("little"));
    for (const t of planned) {
      await zip.add(`${archive}/data/${t.key}`, await sourceBytes(path, t.name, t.source));
    }
    await zip.add(`${archive}/version`, enc.encode(VERSION));
    await zip.finish();
  } catch (e) {
    await zip.abort();
    throw e;
  }
}

/** Converts the user's tree to pickle nodes, assigning storage keys; shared tensor objects share one. */
function plan(file: string, tree: PthTree, out: Planned[]): PickleNode {
  const keys = new Map<TensorSource, string>();
  const onPath = new Set<object>();

  const walk = (v: PthLeaf, name: string, depth: number): PickleNode => {
    const where = name || "(root)";
    if (v === null || typeof v === "boolean" || typeof v === "string") {
      return { kind: "scalar", value: v };
    }
    if (typeof v === "number") {
      if (Number.isNaN(v) || (Number.isInteger(v) && !Number.isSafeInteger(v))) {
        throw new InvalidTensorError("number cannot be pickled exactly", {
          file,
          key: where,
          expected: "a safe integer or a finite float",
          found: String(v),
        });
      }
      return { kind: "scalar", value: v };
    }
    if (typeof v !== "object") {
      throw new InvalidTensorError("value cannot be saved", { file, key: where, found: typeof v });
    }
    if (depth > MAX_DEPTH || onPath.has(v)) {
      throw new InvalidTensorError("tree is cyclic or nested too deeply", { file, key: where });
    }
    if (isTensorRecord(v) || isTensorData(v)) {
      const numel = checkSource(file, where, v);
      let key = keys.get(v);
      if (key === undefined) {
        key = String(out.length);
        keys.set(v, key);
        out.push({ name: where, key, source: v });
      }
      return { kind: "tensor", storageKey: key, dtype: v.dtype, shape: [...v.shape], numel };
    }
    onPath.add(v);
    try {
      if (Array.isArray(v)) {
        return { kind: "list", items: v.map((x, i) => walk(x, join(name, String(i)), depth + 1)) };
      }
      if (ArrayBuffer.isView(v)) {
        throw new InvalidTensorError("a bare typed array is not a tensor", {
          file,
          key: where,
          fix: "wrap it as { dtype, shape, data }",
        });
      }
      const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
      const ordered = v instanceof Map;
      return {
        kind: "dict",
        ordered,
        entries: entries.map(([k, x]) => {
          if (typeof k !== "string") {
            throw new InvalidTensorError("dict keys must be strings", {
              file,
              key: where,
              found: typeof k,
            });
          }
          return [k, walk(x, join(name, k), depth + 1)];
        }),
      };
    } finally {
      onPath.delete(v);
    }
  };
  return walk(tree, "", 0);
}

function join(prefix: string, key: string): string {
  return prefix ? `${prefix}.${key}` : key;
}
