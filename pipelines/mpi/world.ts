/**
 * This process's place in a job: `joinWorld` returns MPI's communicator when a
 * launcher started the process and a `SoloComm` otherwise (MPI is then never
 * loaded, and training runs exactly as a single process always has), and
 * `runRanked` is how a command's main runs on every rank: it leaves MPI
 * cleanly on success and decides how an error ends the job.
 *
 * Errors come in two kinds. One that every rank raises at the same point
 * (ranks that disagree at start, a non-finite loss computed from the summed
 * losses) is printed once, by rank 0, and every rank leaves with status 1.
 * Anything else happened on one rank only (a crash, a missing file): that rank
 * prints it with its rank and host and calls MPI_Abort, which stops every rank
 * within seconds instead of leaving them waiting in the next collective.
 */
import { InputError } from "../../data/errors.ts";
import { type Comm, MpiComm, SoloComm } from "./comm.ts";
import { detectLauncher, type Env, type Launcher } from "./launcher.ts";
import { openLibMpi } from "./libmpi.ts";

let world: Comm | null = null;

/** The communicator of this process (created on first call). */
export function joinWorld(env: Env = (n) => Deno.env.get(n)): Comm {
  if (world) return world;
  const launcher = detectLauncher(env);
  world = launcher && launcher.size !== 1 ? openMpi(launcher, env("BLOOM_LIBMPI")) : new SoloComm();
  return world;
}

function openMpi(launcher: Launcher, override: string | undefined): Comm {
  const lib = openLibMpi(launcher, override || undefined);
  return MpiComm.init(lib, launcher);
}

/** What a rank raises once it is being stopped (a signal): already reported, nothing to add. */
export class JobStopping extends Error {
  override name = "JobStopping";
}

const COLLECTIVE = Symbol("raised on every rank");

/** Marks `e` as raised on every rank at the same point (see the file comment); returns it. */
export function collective<E extends Error>(e: E): E {
  (e as unknown as Record<symbol, boolean>)[COLLECTIVE] = true;
  return e;
}

/** Whether `e` was marked by `collective`. */
export function isCollective(e: unknown): boolean {
  return e instanceof Error && (e as unknown as Record<symbol, boolean>)[COLLECTIVE] === true;
}

/** How `runRanked` reports: where messages go (stderr by default). */
export interface RankedOptions {
  print?: (line: string) => void;
  /** Maps an error to the exit status of this rank (default 1). */
  exitCode?: (e: unknown) => number;
}

/**
 * Runs `main` on this rank. On success MPI is finalised and main's status
 * returned. A collective error is printed by rank 0 only, then every rank
 * finalises and returns its status; any other error under MPI is printed with
 * this rank's place and ends the whole job through MPI_Abort. Alone (one
 * process), errors propagate unchanged.
 */
export async function runRanked(
  comm: Comm,
  main: () => Promise<number>,
  opts: RankedOptions = {},
): Promise<number> {
  const print = opts.print ?? ((l: string) => console.error(l));
  try {
    const code = await main();
    comm.finalize();
    return code;
  } catch (e) {
    if (comm.size === 1) throw e;
    const code = opts.exitCode?.(e) ?? 1;
    if (e instanceof JobStopping) return await comm.abort(code);
    const message = e instanceof Error ? e.message : String(e);
    if (isCollective(e)) {
      if (comm.rank === 0) print(`error: ${message}`);
      comm.finalize();
      return code;
    }
    print(`error on ${comm.where}: ${message}; stopping every rank (MPI_Abort)`);
    if (Deno.env.get("BLOOM_DEBUG")) console.error(e);
    return await comm.abort(code);
  }
}

/**
 * A command body that runs on every rank: `main` gets this process's
 * communicator as its last argument and runs under `runRanked` (InputError →
 * status 2, anything else → 1, as `runMain` maps them).
 */
export function ranked<A extends unknown[]>(
  main: (...args: [...A, Comm]) => Promise<number | void>,
): (...args: A) => Promise<number> {
  return (...args: A) => {
    const comm = joinWorld();
    return runRanked(comm, async () => (await main(...args, comm)) ?? 0, {
      exitCode: (e) => e instanceof InputError ? 2 : 1,
    });
  };
}
