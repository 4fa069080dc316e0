/**
 * The MPI benchmark suite (bench/mpi.ts) on a tiny plan, so it cannot rot: it
 * launches its 2-rank allreduce and the 1- and 2-rank steps and returns
 * consistent rows (the numbers themselves are the benchmark's business).
 */
import { makeMpiSuite } from "../bench/mpi.ts";
import type { Peaks } from "../bench/harness.ts";
import { getGpu } from "../kernels/runtime.ts";
import { assert, assertEquals } from "./assert.ts";
import { mpiTest, tinyConfig } from "./mpi_launch.ts";

const PEAKS: Peaks = { fmaGflops: 1, copyGbps: 1 };

mpiTest("mpi bench: the suite runs on a tiny plan and its rows hold together", async () => {
  const suite = makeMpiSuite(() => ({
    elements: 5 << 20,
    arena: "20 MiB arena",
    config: tinyConfig(),
    batch: 8,
    model: "tiny",
    iters: 1,
  }));
  const rows = await suite.run({ gpu: await getGpu(), peaks: PEAKS, quick: true });
  assertEquals(rows.length, 4);
  for (const r of rows) {
    assert(r.ms >= 0 && Number.isFinite(r.ratio) && r.peak > 0, JSON.stringify(r));
  }
  // 20 MiB in 16 MiB buckets: two buckets.
  assert(rows[0].note!.includes("in 2 buckets"), rows[0].note);
  assert(rows[3].ratio >= 0 && rows[3].ratio <= 1, "a fraction");
});
