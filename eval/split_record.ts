/**
 * Which split a number was measured on. A split is a set of (row id, split
 * name) pairs; every metrics file records where it came from (`origin`) and
 * a hash of that membership (`sha256`), so two numbers can be compared, or
 * refused, without the data at hand.
 *
 * The hash is SHA-256 over the UTF-8 lines `id<TAB>split<LF>`, sorted (by
 * id, then split name, in UTF-16 code-unit order). The id is the sample key
 * ingest gave the row (or, for data that never went through ingest, its
 * path), so the manifest of an ingest, an embeddings file of all of it, and
 * an evaluation on that file all carry the same hash.
 *
 * Pure (Web Crypto only): the browser page reads embeddings files too.
 */

/** A split's provenance, as metrics files record it. */
export interface SplitRecord {
  /**
   * Where the split came from: "ingest manifest data/bccd: stratified 80/20, seed 42",
   * "eval: stratified 80/20, seed 42", "train --eval: stratified 50/50, seed 0", …
   */
  origin: string;
  /** SHA-256 (hex) of the membership (see the module comment). */
  sha256: string;
  /** Rows per split name, e.g. { train: 280, test: 70 }. */
  rows: Record<string, number>;
}

/** The train and test rows of a split a file carries, and the rows in neither. */
export interface CarriedSplit {
  train: number[];
  test: number[];
  /** Rows of other splits ("val", "all", …), left out of train → test protocols. */
  other: number[];
}

/** The ids a file's rows are hashed by: ingest's sample keys, else the paths. */
export function rowIds(file: { keys: string[] | null; paths: string[] }): string[] {
  return file.keys ?? file.paths;
}

/** SHA-256 of the membership `ids[i] → splits[i]` (see the module comment). */
export async function splitSha256(
  ids: readonly string[],
  splits: readonly string[],
): Promise<string> {
  if (ids.length !== splits.length) {
    throw new RangeError(`splitSha256: ${ids.length} ids for ${splits.length} split names`);
  }
  const lines = ids.map((id, i) => `${id}\t${splits[i]}\n`);
  lines.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const bytes = new TextEncoder().encode(lines.join(""));
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The record of membership `ids[i] → splits[i]` with its origin. */
export async function splitRecord(
  origin: string,
  ids: readonly string[],
  splits: readonly string[],
): Promise<SplitRecord> {
  const rows: Record<string, number> = Object.create(null); // split names are data ("constructor")
  for (const s of splits) rows[s] = (rows[s] ?? 0) + 1;
  const sorted = Object.fromEntries(Object.keys(rows).sort().map((k) => [k, rows[k]]));
  return { origin, sha256: await splitSha256(ids, splits), rows: sorted };
}

/**
 * The record of a train/test split of `ids` given as row indices (rows in
 * neither are left out of the membership).
 */
export function trainTestRecord(
  origin: string,
  ids: readonly string[],
  split: { train: readonly number[]; test: readonly number[] },
): Promise<SplitRecord> {
  const rows = [...split.train, ...split.test];
  return splitRecord(
    origin,
    rows.map((r) => ids[r]),
    rows.map((_, i) => (i < split.train.length ? "train" : "test")),
  );
}

/**
 * The train and test rows of per-row split names, or null when they do not
 * make a split (no row in "train" or none in "test": e.g. every row "all",
 * an ingest without `--split`).
 */
export function carriedSplit(splits: readonly string[]): CarriedSplit | null {
  const out: CarriedSplit = { train: [], test: [], other: [] };
  splits.forEach((s, i) =>
    (s === "train" ? out.train : s === "test" ? out.test : out.other).push(i)
  );
  return out.train.length > 0 && out.test.length > 0 ? out : null;
}

/** "1a2b3c4d5e6f" : the first 12 hex digits, enough to tell splits apart by eye. */
export function shortHash(sha256: string): string {
  return sha256.slice(0, 12);
}

/** One line for reports and logs: origin, rows per split, the short hash. */
export function describeSplit(r: SplitRecord): string {
  const rows = Object.entries(r.rows).map(([s, n]) => `${s} ${n}`).join(", ");
  return `${r.origin} (${rows}; sha256 ${shortHash(r.sha256)})`;
}

/**
 * A stratified split in words: "stratified 80/20, seed 42" (", by patient"
 * when whole patients were split).
 */
export function stratifiedOrigin(trainSize: number, seed: number, byPatient = false): string {
  const train = Math.round(trainSize * 100);
  return `stratified ${train}/${100 - train}, seed ${seed}${byPatient ? ", by patient" : ""}`;
}
