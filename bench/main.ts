/**
 * `deno task bench [--quick] [--only NAME,…] [--repeat N] [--json FILE]`: kernel and model
 * benchmarks, each row a ratio to a reference measured in this run. Rows against a peer
 * (PyTorch, Pillow) alternate the two sides in rounds; `--repeat N` runs the chosen suites N
 * times in a row and reports how far each ratio moved between consecutive runs.
 */
import { command, runCommand } from "../cli/args.ts";
import { getGpu } from "../kernels/runtime.ts";
import {
  type BenchRow,
  type BenchSuite,
  formatRows,
  formatStability,
  type Peaks,
  stability,
} from "./harness.ts";
import { measurePeaks } from "./peaks.ts";
import { suites } from "./suites.ts";

/** `deno task bench`: its flags and help. */
export const BENCH = command({
  name: "bench",
  summary: "Kernel and model benchmarks, each row a ratio to a reference measured in this run.",
  flags: {
    quick: { type: "boolean", help: "smaller shapes and fewer iterations" },
    only: {
      type: "choice",
      choices: suites.map((s) => s.name),
      list: true,
      help: "suites to run (default: all)",
    },
    repeat: {
      type: "int",
      min: 1,
      default: 1,
      help: "run the suites N times in a row; report each ratio's move between runs (≤ ±15 %)",
    },
    json: { type: "string", value: "FILE", help: "also write the rows as JSON objects to FILE" },
    list: { type: "boolean", help: "list the suites and exit" },
  },
});

/** The 1, 5 and 15 minute load averages ("" where /proc/loadavg is not readable). */
function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  } catch {
    return "";
  }
}

/** One full run of the chosen suites. */
interface Run {
  date: string;
  load: { start: string; end: string };
  peaks: Peaks;
  rows: (BenchRow & { suite: string })[];
}

if (import.meta.main) {
  runCommand(BENCH, async (v) => {
    if (v.list) {
      for (const s of suites) console.log(s.name);
      return;
    }
    const only = v.only;
    const chosen: BenchSuite[] = only ? suites.filter((s) => only.includes(s.name)) : suites;
    const gpu = await getGpu();
    const quick = Boolean(v.quick);
    const repeat = Number(v.repeat ?? 1);
    console.log(`# bloom bench ${new Date().toISOString().slice(0, 10)} on ${gpu.describe()}`);
    const runs: Run[] = [];
    for (let i = 0; i < repeat; i++) {
      const start = loadAverage();
      if (repeat > 1) console.log(`\n# run ${i + 1} of ${repeat}`);
      console.log(`# load average ${start || "unknown"} on ${navigator.hardwareConcurrency} CPUs`);
      const peaks = await measurePeaks(gpu, quick);
      console.log(
        `# peaks: FMA ${peaks.fmaGflops.toFixed(1)} GFLOP/s, copy ${
          peaks.copyGbps.toFixed(1)
        } GB/s`,
      );
      const run: Run = {
        date: new Date().toISOString(),
        load: { start, end: "" },
        peaks,
        rows: [],
      };
      for (const s of chosen) {
        console.log(`\n## ${s.name}`);
        const rows = await s.run({ gpu, peaks, quick });
        console.log(formatRows(rows));
        run.rows.push(...rows.map((r) => ({ suite: s.name, ...r })));
      }
      run.load.end = loadAverage();
      runs.push(run);
    }
    const stable = stability(runs.map((r) => r.rows));
    if (repeat > 1) {
      console.log(`\n## stability over ${repeat} consecutive runs`);
      console.log(formatStability(stable));
    }
    if (typeof v.json === "string") {
      const doc = repeat === 1
        ? {
          date: runs[0].date,
          adapter: gpu.adapter,
          load: runs[0].load,
          peaks: runs[0].peaks,
          rows: runs[0].rows,
        }
        : { date: runs[0].date, adapter: gpu.adapter, runs, stability: stable };
      await Deno.writeTextFile(v.json, JSON.stringify(doc, null, 2) + "\n");
      const n = runs.reduce((k, r) => k + r.rows.length, 0);
      console.log(`\nwrote ${n} rows to ${v.json}`);
    }
  });
}
