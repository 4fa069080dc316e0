/**
 * The benchmarks' load accounting (bench/load.ts): other processes' cores per round, which
 * rounds a ratio is taken from, and how a comparison row uses them (bench/peers.ts).
 */
import { cpuSample, othersCores, QUIET_CORES, quietRounds, treeSeconds } from "../bench/load.ts";
import { comparisonRow, interleave, peakComparisonRow } from "../bench/peers.ts";
import { assert, assertEquals } from "./assert.ts";

Deno.test("bench load: other processes' cores between two samples, never below 0", () => {
  const a = { atMs: 0, machine: 10, ours: 4 };
  // 2 s: the machine used 3 CPU-seconds, ours 1 of them: others used 1 core on average.
  assertEquals(othersCores(a, { atMs: 2000, machine: 13, ours: 5 }), 1);
  // Counters that tick at different moments can make ours look larger: clamped at 0.
  assertEquals(othersCores(a, { atMs: 1000, machine: 10.5, ours: 4.6 }), 0);
  assertEquals(othersCores(null, a), null);
  assertEquals(othersCores(a, a), null);
  // Where /proc is readable, this process's own CPU time is in the sample.
  const s = cpuSample();
  if (s) assert(s.ours > 0 && s.machine >= s.ours, JSON.stringify(s));
});

Deno.test("bench load: ours is the process tree: children, grandchildren, and reaped ones", async () => {
  const table = new Map([
    [1, { ppid: 0, seconds: 100 }],
    [10, { ppid: 1, seconds: 5 }],
    [11, { ppid: 10, seconds: 2 }],
    [12, { ppid: 11, seconds: 1 }],
    [20, { ppid: 1, seconds: 7 }],
  ]);
  assertEquals(treeSeconds(table, [10]), 8);
  assertEquals(treeSeconds(table, [10, 20]), 15);
  assertEquals(treeSeconds(table, [99]), 0);
  // A child that burns 0.3 s of CPU and exits (reaped: its time moves into our cutime).
  const a = cpuSample();
  if (!a) return; // no /proc here
  const burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass";
  const out = await new Deno.Command("python3", { args: ["-c", burn] }).output();
  assert(out.success);
  const b = cpuSample()!;
  assert(b.ours - a.ours >= 0.25, `ours moved by ${b.ours - a.ours} s`);
});

Deno.test("bench load: the quiet rounds, else the least loaded half (at least 3)", () => {
  const q = QUIET_CORES;
  assertEquals(quietRounds([0, q, 0.1, 0.05, 0.2]), [0, 1, 2, 3, 4]);
  // Four quiet rounds of seven: they are taken.
  assertEquals(quietRounds([0, 1.5, 0.1, 0.9, 0, 0.2, 1]), [0, 2, 4, 5]);
  // Two quiet of seven: the four least loaded, in round order.
  assertEquals(quietRounds([2, 1.5, 0.1, 0.9, 0, 1.9, 1]), [2, 3, 4, 6]);
  // Unknown load counts as quiet; fewer rounds than the minimum: all of them.
  assertEquals(quietRounds([null, null, null]), [0, 1, 2]);
  assertEquals(quietRounds([1, 2]), [0, 1]);
});

Deno.test("bench load: a comparison row takes its ratio and rates from the quiet rounds", () => {
  // Round 2 had a burst of other work that slowed ours 3× and the peer 2×.
  const rounds = {
    ours: [10, 10, 30, 10, 10],
    theirs: [20, 20, 40, 20, 20],
    load: [0, 0.1, 1.4, 0, 0.05],
  };
  const row = comparisonRow("r", { ours: 1, peer: 1 }, rounds, "p", { ours: 2, peer: 2 }, "n");
  assertEquals([row.ratio, row.rate, row.peak], [2, 100, 50]);
  assertEquals(row.compare!.quiet!.used, 4);
  assertEquals(row.compare!.ratioPerRound, [4 / 3, 2, 2]);
  assert(row.note!.includes("over the 4 quiet rounds"), row.note);
  // Without load figures every round counts, as before.
  const { load: _, ...bare } = rounds;
  const all = comparisonRow("r", { ours: 1, peer: 1 }, bare, "p", { ours: 2, peer: 2 }, "n");
  assertEquals([all.ratio, all.compare!.quiet], [2, undefined]);
  // Against the FMA peak: GFLOP/s and the peak per round, the ratio their quiet median.
  const flops = 1e9; // 1 GFLOP per call: 10 ms is 100 GFLOP/s
  const peak = peakComparisonRow(
    "c",
    flops,
    {
      ours: [10, 10, 40, 10],
      peaks: [200, 200, 50, 200],
      load: [0, 0, 2, 0],
    },
    2,
    "n",
  );
  assertEquals([peak.ratio, peak.gflops, peak.peak, peak.peakName], [0.5, 100, 200, "fma peak"]);
  assert(peak.note!.includes("fma peak 50.0–200.0 GFLOP/s"), peak.note);
});

Deno.test("bench load: interleave runs extra rounds while too few were quiet", async () => {
  const side = { name: "x", run: () => Promise.resolve(1) };
  // A fake clock: each side of a round takes 1 s; others use `busy[round]` cores meanwhile
  // (three reads a round: before ours, between the sides, after the peer's).
  const fake = (busy: number[]) => {
    let reads = 0;
    let machine = 0;
    return () => {
      const round = Math.floor(reads / 3);
      if (reads++ % 3 !== 0) machine += busy[round] ?? 0;
      return { atMs: reads * 1000, machine, ours: 0 };
    };
  };
  const run = (busy: number[], maxRounds: number) =>
    interleave(3, () => Promise.resolve(1), side, { maxRounds, cpu: fake(busy) });
  // Three quiet rounds: no more.
  assertEquals((await run([0, 0.1, 0], 6)).load, [0, 0.1, 0]);
  // Two busy of three: rounds are added until half (and 3) are quiet, here after 5.
  const r = await run([1, 0, 2, 0, 0, 0], 9);
  assertEquals([r.ours.length, r.theirs.length, r.load], [5, 5, [1, 0, 2, 0, 0]]);
  // Never more than maxRounds.
  assertEquals((await run([1, 1, 1, 1, 1, 1], 4)).ours.length, 4);
  // A burst during one side only counts for the round: the larger side's load.
  let reads = 0;
  const oneSide = () => {
    const at = reads++;
    // Round 0: 0.9 cores of others during ours (reads 0 → 1), none during the peer's.
    return { atMs: at * 1000, machine: at >= 1 ? 0.9 : 0, ours: 0 };
  };
  const b = await interleave(1, () => Promise.resolve(1), side, { cpu: oneSide });
  assertEquals(b.load, [0.9]);
});
