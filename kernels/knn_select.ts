/**
 * kNN selection: the step of the GPU neighbour search (eval/gpu_knn.ts) that
 * turns a block of dot products into nearest neighbours. One thread per query
 * computes the keys ‖y‖² − 2x·y of a block of training rows and pushes them,
 * in training-index order, into the query's max-heap of size k, which stays in
 * a storage buffer between blocks. The push is scikit-learn's `heap_push` step
 * for step: a row enters only when strictly nearer than the current worst, so
 * exact ties resolve as scikit-learn's do.
 */
import { FLAT_WORKGROUP_INDEX, grid, type Kernel, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { Uniforms } from "./uniforms.ts";

/** The largest k the selection kernel keeps in registers. */
export const MAX_SELECT_K = 20;

const WG = 64;

const selectKernels = new Map<number, Kernel>();

/** The heap-selection kernel for heaps of size k (k is baked into the private arrays). */
function selectKernel(k: number): Kernel {
  let kern = selectKernels.get(k);
  if (kern) return kern;
  kern = kernel({
    name: "knn_select",
    key: `k${k}`,
    bindings: ["read", "read", "read_write", "read_write"],
    uniformBytes: 20,
    source: () => `
struct P { nq: u32, tn: u32, t0: u32, first: u32, inf_bits: u32 }
@group(0) @binding(0) var<storage, read> dots: array<f32>;      // [tn, nq]: y_t · x_q
@group(0) @binding(1) var<storage, read> ynorm: array<f32>;     // [nTrain]: ‖y‖²
@group(0) @binding(2) var<storage, read_write> hkeys: array<f32>; // [nq, K] heap keys
@group(0) @binding(3) var<storage, read_write> hidx: array<i32>;  // [nq, K] heap rows
@group(0) @binding(4) var<uniform> p: P;
const K: u32 = ${k}u;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let q = ${FLAT_WORKGROUP_INDEX} * ${WG}u + lid.x;
  if (q >= p.nq) { return; }
  var keys: array<f32, ${k}>;
  var idx: array<i32, ${k}>;
  let o = q * K;
  if (p.first == 1u) {
    // Infinity from the uniform: WGSL has no infinite literal.
    let inf = bitcast<f32>(p.inf_bits);
    for (var i = 0u; i < K; i++) { keys[i] = inf; idx[i] = -1; }
  } else {
    for (var i = 0u; i < K; i++) { keys[i] = hkeys[o + i]; idx[i] = hidx[o + i]; }
  }
  for (var t = 0u; t < p.tn; t++) {
    let key = ynorm[p.t0 + t] - 2.0 * dots[t * p.nq + q];
    if (!(key < keys[0])) { continue; }
    // scikit-learn's heap_push: sift the new key down from the root.
    var cur = 0u;
    loop {
      let left = 2u * cur + 1u;
      let right = left + 1u;
      var swap = 0u;
      if (left >= K) { break; }
      if (right >= K) {
        if (keys[left] > key) { swap = left; } else { break; }
      } else if (keys[left] >= keys[right]) {
        if (key < keys[left]) { swap = left; } else { break; }
      } else {
        if (key < keys[right]) { swap = right; } else { break; }
      }
      keys[cur] = keys[swap];
      idx[cur] = idx[swap];
      cur = swap;
    }
    keys[cur] = key;
    idx[cur] = i32(p.t0 + t);
  }
  for (var i = 0u; i < K; i++) { hkeys[o + i] = keys[i]; hidx[o + i] = idx[i]; }
}`,
  });
  selectKernels.set(k, kern);
  return kern;
}

/** One block of training rows pushed into the heaps. */
export interface SelectBlock {
  /** Queries (columns of `dots`, rows of the heaps). */
  queries: number;
  /** Training rows in the block (rows of `dots`). */
  rows: number;
  /** Index of the block's first training row (into `ynorm` and the heap's row ids). */
  first: number;
  /** The first block of a search: the heaps start empty (keys +∞, rows −1). */
  fresh: boolean;
}

/**
 * Pushes a block of training rows into the per-query heaps: `dots`
 * [rows, queries] (y·x), `ynorm` [all training rows] (‖y‖²), heaps `keys`
 * f32 and `idx` i32, both [queries, k] (written in place).
 */
export function knnSelect(
  gpu: Gpu,
  dots: GpuTensor,
  ynorm: GpuTensor,
  heap: { keys: GpuTensor; idx: GpuTensor },
  b: SelectBlock,
): void {
  const k = heap.keys.numel / Math.max(b.queries, 1);
  if (!Number.isInteger(k) || k < 1 || k > MAX_SELECT_K || heap.idx.numel !== heap.keys.numel) {
    throw new RangeError(
      `knnSelect: heaps [${heap.keys.shape}] and [${heap.idx.shape}] must be [${b.queries}, k] ` +
        `with 1 ≤ k ≤ ${MAX_SELECT_K}`,
    );
  }
  if (dots.numel !== b.rows * b.queries || ynorm.numel < b.first + b.rows) {
    throw new RangeError(
      `knnSelect: dots [${dots.shape}] must be [${b.rows}, ${b.queries}] and ynorm ` +
        `[${ynorm.shape}] must hold rows up to ${b.first + b.rows}`,
    );
  }
  const inf = new Uint32Array(Float32Array.of(Infinity).buffer)[0];
  const p = new Uniforms(20).u32(b.queries).u32(b.rows).u32(b.first).u32(b.fresh ? 1 : 0)
    .u32(inf);
  gpu.dispatch(
    selectKernel(k),
    [dots, ynorm, heap.keys, heap.idx],
    grid(Math.ceil(b.queries / WG)),
    p.bytes,
  );
}

/**
 * scikit-learn's `heap_push` on the max-heap of `k` keys at `keys[o, o + k)` with their rows
 * in `idx`: `key` enters only when strictly below the current worst (so earlier rows win exact
 * ties), then sifts down. The selection kernel does the same, step for step.
 */
export function heapPush(
  keys: Float32Array | Float64Array,
  idx: Int32Array,
  o: number,
  k: number,
  key: number,
  row: number,
): void {
  if (!(key < keys[o])) return;
  let cur = 0;
  for (;;) {
    const left = 2 * cur + 1;
    const right = left + 1;
    let swap: number;
    if (left >= k) break;
    if (right >= k) {
      if (keys[o + left] > key) swap = left;
      else break;
    } else if (keys[o + left] >= keys[o + right]) {
      if (key < keys[o + left]) swap = left;
      else break;
    } else {
      if (key < keys[o + right]) swap = right;
      else break;
    }
    keys[o + cur] = keys[o + swap];
    idx[o + cur] = idx[o + swap];
    cur = swap;
  }
  keys[o + cur] = key;
  idx[o + cur] = row;
}

/**
 * Reference of `knnSelect` on the host, in the kernel's f32 arithmetic (so it
 * agrees bit for bit): updates `keys` and `idx` ([queries, k]) in place.
 */
export function knnSelectRef(
  dots: Float32Array,
  ynorm: Float32Array,
  heap: { keys: Float32Array; idx: Int32Array },
  b: SelectBlock,
): void {
  const k = heap.keys.length / b.queries;
  if (b.fresh) {
    heap.keys.fill(Infinity);
    heap.idx.fill(-1);
  }
  for (let q = 0; q < b.queries; q++) {
    for (let t = 0; t < b.rows; t++) {
      const key = Math.fround(ynorm[b.first + t] - 2 * dots[t * b.queries + q]);
      heapPush(heap.keys, heap.idx, q * k, k, key, b.first + t);
    }
  }
}
