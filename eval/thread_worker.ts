/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * Worker side of `EvalThreads` (eval/threads.ts): holds views on shared
 * buffers by id and runs one job per message on its slice of the rows, with
 * the same kernels the single-threaded code runs.
 */
import { rowNormsSq } from "./blas.ts";
import { NeighborHeaps, scanQueries } from "./knn.ts";
import { type FloatRows, screenedScan, screenFor } from "./knn_screened.ts";
import type { ScreenDots } from "./screen_dots.ts";
import { dataLossGrad } from "./logreg.ts";
import { type SharedArray, sharedView, type WorkerReply, type WorkerRequest } from "./threads.ts";

const buffers = new Map<number, SharedArray>();
/** Per shared reference (by buffer id): its row norms and screen, kept until it is freed. */
const references = new Map<number, { yNorm: Float64Array; screen: ScreenDots | null }>();

function f64(id: number): Float64Array {
  const b = buffers.get(id);
  if (!(b instanceof Float64Array)) throw new Error(`thread worker: no float64 buffer ${id}`);
  return b;
}

function floats(id: number): FloatRows {
  const b = buffers.get(id);
  if (!(b instanceof Float64Array || b instanceof Float32Array)) {
    throw new Error(`thread worker: no float buffer ${id}`);
  }
  return b;
}

function i32(id: number): Int32Array {
  const b = buffers.get(id);
  if (!(b instanceof Int32Array)) throw new Error(`thread worker: no int32 buffer ${id}`);
  return b;
}

/** ‖row‖² of rows [r0, r1), summed as `rowNormsSq` sums them (the same float64 values). */
function normsSq(a: FloatRows, r0: number, r1: number, d: number): Float64Array {
  if (a instanceof Float64Array) return rowNormsSq(a.subarray(r0 * d, r1 * d), r1 - r0, d);
  const out = new Float64Array(r1 - r0);
  for (let i = r0; i < r1; i++) {
    let s = 0;
    const o = i * d;
    for (let j = 0; j < d; j++) s += a[o + j] * a[o + j];
    out[i - r0] = s;
  }
  return out;
}

function run(req: WorkerRequest): number {
  switch (req.op) {
    case "share":
      buffers.set(req.buf, sharedView(req.kind, req.sab));
      return 0;
    case "free":
      for (const b of req.bufs) buffers.delete(b), references.delete(b);
      return 0;
    case "knn": {
      const { q0, q1, d, nTrain } = req;
      const y = floats(req.train), x = floats(req.queries);
      const heaps = req.ks.map((k) => new NeighborHeaps(q1 - q0, k));
      // A screened search's reference stays shared until freed: its norms and codes with it.
      let ref = req.screened ? references.get(req.train) : undefined;
      if (!ref) {
        const yNorm = normsSq(y, 0, nTrain, d);
        ref = { yNorm, screen: req.screened ? screenFor(y, nTrain, d) : null };
        if (req.screened) references.set(req.train, ref);
      }
      const { yNorm, screen } = ref;
      if (screen) screenedScan(x, q0, q1, y, nTrain, yNorm, d, heaps, screen);
      else {
        const x64 = x instanceof Float64Array ? x : Float64Array.from(x);
        const y64 = y instanceof Float64Array ? y : Float64Array.from(y);
        scanQueries(x64, q0, q1, y64, nTrain, yNorm, d, heaps);
      }
      // This worker's queries, sorted into the shared outputs at their offset.
      const xNorm = normsSq(x, q0, q1, d);
      req.ks.forEach((k, j) => {
        const nb = heaps[j].finish(xNorm);
        f64(req.distances[j]).set(nb.distances, q0 * k);
        i32(req.indices[j]).set(nb.indices, q0 * k);
      });
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
