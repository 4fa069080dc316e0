/**
 * `deno task ingest --input SRC --layout imagefolder|csv|voc|mil|list --out DIR …`:
 * streams a cell-image dataset into WebDataset tar shards of square images
 * plus manifest.json and errors.jsonl (`runIngest` in pipelines/ingest/,
 * which checks every option). Rerunning the same command resumes.
 * Exit codes: 0 done (some inputs may have failed: see errors.jsonl), 1 every
 * input failed or the run broke, 2 a bad flag or input.
 */
import { command, type FlagValues, runCommand, WAIT_FLAGS } from "./args.ts";
import { INGEST_LIMITS, type IngestOptions, runIngest } from "../pipelines/ingest/run.ts";
import { LAYOUTS } from "../pipelines/dataset/layouts.ts";
import { describeSplit } from "../eval/split_record.ts";
import { Interrupted } from "../pipelines/interrupt.ts";
import { reportStopped, stopOnSignals } from "./interrupt.ts";

/** `deno task ingest`: its flags and help. */
export const INGEST = command({
  name: "ingest",
  summary: "Ingest a cell-image dataset into resized WebDataset shards.",
  positionalHint: "pass the dataset with --input",
  flags: {
    input: {
      type: "string",
      value: "PATH",
      required: true,
      help: "dataset root (imagefolder, voc, mil) or file (csv, list)",
    },
    layout: { type: "choice", choices: LAYOUTS, required: true, help: "dataset layout" },
    out: {
      type: "string",
      value: "DIR",
      required: true,
      help: "output directory for shards, manifest.json, errors.jsonl",
    },
    size: { type: "int", ...INGEST_LIMITS.size, help: "side of the square output images, px" },
    format: {
      type: "choice",
      choices: ["png", "jpg"],
      default: "png",
      help: "image encoding in the shards",
    },
    quality: { type: "int", ...INGEST_LIMITS.quality, help: "JPEG quality (with --format jpg)" },
    "shard-size": { type: "int", ...INGEST_LIMITS["shard-size"], help: "samples per shard" },
    split: {
      type: "number",
      ...INGEST_LIMITS.split,
      help: "train fraction for a stratified train/test split, e.g. 0.8 (kept in the shards; " +
        "embed, eval and train --eval use it)",
    },
    seed: { type: "int", ...INGEST_LIMITS.seed, help: "seed of the split and of the sample order" },
    workers: {
      type: "int",
      ...INGEST_LIMITS.workers,
      help: "images decoded in parallel (default: number of cores)",
    },
    classes: {
      type: "string",
      value: "A,B,…",
      help: "comma-separated classes, in class-index order (voc: WBC)",
    },
    "min-size": {
      type: "int",
      ...INGEST_LIMITS["min-size"],
      help: "refuse images (or crops) smaller, px",
    },
    margin: { type: "number", ...INGEST_LIMITS.margin, help: "voc crop margin, fraction of box" },
    "follow-links": {
      type: "boolean",
      help: "follow symbolic links that leave --input (default: refused, in errors.jsonl)",
    },
    quiet: { type: "boolean", help: "no progress display" },
    ...WAIT_FLAGS,
  },
});

/** The pipeline's options from the parsed flags (`runIngest` checks them). */
export function ingestOptions(f: FlagValues<typeof INGEST.flags>): IngestOptions {
  return {
    input: f.input,
    layout: f.layout,
    out: f.out,
    size: f.size,
    format: f.format,
    quality: f.quality,
    shardSize: f["shard-size"],
    split: f.split,
    seed: f.seed,
    workers: f.workers,
    classes: f.classes?.split(","),
    minSize: f["min-size"],
    margin: f.margin,
    followLinks: f["follow-links"],
    wait: f.wait,
  };
}

if (import.meta.main) {
  runCommand(INGEST, async (f) => {
    // Ctrl-C, SIGTERM: keep the finished shards, say how to resume.
    const stop = stopOnSignals("ingest", Deno.args, "the finished shards");
    let summary;
    try {
      summary = await runIngest(ingestOptions(f), {
        progress: f.quiet ? false : {},
        signal: stop.signal,
      });
    } catch (e) {
      if (!(e instanceof Interrupted)) throw e;
      reportStopped("ingest", Deno.args, e.kept);
      return stop.exitCode();
    } finally {
      stop.close();
    }
    const m = summary.manifest;
    const splits = Object.entries(m.counts).map(([s, c]) => `${s} ${c.samples}`).join(", ");
    const shards = `${m.shards.length} shard${m.shards.length === 1 ? "" : "s"}`;
    const done = `${summary.samples} samples (${splits || "none"}) in ${shards}`;
    if (summary.shardsWritten === 0 && summary.shardsSkipped > 0) {
      // A rerun of a finished ingest: no rate to speak of.
      console.log(
        `ingest: nothing left to do: ${summary.samples} images already ingested (${
          splits || "none"
        }) in ${shards}, ${summary.errors} errors → ${summary.outDir}`,
      );
    } else {
      console.log(
        `ingest: ${done} (${summary.shardsWritten} written, ${summary.shardsSkipped} resumed), ` +
          `${summary.errors} errors, ${summary.rate.toFixed(1)} images/s → ${summary.outDir}`,
      );
    }
    if (m.split && Object.keys(m.split.rows).some((s) => s !== "all")) {
      console.log(`ingest: split ${describeSplit(m.split)}`);
    } else if (m.split) {
      // No train/test split: eval and train --eval will make their own (and say so).
      console.log(`ingest: no train/test split (every sample in 'all'; --split 0.8 makes one)`);
    }
    if (summary.errors > 0) console.log(`ingest: see ${summary.outDir}/errors.jsonl`);
    if (summary.samples === 0) {
      console.error(
        `error: every input failed (${summary.errors} errors, ${summary.inputs} inputs); ` +
          `see ${summary.outDir}/errors.jsonl`,
      );
      return 1;
    }
    return 0;
  });
}
