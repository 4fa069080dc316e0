/**
 * `DIR/manifest.json`: what a finished ingest wrote, read by the loader. The
 * ingest writes it last and atomically (pipelines/ingest/manifest_writer.ts),
 * so a directory without one is visibly incomplete (the loader refuses it as
 * a manifest directory).
 */
import { dirname, join } from "node:path";
import { InputError } from "../../data/errors.ts";
import type { SplitRecord } from "../../eval/split_record.ts";

/** Manifest format tag and version, checked by readers. */
export const MANIFEST_FORMAT = "bloom-webdataset";
export const MANIFEST_VERSION = 1;

/** A shard as the manifest lists it. */
export interface ManifestShard {
  name: string;
  split: string;
  samples: number;
  bytes: number;
  sha256: string;
}

/** Per-split counts. */
export interface SplitCounts {
  samples: number;
  /** Samples per class name (labelled layouts). */
  perClass: Record<string, number>;
}

/** The manifest document. */
export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  created: string;
  classes: string[];
  /** Side of the square images in the shards. */
  size: number;
  /** Extension of the image member: "png" or "jpg". */
  imageExt: "png" | "jpg";
  counts: Record<string, SplitCounts>;
  shards: ManifestShard[];
  /** Keys per split, in shard order. */
  splits: Record<string, string[]>;
  /**
   * How the samples were split (origin in words, rows per split) and the
   * membership hash over (key, split) that embed, eval and train --eval
   * carry on (eval/split_record.ts). Absent in manifests of older versions.
   */
  split?: SplitRecord;
  /** The run's parameters (the command line, resolved). */
  params: Record<string, unknown>;
  /** Inputs refused (see errors.jsonl). */
  errors: number;
  /** Samples written in all. */
  samples: number;
}

/**
 * Reads and checks a manifest; throws naming the file and what is wrong
 * (absent: the ingest did not finish; wrong format or version).
 */
export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, "manifest.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new InputError(
      `${path} not found: '${dir}' is not a finished ingest (rerun deno task ingest to complete it)`,
    );
  }
  let m: Manifest;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${path} is not valid JSON (${(e as Error).message})`);
  }
  if (typeof m !== "object" || m === null || Array.isArray(m)) {
    throw new InputError(`${path} is not a manifest (a JSON object); re-run the ingest`);
  }
  if (m.format !== MANIFEST_FORMAT || m.version !== MANIFEST_VERSION) {
    throw new InputError(
      `${path} has format ${m.format} v${m.version}; this reader knows ` +
        `${MANIFEST_FORMAT} v${MANIFEST_VERSION} (re-ingest with this version)`,
    );
  }
  checkFields(path, m);
  m.params ??= {}; // hand-made manifests may leave it out
  return m;
}

/**
 * The fields the loader relies on, with their types; shard names must be
 * plain file names, so no manifest can make the loader open a path outside
 * its dataset directory.
 */
function checkFields(path: string, m: Manifest): void {
  const bad = (field: string, want: string) =>
    new InputError(
      `${path}: '${field}' must be ${want}; the manifest is damaged (re-run the ingest)`,
    );
  const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);
  if (!Array.isArray(m.shards)) throw bad("shards", "a list of shards");
  if (!isObject(m.counts)) throw bad("counts", "an object of per-split counts");
  if (m.params !== undefined && !isObject(m.params)) {
    throw bad("params", "an object of the ingest's parameters");
  }
  if (!Array.isArray(m.classes) || !m.classes.every((c) => typeof c === "string")) {
    throw bad("classes", "a list of class names");
  }
  if (m.size !== null && !(Number.isSafeInteger(m.size) && m.size > 0)) {
    throw bad("size", "a positive integer (the image side)");
  }
  if (
    m.split !== undefined &&
    !(isObject(m.split) && typeof m.split.origin === "string" &&
      typeof m.split.sha256 === "string" && /^[0-9a-f]{64}$/.test(m.split.sha256))
  ) {
    throw bad("split", "an object with the split's origin and its SHA-256 (64 hex digits)");
  }
  m.shards.forEach((s: ManifestShard, i) => {
    if (!isObject(s)) throw bad(`shards[${i}]`, "an object");
    // A plain file name in the dataset's own directory: no separator, no '..', no drive.
    if (typeof s.name !== "string" || !/^[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar$/.test(s.name)) {
      throw bad(
        `shards[${i}].name`,
        `a shard file name in ${dirname(path)} (found ${JSON.stringify(s.name)})`,
      );
    }
    if (typeof s.split !== "string") throw bad(`shards[${i}].split`, "a split name");
    if (!(Number.isSafeInteger(s.samples) && s.samples >= 0)) {
      throw bad(`shards[${i}].samples`, "a sample count");
    }
  });
}
