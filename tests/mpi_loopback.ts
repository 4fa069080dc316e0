/**
 * An in-process stand-in for an MPI job, for unit tests: `loopback(n)` gives
 * n communicators whose collectives meet in memory. Each member's k-th
 * collective waits for every member's k-th, exactly as MPI matches them, so a
 * test can run n "ranks" concurrently in one process (one GPU, interleaved)
 * and check the algorithms without launching anything.
 */
import type { ReduceOp } from "../pipelines/mpi/abi.ts";
import type { Comm, NumericArray } from "../pipelines/mpi/comm.ts";

interface Meeting {
  values: unknown[];
  arrived: number;
  done: Promise<void>;
  resolve: () => void;
}

/** `n` communicators of one in-memory job. */
export function loopback(n: number): Comm[] {
  const meetings: Meeting[] = [];
  const meeting = (k: number): Meeting => {
    if (!meetings[k]) {
      let resolve!: () => void;
      const done = new Promise<void>((r) => (resolve = r));
      meetings[k] = { values: new Array(n), arrived: 0, done, resolve };
    }
    return meetings[k];
  };
  return Array.from({ length: n }, (_, rank) => {
    let calls = 0;
    const exchange = async (value: unknown): Promise<unknown[]> => {
      const m = meeting(calls++);
      m.values[rank] = value;
      if (++m.arrived === n) m.resolve();
      await m.done;
      return m.values;
    };
    const comm: Comm = {
      rank,
      size: n,
      where: `rank ${rank}/${n} (loopback)`,
      transport: "loopback (tests)",
      async barrier() {
        await exchange(null);
      },
      async bcast<T extends ArrayBufferView>(data: T, root = 0): Promise<T> {
        const all = await exchange(bytes(data).slice());
        bytes(data).set(all[root] as Uint8Array);
        return data;
      },
      async allreduce<T extends NumericArray>(data: T, op: ReduceOp = "sum"): Promise<T> {
        const all = (await exchange(data.slice())) as T[];
        for (let i = 0; i < data.length; i++) {
          let acc = all[0][i];
          for (let r = 1; r < n; r++) {
            const v = all[r][i];
            acc = op === "sum" ? acc + v : op === "max" ? Math.max(acc, v) : Math.min(acc, v);
          }
          data[i] = acc;
        }
        return data;
      },
      async allgather(data: Uint8Array): Promise<Uint8Array[]> {
        return ((await exchange(data.slice())) as Uint8Array[]).map((b) => b.slice());
      },
      abort(code: number): Promise<never> {
        throw new Error(`loopback rank ${rank} aborted with ${code}`);
      },
      finalize() {},
    };
    return comm;
  });
}

function bytes(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}
