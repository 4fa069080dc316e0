/**
 * `deno task ingest --input SRC --layout imagefolder|csv|voc|mil|list --out DIR …`:
 * streams a cell-image dataset into WebDataset tar shards of square images
 * plus manifest.json and errors.jsonl. Rerunning the same command resumes.
 * Exit codes: 0 done (some inputs may have failed: see errors.jsonl), 1 every
 * input failed or the run broke, 2 a bad flag.
 */
import { numberFlag, parseFlags, runMain, usage, UsageError } from "./args.ts";
import { IngestOptionError, type IngestOptions, runIngest } from "../pipelines/ingest/run.ts";
import { isLayout, LAYOUTS } from "../pipelines/dataset/layouts.ts";
import { LayoutError } from "../pipelines/dataset/sample.ts";

const SUMMARY = "Ingest a cell-image dataset into resized WebDataset shards.";

/** The flags of `deno task ingest`. */
export const FLAGS = {
  input: { type: "string", help: "dataset root (imagefolder, voc, mil) or file (csv, list)" },
  layout: { type: "string", help: `dataset layout: ${LAYOUTS.join("|")}` },
  out: { type: "string", help: "output directory for shards, manifest.json, errors.jsonl" },
  size: { type: "string", default: "224", help: "side of the square output images, px" },
  format: { type: "string", default: "png", help: "image encoding in the shards: png|jpg" },
  quality: { type: "string", default: "95", help: "JPEG quality 1-100 (with --format jpg)" },
  "shard-size": { type: "string", default: "1000", help: "samples per shard" },
  split: { type: "string", help: "train fraction for a stratified train/test split, e.g. 0.8" },
  seed: { type: "string", default: "42", help: "seed of the split and of the sample order" },
  workers: { type: "string", help: "images decoded in parallel (default: number of cores)" },
  classes: { type: "string", help: "comma-separated classes, in class-index order (voc: WBC)" },
  "min-size": { type: "string", default: "16", help: "refuse images (or crops) smaller, px" },
  margin: { type: "string", default: "0.1", help: "voc crop margin, fraction of the box size" },
  quiet: { type: "boolean", help: "no progress display" },
} as const;

/** Turns parsed flags into ingest options; every bad value names its flag. */
export function optionsFromFlags(values: Record<string, unknown>): IngestOptions {
  const v = values as Record<string, string | boolean | undefined>;
  const str = (name: string) => (typeof v[name] === "string" ? (v[name] as string) : undefined);
  const input = str("input");
  const layout = str("layout");
  const out = str("out");
  if (!input) throw new UsageError("--input is required: the dataset root or CSV/list file");
  if (!layout) throw new UsageError(`--layout is required: one of ${LAYOUTS.join("|")}`);
  if (!isLayout(layout)) {
    throw new UsageError(`--layout must be one of ${LAYOUTS.join("|")}, got '${layout}'`);
  }
  if (!out) throw new UsageError("--out is required: the directory to write shards to");
  const format = str("format") ?? "png";
  if (format !== "png" && format !== "jpg") {
    throw new UsageError(`--format must be png or jpg, got '${format}'`);
  }
  const vals = values as Parameters<typeof numberFlag>[0];
  return {
    input,
    layout,
    out,
    size: numberFlag(vals, "size", { integer: true, min: 1, max: 4096 }),
    format,
    quality: numberFlag(vals, "quality", { integer: true, min: 1, max: 100 }),
    shardSize: numberFlag(vals, "shard-size", { integer: true, min: 1 }),
    split: splitFlag(str("split")),
    seed: numberFlag(vals, "seed", { integer: true, min: 0, max: 0xffffffff }),
    workers: numberFlag(vals, "workers", { integer: true, min: 1, max: 1024 }),
    classes: str("classes")?.split(",").map((s) => s.trim()),
    minSize: numberFlag(vals, "min-size", { integer: true, min: 1 }),
    margin: numberFlag(vals, "margin", { min: 0, max: 2 }),
  };
}

function splitFlag(raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (raw.trim() === "" || !(n > 0 && n < 1)) {
    throw new UsageError(
      `--split must be a train fraction between 0 and 1 such as 0.8, got '${raw}'`,
    );
  }
  return n;
}

if (import.meta.main) {
  runMain(async () => {
    const parsed = parseFlags("ingest", SUMMARY, FLAGS, Deno.args);
    if (parsed === "help") {
      console.log(usage("ingest", SUMMARY, FLAGS));
      return 0;
    }
    if (parsed.positionals.length > 0) {
      throw new UsageError(
        `unexpected argument '${parsed.positionals[0]}'; pass the dataset with --input`,
      );
    }
    const opts = optionsFromFlags(parsed.values);
    let summary;
    try {
      summary = await runIngest(opts, { progress: parsed.values.quiet ? false : {} });
    } catch (e) {
      if (e instanceof IngestOptionError) throw new UsageError(e.message);
      if (e instanceof LayoutError || e instanceof Deno.errors.NotFound) {
        throw new UsageError(`${e.message} (check --input and --layout)`);
      }
      throw e;
    }
    const m = summary.manifest;
    const splits = Object.entries(m.counts).map(([s, c]) => `${s} ${c.samples}`).join(", ");
    console.log(
      `ingest: ${summary.samples} samples (${splits || "none"}) in ${m.shards.length} shards ` +
        `(${summary.shardsWritten} written, ${summary.shardsSkipped} resumed), ` +
        `${summary.errors} errors, ${summary.rate.toFixed(1)} images/s → ${summary.outDir}`,
    );
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
