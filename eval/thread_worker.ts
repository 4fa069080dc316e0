/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * Worker side of `EvalThreads` (eval/threads.ts): holds views on shared
 * buffers by id and runs one job per message on its slice of the rows, with
 * the same kernels the single-threaded code runs.
 */
import { F32Dots, simdAvailable } from "./f32_dots.ts";
import { NeighborHeaps, scanQueries } from "./knn.ts";
import { screenedScan } from "./knn_screened.ts";
import { dataLossGrad } from "./logreg.ts";
import type { WorkerReply, WorkerRequest } from "./threads.ts";

const buffers = new Map<number, Float64Array | Int32Array>();

function f64(id: number): Float64Array {
  const b = buffers.get(id);
  if (!(b instanceof Float64Array)) throw new Error(`thread worker: no float64 buffer ${id}`);
  return b;
}

function i32(id: number): Int32Array {
  const b = buffers.get(id);
  if (!(b instanceof Int32Array)) throw new Error(`thread worker: no int32 buffer ${id}`);
  return b;
}

function run(req: WorkerRequest): number {
  switch (req.op) {
    case "share":
      buffers.set(
        req.buf,
        req.kind === "f64" ? new Float64Array(req.sab) : new Int32Array(req.sab),
      );
      return 0;
    case "free":
      for (const b of req.bufs) buffers.delete(b);
      return 0;
    case "knn": {
      // Heaps for queries [q0, q1) live in the shared per-k outputs at that offset.
      const heaps = req.ks.map((k, j) =>
        new NeighborHeaps(
          req.q1 - req.q0,
          k,
          f64(req.keys[j]).subarray(req.q0 * k, req.q1 * k),
          i32(req.indices[j]).subarray(req.q0 * k, req.q1 * k),
        )
      );
      const args = [
        f64(req.queries),
        req.q0,
        req.q1,
        f64(req.train),
        req.nTrain,
        f64(req.trainNormSq),
        req.d,
        heaps,
      ] as const;
      if (req.screened && simdAvailable()) {
        screenedScan(...args, new F32Dots(f64(req.train), req.nTrain, req.d));
      } else scanQueries(...args);
      return 0;
    }
    case "lossgrad": {
      const size = req.c * req.m + req.c;
      const grad = f64(req.grad).subarray(req.slot * size, (req.slot + 1) * size);
      grad.fill(0);
      return dataLossGrad(
        f64(req.x),
        req.r0,
        req.r1,
        req.m,
        i32(req.codes),
        req.c,
        f64(req.params),
        grad,
      );
    }
  }
}

self.onmessage = (e: MessageEvent<WorkerRequest>) => {
  let reply: WorkerReply;
  try {
    reply = { id: e.data.id, result: run(e.data) };
  } catch (err) {
    reply = { id: e.data.id, error: err instanceof Error ? err.stack ?? err.message : String(err) };
  }
  self.postMessage(reply);
};
