/**
 * Finds and opens the system's MPI library with Deno's FFI, and declares the
 * few MPI functions bloom calls. `BLOOM_LIBMPI` names the library outright;
 * otherwise the sonames of the launcher's own MPI are tried first, through
 * the dynamic linker's usual search (LD_LIBRARY_PATH, the linker cache), so a
 * cluster's `module load openmpi` is honoured.
 *
 * Collectives are declared `nonblocking`: Deno runs them on a helper thread
 * and returns a promise, so the event loop keeps serving GPU read-backs while
 * a gradient bucket is being reduced (MPI_Init_thread asks for
 * MPI_THREAD_MULTIPLE; see comm.ts for what happens with less). Blocking twins
 * (`…Sync`) serve libraries that only allow calls from the main thread.
 */
import type { LauncherKind } from "./launcher.ts";
import { type Abi, abiFromStatics, type Handle, openMpiStatics } from "./abi.ts";

/** MPI_Bcast's arguments: buffer, count, datatype, root, communicator. */
type BcastArgs = [buf: ArrayBufferView, count: number, type: Handle, root: number, comm: Handle];
/** MPI_Allreduce's: send buffer (MPI_IN_PLACE), receive buffer, count, datatype, op, comm. */
type AllreduceArgs = [
  send: Deno.PointerValue,
  recv: ArrayBufferView,
  count: number,
  type: Handle,
  op: Handle,
  comm: Handle,
];
/** MPI_Allgather's: send buffer, count, datatype, receive buffer, count, datatype, comm. */
type AllgatherArgs = [
  send: ArrayBufferView,
  sendCount: number,
  sendType: Handle,
  recv: ArrayBufferView,
  recvCount: number,
  recvType: Handle,
  comm: Handle,
];

/** The MPI functions bloom calls, typed. Return values are MPI error codes (0 = success). */
export interface MpiFunctions {
  initialized(flag: Int32Array): number;
  finalized(flag: Int32Array): number;
  initThread(argc: null, argv: null, required: number, provided: Int32Array): number;
  libraryVersion(out: Uint8Array, length: Int32Array): number;
  commRank(comm: Handle, out: Int32Array): number;
  commSize(comm: Handle, out: Int32Array): number;
  barrier(comm: Handle): Promise<number>;
  bcast(...args: BcastArgs): Promise<number>;
  allreduce(...args: AllreduceArgs): Promise<number>;
  allgather(...args: AllgatherArgs): Promise<number>;
  barrierSync(comm: Handle): number;
  bcastSync(...args: BcastArgs): number;
  allreduceSync(...args: AllreduceArgs): number;
  allgatherSync(...args: AllgatherArgs): number;
  abort(comm: Handle, code: number): Promise<number>;
  finalize(): number;
}

/** An opened MPI library. */
export interface MpiLibrary {
  /** The name or path that was opened. */
  path: string;
  abi: Abi;
  fn: MpiFunctions;
  close(): void;
}

/** The FFI declarations, with handles declared as the ABI passes them. */
function declarations(h: "pointer" | "i32"): Deno.ForeignLibraryInterface {
  const collectives = (nonblocking: boolean): Record<string, Deno.ForeignFunction> => ({
    barrier: { name: "MPI_Barrier", parameters: [h], result: "i32", nonblocking },
    bcast: {
      name: "MPI_Bcast",
      parameters: ["buffer", "i32", h, "i32", h],
      result: "i32",
      nonblocking,
    },
    allreduce: {
      name: "MPI_Allreduce",
      parameters: ["pointer", "buffer", "i32", h, h, h],
      result: "i32",
      nonblocking,
    },
    allgather: {
      name: "MPI_Allgather",
      parameters: ["buffer", "i32", h, "buffer", "i32", h, h],
      result: "i32",
      nonblocking,
    },
  });
  const blocking = collectives(false);
  return {
    initialized: { name: "MPI_Initialized", parameters: ["buffer"], result: "i32" },
    finalized: { name: "MPI_Finalized", parameters: ["buffer"], result: "i32" },
    initThread: {
      name: "MPI_Init_thread",
      parameters: ["pointer", "pointer", "i32", "buffer"],
      result: "i32",
    },
    libraryVersion: {
      name: "MPI_Get_library_version",
      parameters: ["buffer", "buffer"],
      result: "i32",
    },
    commRank: { name: "MPI_Comm_rank", parameters: [h, "buffer"], result: "i32" },
    commSize: { name: "MPI_Comm_size", parameters: [h, "buffer"], result: "i32" },
    ...collectives(true),
    barrierSync: blocking.barrier,
    bcastSync: blocking.bcast,
    allreduceSync: blocking.allreduce,
    allgatherSync: blocking.allgather,
    abort: { name: "MPI_Abort", parameters: [h, "i32"], result: "i32", nonblocking: true },
    finalize: { name: "MPI_Finalize", parameters: [], result: "i32" },
  } as const;
}

/** Sonames to try, the launcher's own MPI first. */
export function libraryCandidates(launcher: LauncherKind | null): string[] {
  const openmpi = ["libmpi.so.40"];
  const mpich = ["libmpich.so.12", "libmpi.so.12"];
  const order = launcher === "hydra" ? [...mpich, ...openmpi] : [...openmpi, ...mpich];
  // The unversioned names come only with -dev packages; last resort.
  return [...order, "libmpi.so", "libmpich.so"];
}

/** What to install, named for the launcher that is running. */
export function installAdvice(launcher: LauncherKind | null): string {
  const debian = launcher === "hydra"
    ? "Debian/Ubuntu: apt-get install mpich (the package libmpich12 holds libmpich.so.12)"
    : "Debian/Ubuntu: apt-get install openmpi-bin (its libopenmpi3 holds libmpi.so.40)";
  return `${debian}; on a cluster, load the MPI module the launcher comes from; ` +
    "or set BLOOM_LIBMPI=/path/to/libmpi.so of that MPI";
}

/** No usable MPI library: what was tried and why each failed. */
export class MissingMpiError extends Error {
  override name = "MissingMpiError";
}

/**
 * Opens `path` (or the first candidate that opens) and works out its ABI.
 * `override` is BLOOM_LIBMPI's value: when set, only it is tried.
 */
export function openLibMpi(
  launcher: { kind: LauncherKind; name: string } | null,
  override?: string,
): MpiLibrary {
  const names = override ? [override] : libraryCandidates(launcher?.kind ?? null);
  const failures: string[] = [];
  for (const path of names) {
    let probe: Deno.DynamicLibrary<Record<string, { type: "pointer"; optional: true }>>;
    try {
      probe = Deno.dlopen(path, openMpiStatics());
    } catch (e) {
      failures.push(`${path}: ${firstLine((e as Error).message)}`);
      continue;
    }
    try {
      const abi = abiFromStatics(probe.symbols as Record<string, Deno.PointerValue>);
      const lib = Deno.dlopen(path, declarations(abi.handle));
      return {
        path,
        abi,
        fn: lib.symbols as unknown as MpiFunctions,
        close: () => lib.close(),
      };
    } catch (e) {
      failures.push(`${path}: ${firstLine((e as Error).message)}`);
    } finally {
      probe.close();
    }
  }
  const who = launcher ? `${launcher.name} started this process, but ` : "";
  const what = override ? `BLOOM_LIBMPI=${override} does not open` : "no MPI library was found";
  throw new MissingMpiError(
    `${who}${what} (${failures.join("; ")}). Install the MPI library: ${
      installAdvice(launcher?.kind ?? null)
    }`,
  );
}

function firstLine(s: string): string {
  return s.split("\n")[0].replace(/^(Could not open library: )+/, "").trim();
}
