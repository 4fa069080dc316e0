/**
 * Finished shards a rerun replaces. A rerun with the same plan keeps every
 * finished shard; one with another plan (another `--split` or `--seed`,
 * size, classes or input) rewrites or removes those it does not own, and
 * says so first, naming them and, when the split changed, the old and the
 * new split.
 */
import { join } from "node:path";
import { readManifest } from "../dataset/manifest.ts";
import type { PlannedShard } from "./plan.ts";
import { recordedShards, STATE_DIR } from "./state.ts";

/** Names of finished shards in `outDir` that `plan` does not keep as they are. */
export async function replacedShards(outDir: string, plan: PlannedShard[]): Promise<string[]> {
  const hashes = new Map(plan.map((s) => [s.name, s.planHash]));
  const out: string[] = [];
  for (const name of (await recordedShards(outDir)).sort()) {
    let planHash: unknown;
    try {
      planHash = JSON.parse(await Deno.readTextFile(join(outDir, STATE_DIR, `${name}.json`)))
        .planHash;
    } catch {
      continue; // an unreadable record: its shard is redone, it held nothing finished
    }
    if (hashes.get(name) !== planHash) out.push(name);
  }
  return out;
}

/** `--split 0.8 --seed 42`, or `no --split` (the split flags of a run). */
function splitFlags(split: number | null | undefined, seed: unknown): string {
  return split === null || split === undefined ? "no --split" : `--split ${split} --seed ${seed}`;
}

/**
 * The warning for a rerun that replaces `replaced` shards of an earlier
 * ingest into `outDir` (read before its manifest is removed).
 */
export async function replacementWarning(
  outDir: string,
  replaced: string[],
  now: { split?: number; seed: number },
): Promise<string> {
  const earlier = await readManifest(outDir).catch(() => null);
  const shown = replaced.length > 8
    ? `${replaced.slice(0, 8).join(", ")} and ${replaced.length - 8} more`
    : replaced.join(", ");
  const was = earlier?.params as { split?: number | null; seed?: number } | undefined;
  const splitChanged = was !== undefined &&
    ((was.split ?? null) !== (now.split ?? null) ||
      (now.split !== undefined && was.seed !== now.seed));
  const why = splitChanged
    ? `it was ingested with ${splitFlags(was!.split, was!.seed)}, this run has ${
      splitFlags(now.split, now.seed)
    }, so its split changes`
    : earlier
    ? "this run's inputs or options differ from the earlier ingest's"
    : "they were written by an earlier, unfinished ingest with other inputs or options";
  return `warning: ${outDir} holds an earlier ingest: ${why}; replacing ${replaced.length} ` +
    `finished shard${replaced.length === 1 ? "" : "s"} (${shown}). Embeddings and results made ` +
    "from the earlier shards no longer match this directory";
}
