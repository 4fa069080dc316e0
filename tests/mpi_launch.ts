/**
 * Launching bloom under Open MPI's mpirun for the tests: the tiny training
 * config they share, job files for tests/mpi_worker.ts, and the launch itself
 * (`mpirun --allow-run-as-root --oversubscribe`, so it runs as root in CI and
 * with more ranks than cores). Tests skip when mpirun is not installed.
 */
import { join } from "node:path";
import type { TrainConfig } from "../pipelines/train/config.ts";
import type { RunOptions } from "../pipelines/train/run.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import { tinyTrainConfig } from "./fixtures.ts";

/** Whether Open MPI's mpirun is on PATH. */
export const HAVE_MPIRUN: boolean = await (async () => {
  try {
    const out = await new Deno.Command("mpirun", { args: ["--version"], stdout: "piped" }).output();
    return out.success && new TextDecoder().decode(out.stdout).includes("Open MPI");
  } catch {
    return false;
  }
})();

/** Whether MPICH's Hydra launcher (mpiexec.hydra, Debian's mpich) is installed: the other ABI. */
export const HAVE_HYDRA: boolean = await (async () => {
  try {
    return (await new Deno.Command("mpiexec.hydra", { args: ["--version"], stdout: "null" })
      .output()).success;
  } catch {
    return false;
  }
})();

/** A test that launches MPI jobs (skipped without mpirun; the GPU stays open across tests). */
export function mpiTest(name: string, fn: () => Promise<void>, ignore = !HAVE_MPIRUN): void {
  Deno.test({ name, ignore, sanitizeOps: false, sanitizeResources: false, fn });
}

/** `mpiexec.hydra -n N CMD…`: MPICH's launcher (bloom then loads libmpich.so.12). */
export function hydraArgs(ranks: number, cmd: string[]): string[] {
  return ["mpiexec.hydra", "-n", String(ranks), ...cmd];
}

/** A ViT of one block and 64 prototypes at 56 px: a step takes a fraction of a second on llvmpipe. */
export function tinyConfig(over: Partial<TrainConfig> = {}): TrainConfig {
  return tinyTrainConfig(8, {
    microBatch: 4,
    epochs: 2,
    epochLength: 3,
    warmupEpochs: 1,
    baseLr: 0.05,
    freezeLastLayerEpochs: 0,
    layerScaleInit: 0.1,
    seed: 5,
    ...over,
  });
}

/** Writes `jobs` for tests/mpi_worker.ts into `dir`; returns the file. */
export async function writeJobs(dir: string, name: string, jobs: RunOptions[]): Promise<string> {
  const path = join(dir, `${name}.json`);
  await Deno.writeTextFile(path, JSON.stringify(jobs));
  return path;
}

const WORKER = new URL("./mpi_worker.ts", import.meta.url).pathname;

/** The command line that runs `jobs` on `ranks` ranks (1: a plain process, no launcher). */
export function workerCommand(ranks: number, jobs: string): string[] {
  const deno = [Deno.execPath(), "run", "-A", WORKER, jobs];
  return ranks === 1 ? deno : mpirunArgs(ranks, deno);
}

/** `mpirun … -np N CMD…` as the tests launch it. */
export function mpirunArgs(ranks: number, cmd: string[]): string[] {
  return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", String(ranks), ...cmd];
}

/**
 * Starts `argv` with its output piped; the environment gets `env` on top of this one's. Open MPI's
 * shared-memory transport copies through the kernel (CMA) by default, which containers without
 * CAP_SYS_PTRACE (CI runners in Docker) refuse; the tests use its copy-in/copy-out path instead.
 */
export function launch(argv: string[], env: Record<string, string> = {}): Deno.ChildProcess {
  const cma = "OMPI_MCA_btl_vader_single_copy_mechanism";
  return new Deno.Command(argv[0], {
    args: argv.slice(1),
    env: { NO_COLOR: "1", [cma]: Deno.env.get(cma) ?? "none", ...env },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
}

/** Runs `argv` to the end; returns its status and output (stdout + stderr). */
export async function run(
  argv: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; output: string }> {
  const out = await launch(argv, env).output();
  const dec = new TextDecoder();
  return { code: out.code, output: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

/** 20 synthetic cells (5 classes × 4) at 56 px in `dir`: 2 global batches of 8 per pass. */
export async function synthesize(dir: string): Promise<string> {
  await writeSyntheticImageFolder(dir, { perClass: 4, size: 56, seed: 1 });
  return dir;
}
