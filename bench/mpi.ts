/**
 * Data-parallel training over MPI (pipelines/mpi), measured under a real
 * launcher: this file is the suite and, run as a program, the worker that
 * `mpirun` starts (`deno run -A bench/mpi.ts JOB.json`).
 *
 * - Allreduce of the ViT-S gradient arena (student backbone and DinoBloom's
 *   heads, 65,536 prototypes: what every step sums), in the training's 16 MiB
 *   buckets on 2 ranks, as a ratio to a host memcpy of the same bytes timed in
 *   the same process: collectives through Deno's FFI on helper threads (what
 *   training uses) and blocking calls on the main thread.
 * - The 2-rank step (micro-batch b each) against the 1-rank step at the same
 *   global batch 2b by accumulation, both timed in this run, and how much of
 *   the gradient allreduce the 2-rank step hid behind backward (1 − the time
 *   the step waited after backward ÷ the time spent in MPI).
 *
 * On a CPU adapter (llvmpipe) both ranks share the same cores, so the 2-rank
 * step cannot be faster; with one GPU per rank it is the scaling row.
 * Without Open MPI's mpirun the suite reports nothing and says why.
 */
import { join } from "node:path";
import { mulberry32 } from "../graph/random.ts";
import { vitConfig } from "../graph/vit.ts";
import { getGpu } from "../kernels/runtime.ts";
import type { MpiComm } from "../pipelines/mpi/comm.ts";
import { DEFAULT_BUCKET_BYTES } from "../pipelines/mpi/gradients.ts";
import { localMasks } from "../pipelines/mpi/shard.ts";
import { joinWorld, runRanked } from "../pipelines/mpi/world.ts";
import { dinobloomConfig, PRESETS, type TrainConfig } from "../pipelines/train/config.ts";
import { batchMasks, MaskingGenerator } from "../pipelines/train/masking.ts";
import { Trainer } from "../pipelines/train/trainer.ts";
import { type BenchRow, type BenchSuite, median } from "./harness.ts";
import { randomTensor } from "./model.ts";

/** What the worker is asked to measure. */
type Job =
  | { kind: "allreduce"; elements: number; iters: number; out: string }
  | {
    kind: "step";
    config: TrainConfig;
    /** Images per step over all ranks. */
    batch: number;
    warmup: number;
    iters: number;
    out: string;
  };

/** Elements of the ViT-S student arena (backbone + DINO and iBOT heads). */
function vitSmallArenaElements(): number {
  return Trainer.specs(PRESETS["dinobloom-s"]()).reduce(
    (n, s) => n + s.shape.reduce((a, b) => a * b, 1),
    0,
  );
}

/** What the suite measures: the allreduce size, the step's model and global batch, repeats. */
export interface MpiPlan {
  /** Elements of the allreduced arena. */
  elements: number;
  /** Names the arena in row names. */
  arena: string;
  config: TrainConfig;
  /** Global batch of the step rows (2 ranks × batch / 2 against 1 rank × batch). */
  batch: number;
  /** Names the model in row names. */
  model: string;
  iters: number;
}

/**
 * Quick: the demo preset; otherwise ViT-S with DinoBloom's heads (the full
 * gradient arena) at 56 px, so a step is seconds on llvmpipe while the
 * allreduce moves what a 224 px step moves. The allreduce row always sums
 * the ViT-S arena.
 */
export function mpiPlan(quick: boolean): MpiPlan {
  const vitS = { elements: vitSmallArenaElements(), arena: "ViT-S gradient arena" };
  if (quick) {
    const config = { ...PRESETS.demo(), batch: 8, microBatch: 4 };
    return { ...vitS, config, batch: 8, model: "demo model", iters: 2 };
  }
  const config = dinobloomConfig(vitConfig("vit_small"), 8, { imageSize: 56, microBatch: 4 });
  return { ...vitS, config, batch: 8, model: "vit_small + DinoBloom heads, 56 px", iters: 3 };
}

async function launch(ranks: number, job: Job, dir: string): Promise<Record<string, number>> {
  const file = join(dir, `${job.kind}-${ranks}.json`);
  await Deno.writeTextFile(file, JSON.stringify(job));
  const deno = [Deno.execPath(), "run", "-A", new URL(import.meta.url).pathname, file];
  const argv = ranks === 1
    ? deno
    : ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", String(ranks), ...deno];
  const out = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  if (!out.success) {
    throw new Error(`${argv.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return JSON.parse(await Deno.readTextFile(job.out));
}

async function haveMpirun(): Promise<boolean> {
  try {
    const out = await new Deno.Command("mpirun", { args: ["--version"], stdout: "piped" }).output();
    return out.success && new TextDecoder().decode(out.stdout).includes("Open MPI");
  } catch {
    return false;
  }
}

/** The suite for a plan (tests run it on a tiny one). */
export function makeMpiSuite(plan: (quick: boolean) => MpiPlan): BenchSuite {
  return {
    name: "mpi",
    run: ({ quick }) => runSuite(plan(quick)),
  };
}

export const mpiSuite: BenchSuite = makeMpiSuite(mpiPlan);

async function runSuite(plan: MpiPlan): Promise<BenchRow[]> {
  if (!(await haveMpirun())) {
    console.log("# mpi: Open MPI's mpirun is not installed (apt-get install openmpi-bin): skipped");
    return [];
  }
  const { elements, config, batch, iters } = plan;
  const dir = await Deno.makeTempDir({ prefix: "bloom-bench-mpi-" });
  const rows: BenchRow[] = [];
  try {
    const mb = (4 * elements / 2 ** 20).toFixed(0);
    const ar = await launch(2, {
      kind: "allreduce",
      elements,
      iters: iters + 2,
      out: join(dir, "allreduce.out.json"),
    }, dir);
    const modes: [string, number][] = [
      ["FFI helper thread", ar.threadedMs],
      ["blocking", ar.blockingMs],
    ];
    for (const [mode, ms] of modes) {
      rows.push({
        name: `mpi allreduce ${plan.arena}, 2 ranks (${mode})`,
        ms,
        gbps: (4 * elements) / ms / 1e6,
        peak: (4 * elements) / ar.memcpyMs / 1e6,
        peakName: "host memcpy GB/s",
        ratio: ar.memcpyMs / ms,
        note: `${mb} MiB in ${ar.buckets} buckets of ≤ 16 MiB, sum in f32; ` +
          `memcpy of the same bytes ${ar.memcpyMs.toFixed(1)} ms`,
      });
    }
    const step = (ranks: number) =>
      launch(ranks, {
        kind: "step",
        config,
        batch,
        warmup: 1,
        iters,
        out: join(dir, `step-${ranks}.out.json`),
      }, dir);
    const [one, two] = [await step(1), await step(2)];
    rows.push({
      name: `mpi train step 2 ranks × ${batch / 2} vs 1 rank × ${batch} (${plan.model})`,
      ms: two.stepMs,
      rate: batch / (two.stepMs / 1000),
      peak: one.stepMs,
      peakName: "1-rank step ms",
      ratio: one.stepMs / two.stepMs,
      note: `same global batch ${batch}, 1 rank accumulates 2 micro-batches; median of ${iters}; ` +
        `${(two.bytes / 2 ** 20).toFixed(0)} MiB of gradients a step`,
    });
    rows.push({
      name: `mpi gradient allreduce hidden behind backward (2 ranks, ${plan.model})`,
      ms: two.exposedMs,
      peak: two.commMs,
      peakName: "ms in MPI allreduce",
      ratio: two.commMs > 0 ? Math.max(0, Math.min(1, 1 - two.exposedMs / two.commMs)) : 0,
      note: `ms = wait after backward; ${two.early} of ${two.buckets} buckets started ` +
        "during backward; ratio = hidden fraction",
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return rows;
}

/** Worker: allreduce timing against memcpy, on every rank; rank 0 writes the result. */
async function allreduceJob(job: Extract<Job, { kind: "allreduce" }>) {
  const comm = joinWorld() as MpiComm;
  const data = new Float32Array(job.elements).fill(1);
  const copy = new Float32Array(job.elements);
  const bucket = DEFAULT_BUCKET_BYTES / 4;
  const bucketsOf = () => {
    const out: Float32Array[] = [];
    for (let at = 0; at < data.length; at += bucket) out.push(data.subarray(at, at + bucket));
    return out;
  };
  const { fn, abi } = comm.lib;
  const modes = {
    threaded: async () => {
      for (const b of bucketsOf()) await comm.allreduce(b, "sum");
    },
    blocking: async () => {
      await comm.barrier();
      for (const b of bucketsOf()) {
        fn.allreduceSync(abi.inPlace, b, b.length, abi.types.f32, abi.ops.sum, abi.commWorld);
      }
    },
  };
  const result: Record<string, number> = { buckets: bucketsOf().length };
  for (const [name, run] of Object.entries(modes)) {
    await run();
    const times = [];
    for (let i = 0; i < job.iters; i++) {
      await comm.barrier();
      const t0 = performance.now();
      await run();
      times.push(performance.now() - t0);
    }
    result[`${name}Ms`] = median(times);
  }
  const times = [];
  for (let i = 0; i < job.iters + 1; i++) {
    const t0 = performance.now();
    copy.set(data);
    times.push(performance.now() - t0);
  }
  result.memcpyMs = median(times.slice(1));
  if (comm.rank === 0) await Deno.writeTextFile(job.out, JSON.stringify(result));
}

/** Worker: the training step on this rank's share of a global batch. */
async function stepJob(job: Extract<Job, { kind: "step" }>) {
  const comm = joinWorld();
  const gpu = await getGpu();
  const cfg = { ...job.config, batch: job.batch };
  const trainer = await Trainer.create(gpu, cfg);
  await trainer.joinRanks(comm);
  const local = job.batch / comm.size;
  const S = cfg.imageSize;
  const crops = randomTensor(gpu, [2 * local, 3, S, S]);
  const grid = S / cfg.vit.patch;
  const all = batchMasks(new MaskingGenerator(grid), 2 * job.batch, mulberry32(5));
  const masks = localMasks(all, job.batch, comm.rank * local, local);
  const times: number[] = [];
  const sync: {
    commMs: number;
    exposedMs: number;
    early: number;
    buckets: number;
    bytes: number;
  }[] = [];
  for (let i = 0; i < job.warmup + job.iters; i++) {
    await comm.barrier();
    const t0 = performance.now();
    const m = await trainer.step(crops, masks);
    if (i < job.warmup) continue;
    times.push(performance.now() - t0);
    if (m.sync) sync.push(m.sync);
  }
  const pick = (k: keyof typeof sync[0]) => sync.length ? median(sync.map((s) => s[k])) : 0;
  const result = {
    stepMs: median(times),
    commMs: pick("commMs"),
    exposedMs: pick("exposedMs"),
    early: pick("early"),
    buckets: pick("buckets"),
    bytes: pick("bytes"),
  };
  gpu.release(crops);
  trainer.destroy();
  if (comm.rank === 0) await Deno.writeTextFile(job.out, JSON.stringify(result));
}

if (import.meta.main) {
  const job = JSON.parse(await Deno.readTextFile(Deno.args[0])) as Job;
  const comm = joinWorld();
  Deno.exit(
    await runRanked(comm, async () => {
      if (job.kind === "allreduce") await allreduceJob(job);
      else await stepJob(job);
      return 0;
    }),
  );
}
