/**
 * `deno task eval --train FILE [--test FILE] …`: the paper's protocols
 * (docs/evaluation.md) on embeddings files written by `embed`; `runEval` in
 * eval/run.ts does the work. Output: the metrics JSON (`--out`, per-class
 * precision/recall/F1 and confusion matrices included), a Markdown table like
 * the paper's on stdout (and in `--markdown`, with per-class tables),
 * progress on stderr. Exit codes: 0 done, 2 a bad flag or input file, 1 a
 * failed run.
 */
import { command, requireOutputDir, runCommand, UsageError } from "./args.ts";
import { markdownTable, reportJson } from "../eval/report.ts";
import { DEVICES, markdownReport, PROTOCOLS, runEval, type TestPredictions } from "../eval/run.ts";
import { readEmbeddings } from "../data/embeddings_file.ts";
import {
  batchEffectsMarkdown,
  batchEffectsOfFiles,
  type BatchEffectsReport,
} from "../eval/batch_effects.ts";
import { COLOR_BY } from "../eval/cell_groups.ts";
import { writeEmbeddingFigure } from "../eval/embedding_figure.ts";
import { evaluateSavedHeads } from "../eval/saved_heads.ts";
import { EvalThreads, threadedNeighborSearch } from "../eval/threads.ts";

/** `deno task eval`: its flags and help. */
export const EVAL = command({
  name: "eval",
  summary: "Evaluate embeddings with the paper's protocols: kNN, linear probe, MIL.",
  positionalHint: "pass files with --train and --test",
  flags: {
    train: {
      type: "string",
      value: "FILE",
      help: "training embeddings (safetensors, npy + sidecar, or csv) written by embed; required " +
        "unless --load",
    },
    test: {
      type: "string",
      value: "FILE",
      help: "test embeddings; without it: the split --train carries (ingest's), else --folds " +
        "or an 80/20 split",
    },
    protocol: {
      type: "choice",
      choices: PROTOCOLS,
      list: true,
      help: "protocols to run (default knn,linear; +mil when the files carry patients)",
    },
    folds: { type: "int", min: 2, help: "cross-validate --train with K stratified folds" },
    resplit: {
      type: "boolean",
      help: "ignore the split --train carries (ingest's) and make eval's own 80/20 split",
    },
    out: { type: "string", value: "FILE", help: "write the metrics JSON here" },
    markdown: { type: "string", value: "FILE", help: "write the Markdown tables here" },
    method: { type: "string", help: "row name in the tables (default: from the file's weights)" },
    title: { type: "string", help: "table title (default: the file names)" },
    threads: {
      type: "int",
      min: 1,
      max: 1024,
      help: "CPU worker threads for kNN and the probe (default: cores)",
    },
    seed: {
      type: "int",
      min: 0,
      max: 0xffffffff,
      default: 42,
      help: "seed of the split, folds and MIL training",
    },
    device: {
      type: "choice",
      choices: DEVICES,
      default: "auto",
      help: "where kNN and the probe run",
    },
    "mil-epochs": { type: "int", min: 1, default: 150, help: "MIL epochs (cosine schedule)" },
    "mil-lr": { type: "number", above: 0, max: 10, default: 0.001, help: "MIL base learning rate" },
    "mil-patience": { type: "int", min: 1, default: 20, help: "MIL early-stopping patience" },
    "mil-val": {
      type: "number",
      min: 0,
      max: 0.9,
      default: 0.2,
      help: "MIL validation fraction (0: no early stopping)",
    },
    save: {
      type: "string",
      value: "DIR",
      help: "write every head trained (probe, kNN reference, MIL) here, for predict and --load",
    },
    load: {
      type: "string",
      value: "DIR",
      help: "score the heads saved in DIR on --test (or --train) without retraining",
    },
    "batch-effects": {
      type: "boolean",
      help: "report whether the embeddings separate by source more than by cell type",
    },
    "source-by": {
      type: "string",
      value: "RULE",
      help: "source of each cell: file (each file one source), depth:N (N-th folder of its " +
        "path) or a regex (default: file, with --test)",
    },
    figures: { type: "string", value: "DIR", help: "write a UMAP of the embeddings here" },
    "color-by": {
      type: "choice",
      choices: COLOR_BY,
      default: "label",
      help: "what the UMAP colours: label, predicted class (test cells) or source",
    },
    quiet: { type: "boolean", help: "no progress on stderr" },
  },
});

if (import.meta.main) {
  runCommand(EVAL, async (f) => {
    if (f.out) await requireOutputDir("--out", f.out);
    if (f.markdown) await requireOutputDir("--markdown", f.markdown);
    const log = (s: string) => f.quiet || console.error(`eval: ${s}`);
    if (f.load !== undefined) {
      const data = f.test ?? f.train;
      if (!data) throw new UsageError("--load needs labelled embeddings: --test FILE");
      const report = await evaluateSavedHeads({ heads: f.load, test: data, method: f.method, log });
      if (f.out) await Deno.writeTextFile(f.out, reportJson(report));
      if (f.markdown) await Deno.writeTextFile(f.markdown, markdownReport(report));
      console.log(markdownTable(report));
      return;
    }
    if (f.train === undefined) {
      throw new UsageError("--train is required: an embeddings file written by embed");
    }
    const files = [f.train, ...(f.test ? [f.test] : [])];
    const predictions: TestPredictions[] = [];
    let batch: BatchEffectsReport | null = null;
    if (f["batch-effects"]) {
      const embs = await Promise.all(files.map((p) => readEmbeddings(p)));
      const threads = EvalThreads.open(f.threads);
      try {
        log(`batch effects over ${embs.reduce((a, e) => a + e.rows, 0)} cells`);
        batch = await batchEffectsOfFiles(embs, f["source-by"], {
          seed: f.seed,
          search: threadedNeighborSearch(threads, { screened: true }),
        });
      } finally {
        threads.close();
      }
      console.log(batchEffectsMarkdown(batch));
      // The batch-effect report alone, unless protocols were asked for too.
      if (!f.protocol && !f.save && !f.figures) {
        if (f.out) {
          await Deno.writeTextFile(f.out, JSON.stringify({ batchEffects: batch }, null, 2));
        }
        if (f.markdown) await Deno.writeTextFile(f.markdown, batchEffectsMarkdown(batch));
        return;
      }
    }
    const report = await runEval({
      save: f.save,
      onTestPredictions: (p) => predictions.push(p),
      train: f.train,
      test: f.test,
      protocols: f.protocol ?? null,
      folds: f.folds,
      resplit: f.resplit,
      method: f.method,
      title: f.title,
      threads: f.threads ?? (navigator.hardwareConcurrency || 1),
      seed: f.seed,
      device: f.device,
      mil: {
        epochs: f["mil-epochs"],
        lr: f["mil-lr"],
        patience: f["mil-patience"],
        valFraction: f["mil-val"],
      },
      quiet: f.quiet,
    });
    if (f.out) {
      await Deno.writeTextFile(
        f.out,
        batch
          ? JSON.stringify({ ...report, batchEffects: batch }, null, 2) + "\n"
          : reportJson(report),
      );
    }
    if (f.markdown) {
      const extra = batch ? `\n${batchEffectsMarkdown(batch)}` : "";
      await Deno.writeTextFile(f.markdown, markdownReport(report) + extra);
    }
    console.log(markdownTable(report));
    if (f.figures !== undefined) {
      // Predicted colours: the probe's test predictions, else 20-NN's, else any protocol's.
      const pick = ["linear probe", "20-NN", "1-NN"].find((p) =>
        predictions.some((x) => x.protocol === p)
      );
      const fig = await writeEmbeddingFigure(
        f.figures,
        await Promise.all(files.map((p) => readEmbeddings(p))),
        f["color-by"],
        {
          sourceBy: f["source-by"],
          predictions: predictions.filter((p) => p.protocol === pick),
        },
      );
      log(`wrote ${fig.svg} and ${fig.png}`);
    }
  });
}
