/**
 * What every layout produces: a list of planned samples (paths and labels,
 * never pixels) and a list of inputs it refused. Also the one place that
 * turns relative paths into sample keys.
 */
import { InputError } from "../../data/errors.ts";

/** A crop box in source pixels (VOC's inclusive-exclusive corners). */
export interface Box {
  xmin: number;
  ymin: number;
  xmax: number;
  ymax: number;
}

/** One planned sample: where its pixels come from and what it is. */
export interface SampleSource {
  /** Stable, unique, tar- and WebDataset-safe id: `[A-Za-z0-9_-]+`. */
  key: string;
  /** Absolute (or cwd-relative) path of the image file to read. */
  path: string;
  /** Path relative to the input root, as recorded in the sample's json. */
  rel: string;
  /** Class name, or null for unlabelled layouts (list). */
  label: string | null;
  /** Patient id (mil layout). */
  patient?: string;
  /** Source split folder (mil layout). */
  sourceSplit?: string;
  /** The annotated box (voc layout); the crop adds the margin to it. */
  box?: Box;
  /** Index of the box among its image's objects (voc). */
  boxIndex?: number;
}

/**
 * One input item that could not become a sample (recorded in errors.jsonl, the
 * run goes on); unlike an InputError, which stops the run.
 */
export interface ItemError {
  path: string;
  reason: string;
}

/** A layout's answer: samples in a deterministic order, classes and refusals. */
export interface Enumeration {
  samples: SampleSource[];
  /** Class names in class-index order. */
  classes: string[];
  errors: ItemError[];
}

/** File extensions the image layouts pick up (lower case, without the dot). */
export const IMAGE_EXTENSIONS: readonly string[] = ["jpg", "jpeg", "png", "tif", "tiff", "bmp"];

/** Whether a file name has one of `IMAGE_EXTENSIONS` (case-insensitive). */
export function isImageName(name: string): boolean {
  const dot = name.lastIndexOf(".");
  return dot > 0 && IMAGE_EXTENSIONS.includes(name.slice(dot + 1).toLowerCase());
}

/**
 * The sample key for a relative path: the extension dropped, each path
 * component's characters outside `[A-Za-z0-9_-]` replaced by `_`, components
 * joined by `__`. Keys have no dots because WebDataset splits a member name
 * at the first dot of its base name into key and extension.
 * Distinct paths can map to one key (`a b.jpg`, `a_b.jpg`, `a.png`); callers
 * detect that with `KeySet` and record the second as an error.
 */
export function keyFromPath(rel: string): string {
  const parts = rel.split(/[\\/]+/).filter((p) => p !== "" && p !== ".");
  if (parts.length === 0) throw new RangeError(`cannot derive a sample key from path '${rel}'`);
  const last = parts.length - 1;
  const dot = parts[last].lastIndexOf(".");
  if (dot > 0) parts[last] = parts[last].slice(0, dot);
  return parts.map(safeKeyPart).join("__");
}

/**
 * Why a path as a CSV or list row gives it cannot name an image file (empty,
 * a NUL byte, no file name: `a/`, `.`, `..`), or null when it can;
 * `keyFromPath` accepts every path this passes.
 */
export function badPathReason(raw: string): string | null {
  if (raw === "") return "is empty";
  if (raw.includes("\0")) return "contains a NUL byte";
  const last = raw.replace(/\\/g, "/").split("/").pop()!;
  if (last === "" || last === "." || last === "..") return `names no file ('${raw}')`;
  return null;
}

/** `s` with every character outside `[A-Za-z0-9_-]` replaced by `_`. */
export function safeKeyPart(s: string): string {
  return s.replace(/[^A-Za-z0-9_-]/g, "_");
}

/** Tracks keys already used, so duplicates become recorded errors. */
export class KeySet {
  #seen = new Map<string, string>();

  /**
   * Claims `key` for `path`; returns null when free, else the reason to
   * record for `path` (naming the path that has the key already).
   */
  claim(key: string, path: string): string | null {
    const prev = this.#seen.get(key);
    if (prev !== undefined) {
      return `duplicate key '${key}' (also derived from ${prev}); rename one of the files`;
    }
    this.#seen.set(key, path);
    return null;
  }
}

/**
 * Drops samples whose key is taken, recording them as errors; keeps the
 * first in the given order (which layouts make deterministic by sorting).
 */
export function dedupeKeys(samples: SampleSource[], errors: ItemError[]): SampleSource[] {
  const keys = new KeySet();
  const out: SampleSource[] = [];
  for (const s of samples) {
    const dup = keys.claim(s.key, s.rel);
    if (dup) errors.push({ path: s.path, reason: dup });
    else out.push(s);
  }
  return out;
}

/**
 * Resolves class names: with `wanted` (--classes), their order is the class
 * index order and other labels are refused; without, the sorted set of labels
 * seen. Samples with an empty label are always refused.
 */
export function resolveClasses(
  samples: SampleSource[],
  errors: ItemError[],
  wanted: string[] | undefined,
): { samples: SampleSource[]; classes: string[] } {
  const kept: SampleSource[] = [];
  for (const s of samples) {
    if (s.label === null) {
      kept.push(s);
      continue;
    }
    if (s.label.trim() === "") {
      errors.push({ path: s.path, reason: "empty label" });
      continue;
    }
    if (wanted && !wanted.includes(s.label)) {
      errors.push({
        path: s.path,
        reason: `unknown label '${s.label}' (not in --classes ${wanted.join(",")})`,
      });
      continue;
    }
    kept.push(s);
  }
  const classes = wanted ??
    [...new Set(kept.map((s) => s.label).filter((l): l is string => l !== null))].sort();
  return { samples: kept, classes };
}

/** Compares strings by code unit, the order every layout sorts paths in (locale-free). */
export function byCodeUnit(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The input as a whole is unusable (missing folder, CSV without its header):
 * the run cannot start. The message names the path and the fix; the CLI
 * reports it against --input.
 */
export class LayoutError extends InputError {
  override name = "LayoutError";
}
