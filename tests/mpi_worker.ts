/**
 * What the MPI tests launch under `mpirun` (and alone, for the one-rank side
 * of a comparison): `deno run -A tests/mpi_worker.ts JOBS.json`, where the
 * file holds a list of `runTraining` options (tiny configs, synthetic data)
 * run one after the other with this process's communicator. Every rank runs
 * under `runRanked`, as the command line does, so an error ends the job the
 * way it would in production.
 */
import { getGpu } from "../kernels/runtime.ts";
import { joinWorld, runRanked } from "../pipelines/mpi/world.ts";
import { type RunOptions, runTraining } from "../pipelines/train/run.ts";

const jobs = JSON.parse(await Deno.readTextFile(Deno.args[0])) as RunOptions[];
const comm = joinWorld();
const code = await runRanked(comm, async () => {
  const gpu = await getGpu();
  for (const job of jobs) await runTraining(gpu, { ...job, comm, quiet: true, autotune: false });
  return 0;
});
Deno.exit(code);
