/**
 * Which launcher started this process, read from the environment it sets:
 * Open MPI's `mpirun` (OMPI_COMM_WORLD_*), MPICH's Hydra `mpiexec`
 * (PMI_RANK / PMI_SIZE), a PMIx launcher (PMIX_RANK, e.g. PRRTE or
 * `srun --mpi=pmix`), and Slurm's `srun` (SLURM_PROCID inside a job step).
 * Nothing here loads MPI: without a launcher bloom never touches libmpi.
 *
 * Inside an sbatch script but outside `srun`, Slurm sets SLURM_PROCID=0 and
 * SLURM_NTASKS too; only a job step (srun) sets SLURM_STEP_ID, so that is what
 * marks a rank, and a bare `./bloom train` in a batch script stays one process.
 */

/** The launchers bloom recognises. */
export type LauncherKind = "openmpi" | "hydra" | "pmix" | "slurm";

/** What the launcher says about this process. */
export interface Launcher {
  kind: LauncherKind;
  /** This process's rank among all ranks, 0-based. */
  rank: number;
  /** Ranks in all (null where the launcher does not say: PMIx alone). */
  size: number | null;
  /** Rank among the ranks on this host (null where unknown). */
  localRank: number | null;
  /** Ranks on this host (null where unknown). */
  localSize: number | null;
  /** Human name of the launcher, for messages. */
  name: string;
}

/** Environment lookup (Deno.env.get, or a record in tests). */
export type Env = (name: string) => string | undefined;

/** Names per launcher: rank, size, local rank, local size, and a description. */
const VARIABLES: Record<
  LauncherKind,
  { rank: string; size: string | null; localRank: string; localSize: string | null; name: string }
> = {
  openmpi: {
    rank: "OMPI_COMM_WORLD_RANK",
    size: "OMPI_COMM_WORLD_SIZE",
    localRank: "OMPI_COMM_WORLD_LOCAL_RANK",
    localSize: "OMPI_COMM_WORLD_LOCAL_SIZE",
    name: "Open MPI's mpirun",
  },
  hydra: {
    rank: "PMI_RANK",
    size: "PMI_SIZE",
    localRank: "MPI_LOCALRANKID",
    localSize: "MPI_LOCALNRANKS",
    name: "MPICH's mpiexec (Hydra)",
  },
  pmix: {
    rank: "PMIX_RANK",
    size: null,
    localRank: "PMIX_LOCAL_RANK",
    localSize: "PMIX_LOCAL_SIZE",
    name: "a PMIx launcher",
  },
  slurm: {
    rank: "SLURM_PROCID",
    size: "SLURM_STEP_NUM_TASKS",
    localRank: "SLURM_LOCALID",
    localSize: null,
    name: "Slurm's srun",
  },
};

/** Checked in this order: the most specific launcher first (srun --mpi=pmix sets PMIX_RANK too). */
const ORDER: LauncherKind[] = ["openmpi", "hydra", "slurm", "pmix"];

function nonNegativeInt(env: Env, name: string): number | null {
  const raw = env(name);
  if (raw === undefined || raw.trim() === "") return null;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) {
    throw new Error(`the launcher set ${name}=${raw}, which is not a rank count or index`);
  }
  return n;
}

/**
 * The launcher that started this process, or null when none did (a plain
 * `./bloom train`: one process, no MPI).
 */
export function detectLauncher(env: Env = (n) => Deno.env.get(n)): Launcher | null {
  for (const kind of ORDER) {
    const v = VARIABLES[kind];
    if (kind === "slurm" && env("SLURM_STEP_ID") === undefined) continue;
    const rank = nonNegativeInt(env, v.rank);
    if (rank === null) continue;
    let size = v.size ? nonNegativeInt(env, v.size) : null;
    if (kind === "slurm") size ??= nonNegativeInt(env, "SLURM_NTASKS");
    if (size !== null && rank >= size) {
      throw new Error(
        `the launcher set ${v.rank}=${rank} but ${v.size}=${size}: rank past the end`,
      );
    }
    let localSize = v.localSize ? nonNegativeInt(env, v.localSize) : null;
    if (kind === "slurm") localSize = slurmLocalSize(env);
    return {
      kind,
      rank,
      size,
      localRank: nonNegativeInt(env, v.localRank),
      localSize,
      name: v.name,
    };
  }
  return null;
}

/**
 * Tasks of this step on this node: SLURM_STEP_TASKS_PER_NODE ("2(x3),1") read
 * at this node's index (SLURM_NODEID).
 */
function slurmLocalSize(env: Env): number | null {
  const spec = env("SLURM_STEP_TASKS_PER_NODE") ?? env("SLURM_TASKS_PER_NODE");
  const node = nonNegativeInt(env, "SLURM_NODEID");
  if (!spec || node === null) return null;
  const perNode: number[] = [];
  for (const part of spec.split(",")) {
    const m = /^(\d+)(?:\(x(\d+)\))?$/.exec(part.trim());
    if (!m) return null;
    for (let i = 0; i < Number(m[2] ?? 1); i++) perNode.push(Number(m[1]));
  }
  return perNode[node] ?? null;
}
