/**
 * `bloom predict --head H --input CELLS --out predictions.csv [--weights W]`:
 * classifies new cells with heads `eval --save` wrote — per-cell predictions
 * with out-of-distribution flags, differential counts per sample, and
 * patient-level subtypes from MIL heads. `runPredict`
 * (pipelines/predict_run.ts) does the work; docs/predict.md describes the
 * files and thresholds.
 *
 * Exit codes: 0 done; 2 bad input (flag, file, head); 1 a failed run.
 */
import {
  command,
  requireOutputDir,
  runCommand,
  VERIFY_FLAGS,
  verifyHash,
  WAIT_FLAGS,
} from "./args.ts";
import { verifySha256 } from "../data/hash.ts";
import { DEVICES } from "../eval/run.ts";
import { runPredict } from "../pipelines/predict_run.ts";
import { resolveWeights } from "../pipelines/weights/download.ts";
import { Interrupted } from "../pipelines/interrupt.ts";
import { reportStopped, stopOnSignals } from "./interrupt.ts";

/** `deno task predict`: its flags and help. */
export const PREDICT = command({
  name: "predict",
  summary: "Classify new cells with heads saved by `eval --save`: per-cell predictions, " +
    "out-of-distribution flags, differential counts per sample, patient-level MIL subtypes.",
  positionalHint: "pass the cells with --input and the heads with --head",
  flags: {
    head: {
      type: "string",
      value: "PATH",
      multiple: true,
      required: true,
      help: "a head file (probe, kNN, MIL) or the folder `eval --save` wrote; repeatable",
    },
    input: {
      type: "string",
      value: "PATH",
      required: true,
      help: "cells: an image folder, ingested shards, a list file, or a features file from embed",
    },
    out: {
      type: "string",
      value: "FILE",
      required: true,
      help: "predictions csv (one row per cell; per patient for MIL-only heads)",
    },
    weights: {
      type: "string",
      value: "NAME|FILE",
      help: "the checkpoint the heads' embeddings came from (needed for image input): a name " +
        "(dinobloom-s, …; downloaded and cached, docs/weights.md) or a file",
    },
    "attention-heads": {
      type: "int",
      min: 1,
      help: "the ViT's attention heads, for custom-size checkpoints only",
    },
    summary: {
      type: "string",
      value: "FILE",
      help: "differential count per sample with 95 % Wilson intervals (.csv or .md)",
    },
    "group-by": {
      type: "string",
      value: "SPEC",
      help: "sample of each cell: depth:N (N-th folder of its path) or a regex (first group); " +
        "default: the patient, else the cell's folder",
    },
    classifier: {
      type: "choice",
      choices: ["probe", "knn"],
      help: "which head classifies cells when both are given (default probe)",
    },
    "min-confidence": {
      type: "number",
      min: 0,
      max: 1,
      help: "flag cells whose top probability is below this (default: the head's, 0.5)",
    },
    "max-distance": {
      type: "number",
      min: 0,
      help: "flag cells farther than this from every reference cell (default: the kNN head's)",
    },
    "exclude-flagged": {
      type: "boolean",
      help: "leave flagged cells out of the differential counts (they are still listed)",
    },
    features: {
      type: "string",
      value: "FILE",
      help: "where image input is embedded to (default: OUT with .features.safetensors)",
    },
    figures: {
      type: "string",
      value: "DIR",
      help: "MIL attention grids here (default: OUT's folder, <stem>.attention/)",
    },
    images: {
      type: "string",
      value: "DIR",
      help: "where relative cell paths of a features file point to (for the MIL grids)",
    },
    batch: { type: "int", min: 1, default: 32, help: "images per forward pass" },
    workers: { type: "int", min: 1, help: "image decoding threads (default: cores)" },
    device: {
      type: "choice",
      choices: DEVICES,
      default: "auto",
      help: "where the kNN search runs (auto: a hardware GPU for large sets)",
    },
    threads: { type: "int", min: 1, max: 1024, help: "CPU threads of the kNN search" },
    quiet: { type: "boolean", help: "no progress on stderr" },
    "no-autotune": { type: "boolean", help: "skip measuring kernel variants (once per adapter)" },
    ...VERIFY_FLAGS,
    ...WAIT_FLAGS,
  },
});

if (import.meta.main) {
  runCommand(PREDICT, async (f) => {
    await requireOutputDir("--out", f.out);
    if (f.summary) await requireOutputDir("--summary", f.summary);
    const sha = verifyHash(f["verify-sha256"], f.weights, "--weights");
    if (f.weights !== undefined) {
      f.weights = await resolveWeights(f.weights, { progress: { silent: f.quiet } });
    }
    if (sha !== undefined) await verifySha256(f.weights!, sha);
    // Ctrl-C, SIGTERM: keep the cells embedded so far, say how to resume.
    const stop = stopOnSignals("predict", Deno.args, "the cells embedded so far");
    let s;
    try {
      s = await runPredict({
        signal: stop.signal,
        heads: f.head,
        input: f.input,
        out: f.out,
        weights: f.weights,
        attentionHeads: f["attention-heads"],
        summary: f.summary,
        groupBy: f["group-by"],
        classifier: f.classifier,
        minConfidence: f["min-confidence"],
        maxDistance: f["max-distance"],
        excludeFlagged: f["exclude-flagged"],
        features: f.features,
        figures: f.figures,
        images: f.images,
        batch: f.batch,
        workers: f.workers,
        device: f.device,
        threads: f.threads,
        quiet: f.quiet,
        autotune: !f["no-autotune"],
        wait: f.wait,
      });
    } catch (e) {
      if (!(e instanceof Interrupted)) throw e;
      reportStopped("predict", Deno.args, e.kept);
      return stop.exitCode();
    } finally {
      stop.close();
    }
    const parts = [
      `${s.cells} cells in ${s.samples} samples`,
      s.flagged ? `${s.flagged} flagged out of distribution` : "",
      s.patients ? `patients in ${s.patients}` : "",
      s.summary ? `differential counts in ${s.summary}` : "",
      s.errors ? `${s.errors} problems in ${s.errorsFile}` : "",
    ].filter(Boolean);
    console.error(`predict: ${parts.join("; ")}`);
    return 0;
  });
}
