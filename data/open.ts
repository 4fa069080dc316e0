/**
 * Opens any tensor file bloom reads (.pth, .safetensors, .npy) by looking at
 * its first bytes rather than its name, and selects sub-dicts of a
 * checkpoint by key prefix (DinoBloom's `teacher.backbone.` keys).
 */
import { CorruptFileError } from "./errors.ts";
import { type FileSource, RandomAccessFile } from "./file.ts";
import { openNpy } from "./npy.ts";
import { openPth } from "./pth.ts";
import type { TensorFile, TensorRecord } from "./record.ts";
import { openSafetensors } from "./safetensors.ts";

/** File formats openTensorFile recognises. */
export type TensorFileFormat = "pth" | "safetensors" | "npy";

/** The format of the file at `path` (or of a ByteSource), from its first bytes; CorruptFileError if none fits. */
export async function sniffFormat(path: FileSource): Promise<TensorFileFormat> {
  const f = await RandomAccessFile.open(path);
  let head: Uint8Array;
  try {
    head = await f.readAt(0, Math.min(9, f.size), "file header");
  } finally {
    f.close();
  }
  if (head[0] === 0x50 && head[1] === 0x4b) return "pth"; // "PK": zip
  if (head[0] === 0x93 && String.fromCharCode(...head.subarray(1, 6)) === "NUMPY") return "npy";
  if (head.length === 9 && head[8] === 0x7b) return "safetensors"; // u64 length, then "{"
  if (head[0] === 0x80) return "pth"; // a legacy pickle: openPth explains what to do
  throw new CorruptFileError("not a .pth, .safetensors or .npy file", {
    file: f.path,
    key: "file header",
    expected: "the first bytes of a .pth (zip), .safetensors or .npy file",
    found: [...head].map((b) => b.toString(16).padStart(2, "0")).join(" ") || "an empty file",
  });
}

/** Opens `path` (or a ByteSource) with the reader its content calls for. */
export async function openTensorFile(path: FileSource): Promise<TensorFile> {
  switch (await sniffFormat(path)) {
    case "pth":
      return await openPth(path);
    case "safetensors":
      return await openSafetensors(path);
    case "npy":
      return await openNpy(path);
  }
}

/**
 * The tensors whose names start with `prefix`, renamed without it, in file
 * order: `withPrefix(ckpt.tensors, "teacher.backbone.")` gives a DinoBloom
 * checkpoint's backbone under DINOv2's own key names.
 */
export function withPrefix(
  tensors: ReadonlyMap<string, TensorRecord>,
  prefix: string,
): Map<string, TensorRecord> {
  const out = new Map<string, TensorRecord>();
  for (const [name, t] of tensors) {
    if (name.startsWith(prefix)) out.set(name.slice(prefix.length), t);
  }
  return out;
}
