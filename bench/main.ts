/**
 * `deno task bench [--quick] [--only NAME,…] [--json FILE]`: kernel and model
 * benchmarks, each row a ratio to a reference measured in this run.
 */
import { parseFlags, runMain } from "../cli/args.ts";
import { getGpu } from "../kernels/runtime.ts";
import { type BenchRow, type BenchSuite, formatRows } from "./harness.ts";
import { measurePeaks } from "./peaks.ts";
import { suites } from "./suites.ts";

const FLAGS = {
  quick: { type: "boolean", help: "smaller shapes and fewer iterations" },
  only: { type: "string", help: "comma-separated suite names to run" },
  json: { type: "string", help: "also write the rows as JSON objects to FILE" },
  list: { type: "boolean", help: "list the suites and exit" },
} as const;

if (import.meta.main) {
  runMain(async () => {
    const parsed = parseFlags("bench", "Kernel and model benchmarks.", FLAGS, Deno.args);
    if (parsed === "help") {
      console.log("usage: deno task bench [--quick] [--only NAME,…] [--json FILE] [--list]");
      return;
    }
    const v = parsed.values;
    if (v.list) {
      for (const s of suites) console.log(s.name);
      return;
    }
    const only = typeof v.only === "string" ? v.only.split(",").map((s) => s.trim()) : null;
    const chosen: BenchSuite[] = only ? suites.filter((s) => only.includes(s.name)) : suites;
    if (only && chosen.length !== only.length) {
      const known = suites.map((s) => s.name).join(", ");
      throw new Error(`--only names an unknown suite; known suites: ${known}`);
    }
    const gpu = await getGpu();
    const quick = Boolean(v.quick);
    console.log(`# bloom bench ${new Date().toISOString().slice(0, 10)} on ${gpu.describe()}`);
    const peaks = await measurePeaks(gpu, quick);
    console.log(
      `# peaks: FMA ${peaks.fmaGflops.toFixed(1)} GFLOP/s, copy ${peaks.copyGbps.toFixed(1)} GB/s`,
    );
    const all: BenchRow[] = [];
    for (const s of chosen) {
      console.log(`\n## ${s.name}`);
      const rows = await s.run({ gpu, peaks, quick });
      console.log(formatRows(rows));
      all.push(...rows.map((r) => ({ suite: s.name, ...r })));
    }
    if (typeof v.json === "string") {
      const doc = {
        date: new Date().toISOString(),
        adapter: gpu.adapter,
        peaks,
        rows: all,
      };
      await Deno.writeTextFile(v.json, JSON.stringify(doc, null, 2) + "\n");
      console.log(`\nwrote ${all.length} rows to ${v.json}`);
    }
  });
}
