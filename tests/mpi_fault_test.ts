/**
 * Faults in a 2-rank run under mpirun: a rank killed with SIGKILL mid-run,
 * SIGTERM to the launcher (what Slurm sends at the time limit), a non-finite
 * loss on one rank, an exception on one rank, a missing MPI library, and ranks started with
 * different configs. In every case every rank is gone within 30 s, the
 * message names the rank and the reason, no `.tmp` file is left, and the last
 * checkpoint and the resume file load.
 */
import { join } from "node:path";
import { openPth } from "../data/pth.ts";
import { openSafetensors } from "../data/safetensors.ts";
import { assert, assertEquals } from "./assert.ts";
import {
  launch,
  mpirunArgs,
  mpiTest,
  run,
  synthesize,
  tinyConfig,
  workerCommand,
  writeJobs,
} from "./mpi_launch.ts";

/** Every rank must be gone this long after the fault. */
const LIMIT_MS = 30_000;

let shared: Promise<{ dir: string; data: string }> | null = null;
function setup() {
  shared ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-mpi-fault-" });
    return { dir, data: await synthesize(join(dir, "data")) };
  })();
  return shared;
}

/** A long run that saves every step, started under mpirun. */
async function start(name: string, env: Record<string, string> = {}) {
  const { dir, data } = await setup();
  const out = join(dir, name);
  const jobs = await writeJobs(dir, name, [
    { config: tinyConfig(), data, out, steps: 10_000, saveEvery: 1 },
  ]);
  const child = launch(workerCommand(2, jobs), env);
  const output = Promise.all([child.stdout, child.stderr].map((s) => new Response(s).text()))
    .then((t) => t.join(""));
  return { out, child, output };
}

/** Waits until `out` holds `n` checkpoints. */
async function checkpoints(
  out: string,
  n: number,
  child: Deno.ChildProcess,
  output: Promise<string>,
) {
  let done = false;
  child.status.then(() => (done = true));
  for (let t = 0; t < 600; t++) {
    try {
      if ([...Deno.readDirSync(join(out, "checkpoints"))].length >= n) return;
    } catch { /* not created yet */ }
    if (done) throw new Error(`the job ended before ${n} checkpoints:\n${await output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no ${n} checkpoints after 120 s`);
}

/** The ranks mpirun started: rank → pid (from their environment in /proc). */
function ranks(launcher: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid !== launcher) continue;
      const env = Deno.readTextFileSync(`/proc/${e.name}/environ`).split("\0");
      const rank = env.find((v) => v.startsWith("OMPI_COMM_WORLD_RANK="));
      if (rank) out.set(Number(rank.split("=")[1]), Number(e.name));
    } catch { /* gone meanwhile */ }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Waits for the launcher to end (within LIMIT_MS of now) and for every rank to be gone. */
async function ended(child: Deno.ChildProcess, pids: number[]): Promise<number> {
  const t0 = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const status = await Promise.race([
    child.status,
    new Promise<null>((r) => (timer = setTimeout(() => r(null), LIMIT_MS))),
  ]);
  clearTimeout(timer);
  if (!status) {
    child.kill("SIGKILL");
    throw new Error(`the job was still running ${LIMIT_MS / 1000} s after the fault`);
  }
  while (pids.some(alive) && performance.now() - t0 < LIMIT_MS) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert(!pids.some(alive), `ranks ${pids.filter(alive)} outlived the launcher`);
  return status.code;
}

/**
 * No partial file, and the last checkpoint and the resume file load and agree on the step;
 * returns both steps.
 */
async function lastCheckpointLoads(out: string): Promise<{ checkpoint: number; resume: number }> {
  for (const d of [out, join(out, "checkpoints")]) {
    const tmp = [...Deno.readDirSync(d)].filter((e) => e.name.endsWith(".tmp"));
    assertEquals(tmp.map((e) => e.name), [], `partial files in ${d}`);
  }
  const names = [...Deno.readDirSync(join(out, "checkpoints"))].map((e) => e.name).sort();
  const last = names[names.length - 1];
  const ck = await openPth(join(out, "checkpoints", last));
  assert(ck.tensors.has("teacher.backbone.cls_token"), `${last} is a teacher checkpoint`);
  ck.close();
  const resume = await openSafetensors(join(out, "resume.safetensors"));
  const step = JSON.parse(resume.metadata["bloom.resume"]).iteration;
  resume.close();
  // The resume file is written right after its checkpoint: it is that step's or (if the stop
  // fell between the two writes) the one before.
  const lastStep = Number(last.match(/(\d+)/)![1]);
  assert(step === lastStep || step === lastStep - 1, `resume at ${step}, checkpoint ${last}`);
  return { checkpoint: lastStep, resume: step };
}

mpiTest(
  "mpi faults: a rank killed mid-run takes every rank down; the last checkpoint loads",
  async () => {
    const { out, child, output } = await start("kill");
    await checkpoints(out, 2, child, output);
    const pids = ranks(child.pid);
    assertEquals([...pids.keys()].sort(), [0, 1]);
    Deno.kill(pids.get(1)!, "SIGKILL");
    const code = await ended(child, [...pids.values()]);
    assert(code !== 0, "the job failed");
    const text = await output;
    assert(/rank 1 .*(exited on signal 9|Killed)/s.test(text), text);
    await lastCheckpointLoads(out);
  },
);

mpiTest("mpi faults: SIGTERM to mpirun stops every rank and says where to resume", async () => {
  const { out, child, output } = await start("term");
  await checkpoints(out, 2, child, output);
  const pids = ranks(child.pid);
  child.kill("SIGTERM");
  const code = await ended(child, [...pids.values()]);
  assert(code !== 0, "the job failed");
  const text = await output;
  const { checkpoint, resume } = await lastCheckpointLoads(out);
  assert(text.includes("SIGTERM received; stopping every rank"), text);
  // Rank 0 names the last checkpoint and where --resume continues.
  const name = `teacher_${String(checkpoint).padStart(7, "0")}.pth`;
  assert(
    text.includes(`${name} (step ${checkpoint}); --resume continues from step ${resume}`),
    text,
  );
});

mpiTest(
  "mpi faults: a non-finite loss on rank 1 stops both ranks without a new checkpoint",
  async () => {
    const { out, child, output } = await start("nan", { BLOOM_INJECT_FAULT: "nonfinite@1:2" });
    const code = await ended(child, []);
    assertEquals(code, 1);
    const text = await output;
    assert(text.includes("the loss became NaN at step 2 on rank 1"), text);
    assertEquals(text.split("the loss became").length, 2, "said once (by rank 0)");
    assertEquals(await lastCheckpointLoads(out), { checkpoint: 2, resume: 2 });
  },
);

mpiTest("mpi faults: an error on one rank aborts the job with its rank and message", async () => {
  const { out, child, output } = await start("crash", { BLOOM_INJECT_FAULT: "crash@1:1" });
  const code = await ended(child, []);
  assert(code !== 0);
  const text = await output;
  assert(
    /error on rank 1\/2 on .*: crash injected by BLOOM_INJECT_FAULT at step 1; stopping every rank \(MPI_Abort\)/
      .test(text),
    text,
  );
  assertEquals((await lastCheckpointLoads(out)).checkpoint, 1);
});

mpiTest("mpi faults: no MPI library under a launcher names the package to install", async () => {
  const { dir, data } = await setup();
  const jobs = await writeJobs(dir, "nolib", [
    { config: tinyConfig(), data, out: join(dir, "nolib"), steps: 1 },
  ]);
  const r = await run(workerCommand(2, jobs), { BLOOM_LIBMPI: "/nonexistent/libmpi.so.40" });
  assert(r.code !== 0, r.output);
  assert(r.output.includes("Open MPI's mpirun started this process"), r.output);
  assert(r.output.includes("apt-get install openmpi-bin"), r.output);
});

mpiTest(
  "mpi faults: ranks started with different configs are refused, naming the field",
  async () => {
    const { dir, data } = await setup();
    const job = (seed: number) =>
      writeJobs(dir, `seed-${seed}`, [
        { config: tinyConfig({ seed }), data, out: join(dir, "differ"), steps: 1 },
      ]);
    const [a, b] = [await job(5), await job(6)];
    // MPMD: rank 0 runs one job file, rank 1 the other.
    const [cmd0, cmd1] = [a, b].map((j) => workerCommand(1, j));
    const argv = [...mpirunArgs(1, cmd0), ":", "-np", "1", ...cmd1];
    const r = await run(argv);
    assertEquals(r.code, 1, r.output);
    assert(r.output.includes("config.seed: 5 on rank 0, 6 on rank 1"), r.output);
    assert(!r.output.includes("MPI_Abort"), "refused cleanly, every rank");
    await Deno.remove(dir, { recursive: true });
  },
);
