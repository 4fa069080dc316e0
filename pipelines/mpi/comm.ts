/**
 * The communicator training and embedding use: rank, size and the handful of
 * collectives a data-parallel run needs (barrier, broadcast, allreduce,
 * allgather, abort). `SoloComm` is the single process of a run without a
 * launcher: every collective is the identity and MPI is never loaded.
 * `MpiComm` calls the system's MPI library.
 *
 * Ordering: MPI requires every rank to call collectives in the same order.
 * The asynchronous ones run on Deno's FFI helper threads, so `MpiComm` queues
 * them: one collective is in flight at a time, in the order they were asked
 * for, which is the order of the (identical) program on every rank. That is
 * also all MPI_THREAD_SERIALIZED promises; where the library grants less
 * (FUNNELED or SINGLE) the blocking twins run on the main thread instead.
 */
import { type Abi, type DataType, type ReduceOp, THREAD_LEVEL } from "./abi.ts";
import type { Launcher } from "./launcher.ts";
import type { MpiLibrary } from "./libmpi.ts";

/** Arrays the reductions take. */
export type NumericArray = Float32Array | Float64Array | Int32Array;

/** A group of ranks that train (or embed) together. */
export interface Comm {
  readonly rank: number;
  readonly size: number;
  /** "rank 1/4 on gpu-node-3", for messages. */
  readonly where: string;
  /** What carries the collectives: "single process" or the MPI library and launcher. */
  readonly transport: string;
  barrier(): Promise<void>;
  /** Overwrites `data` on every rank with root's (every rank passes the same length). */
  bcast<T extends ArrayBufferView>(data: T, root?: number): Promise<T>;
  /** Replaces `data` by its elementwise reduction over every rank (same length everywhere). */
  allreduce<T extends NumericArray>(data: T, op?: ReduceOp): Promise<T>;
  /** Every rank's bytes, by rank (lengths may differ). */
  allgather(data: Uint8Array): Promise<Uint8Array[]>;
  /** Stops every rank now (MPI_Abort) with exit status `code`. */
  abort(code: number): Promise<never>;
  /** Leaves MPI cleanly (after the last collective). */
  finalize(): void;
}

/** The one process of a run started without a launcher. */
export class SoloComm implements Comm {
  readonly rank = 0;
  readonly size = 1;
  readonly where = "single process";
  readonly transport = "single process (no MPI)";
  barrier(): Promise<void> {
    return Promise.resolve();
  }
  bcast<T extends ArrayBufferView>(data: T): Promise<T> {
    return Promise.resolve(data);
  }
  allreduce<T extends NumericArray>(data: T): Promise<T> {
    return Promise.resolve(data);
  }
  allgather(data: Uint8Array): Promise<Uint8Array[]> {
    return Promise.resolve([data.slice()]);
  }
  abort(code: number): Promise<never> {
    Deno.exit(code);
  }
  finalize(): void {}
}

/** MPI's element count is a C int; larger buffers go in pieces of this many elements. */
const MAX_COUNT = 1 << 28;

function dataType(a: ArrayBufferView): DataType {
  if (a instanceof Float32Array) return "f32";
  if (a instanceof Float64Array) return "f64";
  if (a instanceof Int32Array) return "i32";
  return "u8";
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A failed MPI call (with MPI's default error handler the job usually dies first). */
export class MpiError extends Error {
  override name = "MpiError";
}

/** Ranks of an MPI job, through the system's libmpi. */
export class MpiComm implements Comm {
  readonly rank: number;
  readonly size: number;
  readonly where: string;
  readonly transport: string;
  readonly lib: MpiLibrary;
  /** The thread level the library granted (MPI_THREAD_*). */
  readonly threadLevel: number;
  #queue: Promise<unknown> = Promise.resolve();
  #finalized = false;

  private constructor(
    lib: MpiLibrary,
    rank: number,
    size: number,
    threadLevel: number,
    transport: string,
  ) {
    this.lib = lib;
    this.rank = rank;
    this.size = size;
    this.threadLevel = threadLevel;
    this.where = `rank ${rank}/${size} on ${Deno.hostname()}`;
    this.transport = transport;
  }

  /**
   * Initialises MPI (MPI_Init_thread, asking for MPI_THREAD_MULTIPLE) and
   * checks that the library sees the ranks the launcher started: a library of
   * another MPI than the launcher's initialises every process as a job of one.
   */
  static init(lib: MpiLibrary, launcher: Launcher): MpiComm {
    const f = lib.fn;
    const flag = new Int32Array(1);
    check(f.initialized(flag), "MPI_Initialized");
    const provided = new Int32Array(1);
    // Open MPI spins a core while a rank waits in a collective; bloom's work runs on other threads
    // (the GPU driver's, llvmpipe's), which the spinning starves: 10x slower steps measured with
    // two ranks on two cores. Yielding costs nothing measurable on large allreduces.
    const yieldVar = "OMPI_MCA_mpi_yield_when_idle";
    if (lib.abi.name === "openmpi" && Deno.env.get(yieldVar) === undefined) {
      Deno.env.set(yieldVar, "1");
    }
    if (!flag[0]) {
      check(f.initThread(null, null, THREAD_LEVEL.multiple, provided), "MPI_Init_thread");
    } else provided[0] = THREAD_LEVEL.single;
    const rank = new Int32Array(1);
    const size = new Int32Array(1);
    check(f.commRank(lib.abi.commWorld, rank), "MPI_Comm_rank");
    check(f.commSize(lib.abi.commWorld, size), "MPI_Comm_size");
    const version = libraryVersion(lib);
    if (launcher.size !== null && size[0] !== launcher.size) {
      throw new MpiError(
        `${lib.path} (${version}) sees ${size[0]} process(es), but ${launcher.name} started ` +
          `${launcher.size}: the library is not the one the launcher belongs to. Set ` +
          `BLOOM_LIBMPI to the libmpi of ${launcher.name}, or launch with that library's mpirun`,
      );
    }
    const transport = `${version} (${lib.path}, ${abiLabel(lib.abi)}) under ${launcher.name}`;
    return new MpiComm(lib, rank[0], size[0], provided[0], transport);
  }

  /** Whether collectives may run on helper threads (else they block the main thread). */
  get threaded(): boolean {
    return this.threadLevel >= THREAD_LEVEL.serialized;
  }

  #enqueue<T>(fn: () => Promise<T> | T): Promise<T> {
    const p = this.#queue.then(fn);
    this.#queue = p.catch(() => {});
    return p;
  }

  barrier(): Promise<void> {
    const { fn, abi } = this.lib;
    return this.#enqueue(async () => {
      check(
        this.threaded ? await fn.barrier(abi.commWorld) : fn.barrierSync(abi.commWorld),
        "MPI_Barrier",
      );
    });
  }

  bcast<T extends ArrayBufferView>(data: T, root = 0): Promise<T> {
    const { fn, abi } = this.lib;
    const bytes = bytesOf(data);
    return this.#enqueue(async () => {
      for (let at = 0; at < bytes.length; at += MAX_COUNT) {
        const part = bytes.subarray(at, Math.min(bytes.length, at + MAX_COUNT));
        const args = [part, part.length, abi.types.u8, root, abi.commWorld] as const;
        check(this.threaded ? await fn.bcast(...args) : fn.bcastSync(...args), "MPI_Bcast");
      }
      return data;
    });
  }

  allreduce<T extends NumericArray>(data: T, op: ReduceOp = "sum"): Promise<T> {
    const { fn, abi } = this.lib;
    const type = abi.types[dataType(data)];
    return this.#enqueue(async () => {
      for (let at = 0; at < data.length; at += MAX_COUNT) {
        const part = data.subarray(at, Math.min(data.length, at + MAX_COUNT));
        const args = [abi.inPlace, part, part.length, type, abi.ops[op], abi.commWorld] as const;
        check(
          this.threaded ? await fn.allreduce(...args) : fn.allreduceSync(...args),
          "MPI_Allreduce",
        );
      }
      return data;
    });
  }

  async allgather(data: Uint8Array): Promise<Uint8Array[]> {
    const { fn, abi } = this.lib;
    const gather = (send: ArrayBufferView, count: number, type: DataType, recv: ArrayBufferView) =>
      this.#enqueue(async () => {
        const args = [
          send,
          count,
          abi.types[type],
          recv,
          count,
          abi.types[type],
          abi.commWorld,
        ] as const;
        check(
          this.threaded ? await fn.allgather(...args) : fn.allgatherSync(...args),
          "MPI_Allgather",
        );
      });
    const lengths = new Int32Array(this.size);
    await gather(Int32Array.of(data.length), 1, "i32", lengths);
    const width = Math.max(...lengths);
    const padded = new Uint8Array(width);
    padded.set(data);
    const all = new Uint8Array(width * this.size);
    await gather(padded, width, "u8", all);
    return [...lengths].map((n, r) => all.slice(r * width, r * width + n));
  }

  async abort(code: number): Promise<never> {
    // MPI_Abort normally never returns; if the runtime is already gone, leave anyway.
    await Promise.race([
      this.lib.fn.abort(this.lib.abi.commWorld, code),
      new Promise((r) => setTimeout(r, 10_000)),
    ]);
    Deno.exit(code);
  }

  finalize(): void {
    if (this.#finalized) return;
    this.#finalized = true;
    const flag = new Int32Array(1);
    check(this.lib.fn.finalized(flag), "MPI_Finalized");
    if (!flag[0]) check(this.lib.fn.finalize(), "MPI_Finalize");
  }
}

function check(rc: number, what: string): void {
  if (rc !== 0) throw new MpiError(`${what} failed with MPI error code ${rc}`);
}

function abiLabel(abi: Abi): string {
  return abi.name === "openmpi" ? "Open MPI ABI" : "MPICH ABI";
}

/** MPI_Get_library_version's first line ("Open MPI v4.1.4, …", "MPICH Version: 4.0.2"). */
function libraryVersion(lib: MpiLibrary): string {
  const buf = new Uint8Array(8192);
  const len = new Int32Array(1);
  if (lib.fn.libraryVersion(buf, len) !== 0) return "an MPI library";
  const text = new TextDecoder().decode(buf.subarray(0, Math.max(0, Math.min(len[0], buf.length))));
  return text.split(/[\n,]/)[0].replace(/\0/g, "").replace(/\s+/g, " ").trim() || "an MPI library";
}

/** Every rank's `value` (JSON-serialisable), by rank. */
export async function allgatherJson<T>(comm: Comm, value: T): Promise<T[]> {
  if (comm.size === 1) return [value];
  const all = await comm.allgather(new TextEncoder().encode(JSON.stringify(value)));
  const dec = new TextDecoder();
  return all.map((b) => JSON.parse(dec.decode(b)) as T);
}

/** Rank 0's `value` (JSON-serialisable) on every rank. */
export async function shareFromRoot<T>(comm: Comm, value: T): Promise<T> {
  if (comm.size === 1) return value;
  // Only rank 0's bytes matter: the others send `null`.
  return (await allgatherJson(comm, comm.rank === 0 ? value : null))[0] as T;
}
