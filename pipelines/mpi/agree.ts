/**
 * Refusing ranks that would train on different things. At start every rank
 * allgathers a few facts (the training config, the command's options, a
 * fingerprint of the data it sees, a digest of its weights after rank 0's
 * broadcast) and compares them with rank 0's; any difference stops every rank
 * with one message that says what differs, on which ranks, and the values.
 * The comparison is the same on every rank, so every rank raises the same
 * error (a `collective` one: printed once).
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { InputError } from "../../data/errors.ts";
import { sha256File } from "../../data/hash.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import type { GpuTensor } from "../../kernels/tensor.ts";
import { walkImages, walkScope } from "../dataset/walk.ts";
import { allgatherJson, type Comm } from "./comm.ts";
import { collective } from "./world.ts";

/** What ranks must agree on: a name (config, data, weights, …) → its value as text. */
export type Facts = Record<string, string>;

/** Ranks that disagree at start. */
export class DisagreementError extends InputError {
  override name = "DisagreementError";
}

/** One difference: the fact, the value on rank 0, and every other value with its ranks. */
export interface Difference {
  fact: string;
  root: string;
  others: { ranks: number[]; value: string }[];
}

/** The differences between every rank's facts and rank 0's. */
export function compareFacts(all: Facts[]): Difference[] {
  const root = all[0];
  const names = [...new Set(all.flatMap((f) => Object.keys(f)))];
  const out: Difference[] = [];
  for (const fact of names) {
    const others = new Map<string, number[]>();
    all.forEach((f, r) => {
      const v = f[fact] ?? "(missing)";
      if (r > 0 && v !== (root[fact] ?? "(missing)")) others.set(v, [...(others.get(v) ?? []), r]);
    });
    if (others.size) {
      out.push({
        fact,
        root: root[fact] ?? "(missing)",
        others: [...others].map(([value, ranks]) => ({ ranks, value })),
      });
    }
  }
  return out;
}

/** "config.batch: 8 on rank 0, 16 on rank 1" — JSON objects are compared field by field. */
export function describeDifference(d: Difference): string[] {
  const lines: string[] = [];
  const ranks = (rs: number[]) => `rank${rs.length > 1 ? "s" : ""} ${rs.join(", ")}`;
  for (const o of d.others) {
    const fields = jsonFieldDifferences(d.root, o.value);
    if (fields) {
      for (const [path, a, b] of fields) {
        lines.push(`${d.fact}.${path}: ${a} on rank 0, ${b} on ${ranks(o.ranks)}`);
      }
    } else lines.push(`${d.fact}: ${d.root} on rank 0, ${o.value} on ${ranks(o.ranks)}`);
  }
  return lines;
}

function jsonFieldDifferences(a: string, b: string): [string, string, string][] | null {
  let x: unknown, y: unknown;
  try {
    x = JSON.parse(a);
    y = JSON.parse(b);
  } catch {
    return null;
  }
  if (!isObject(x) || !isObject(y)) return null;
  const out: [string, string, string][] = [];
  const walk = (p: unknown, q: unknown, path: string) => {
    if (isObject(p) && isObject(q)) {
      for (const k of new Set([...Object.keys(p), ...Object.keys(q)])) {
        walk(p[k], q[k], path ? `${path}.${k}` : k);
      }
    } else if (JSON.stringify(p) !== JSON.stringify(q)) {
      out.push([path, JSON.stringify(p) ?? "(missing)", JSON.stringify(q) ?? "(missing)"]);
    }
  };
  walk(x, y, "");
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Allgathers `facts` and throws a collective DisagreementError on every rank
 * when any rank's differ from rank 0's. `what` names the job ("training").
 */
export async function agree(comm: Comm, facts: Facts, what: string): Promise<void> {
  if (comm.size === 1) return;
  const diffs = compareFacts(await allgatherJson(comm, facts));
  if (!diffs.length) return;
  throw collective(
    new DisagreementError(
      `the ${comm.size} ranks of this ${what} disagree, so none starts:\n  ` +
        diffs.flatMap(describeDifference).join("\n  ") +
        `\nStart every rank with the same command, config and data (on every host).`,
    ),
  );
}

/** SHA-256 (hex, first 16 digits) of GPU tensors' bytes, read back one at a time. */
export async function tensorsDigest(gpu: Gpu, tensors: readonly GpuTensor[]): Promise<string> {
  const h = createHash("sha256");
  for (const t of tensors) h.update(await gpu.readBytes(t));
  return h.digest("hex").slice(0, 16);
}

/**
 * A fingerprint of a training data source as this rank sees it: the manifest
 * of ingested shards, the listing (names and sizes) of an image folder or of
 * .tar files, or the content of a list / CSV file.
 */
export async function dataFingerprint(source: string | string[]): Promise<string> {
  const paths = [source].flat();
  const h = createHash("sha256");
  let entries = 0;
  for (const p of paths) {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(p);
    } catch {
      h.update(`missing ${p}\n`);
      continue;
    }
    if (st.isFile) {
      h.update(p.endsWith(".tar") ? `${p.split("/").pop()} ${st.size}\n` : await sha256File(p));
      entries++;
      continue;
    }
    try {
      h.update(await sha256File(join(p, "manifest.json")));
      entries++;
      continue;
    } catch { /* not ingested shards: a folder of images */ }
    for (const f of await walkImages(p, "", await walkScope(p, []))) {
      h.update(`${f.rel} ${(await Deno.stat(f.path)).size}\n`);
      entries++;
    }
  }
  return `${entries} entries, sha256 ${h.digest("hex").slice(0, 16)}`;
}
