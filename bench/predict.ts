/**
 * `predict` on precomputed embeddings, next to scikit-learn on the same
 * features (`scripts/bench/sklearn_predict.py`): 10,000 query cells
 * (384-d, ViT-S width, 5 classes) against a saved 10,000-cell kNN reference
 * (k = 20) and a saved linear probe. Ours: load both head files, the probe's
 * probabilities and the kNN vote with each cell's nearest distance (the
 * screened CPU search on worker threads — integer SIMD screening with 8-
 * then 16-bit codes, float64 decisions, the float64 search's exact answer —
 * or the GPU search on a hardware adapter; the probe runs on the main thread
 * meanwhile, as in `predict`). Theirs: brute-force `KNeighborsClassifier.fit` +
 * `predict_proba` and the probe's `predict_proba`, with as many OpenMP/BLAS
 * threads as we use workers, its process kept alive across rounds (reading
 * the files, imports and its warm-up never count). Rounds alternate A B A B
 * (`interleave`); the ratio is the median of the rounds' own ratios over the
 * quiet ones (`comparisonRow`). Target: ratio ≥ 1 (as fast as scikit-learn).
 */
import { join } from "node:path";
import { writeNpy } from "../data/npy.ts";
import { gpuNeighborSearch } from "../eval/gpu_knn.ts";
import type { EmbeddingModel } from "../eval/head_file.ts";
import { KnnIndex } from "../eval/knn_index.ts";
import { matrix } from "../eval/matrix.ts";
import { Probe } from "../eval/probe.ts";
import { EvalThreads, threadedNeighborSearch } from "../eval/threads.ts";
import { mulberry32 } from "../graph/random.ts";
import type { BenchRow, BenchSuite } from "./harness.ts";
import { comparisonRow, interleave, peerScript, PeerSession, PYTHON } from "./peers.ts";

const DIM = 384;
const CLASSES = 5;

/** `n` rows of 5 Gaussian classes in `DIM`-d (class means shared through `seed` 7). */
function cells(n: number, seed: number): { data: Float32Array; labels: string[] } {
  const means = mulberry32(7);
  const mu = Float32Array.from({ length: CLASSES * DIM }, () => 2 * (means() - 0.5));
  const rand = mulberry32(seed);
  const normal = () =>
    Math.sqrt(-2 * Math.log(Math.max(rand(), 1e-12))) * Math.cos(2 * Math.PI * rand());
  const data = new Float32Array(n * DIM);
  const labels: string[] = [];
  for (let i = 0; i < n; i++) {
    const k = i % CLASSES;
    for (let j = 0; j < DIM; j++) data[i * DIM + j] = mu[k * DIM + j] + 0.8 * normal();
    labels.push(`class${k}`);
  }
  return { data, labels };
}

/** The benchmark suite (one row). */
export const predictSuite: BenchSuite = {
  name: "predict",
  async run({ gpu, quick }): Promise<BenchRow[]> {
    const n = quick ? 2000 : 10_000;
    const rounds = quick ? 5 : 7;
    const threads = navigator.hardwareConcurrency || 1;
    const dir = await Deno.makeTempDir({ prefix: "bloom-bench-predict-" });
    const pool = EvalThreads.open(threads);
    let peer: Awaited<ReturnType<typeof PeerSession.open>> | null = null;
    try {
      const model: EmbeddingModel = {
        arch: "vit_small",
        weights: "bench.pth",
        weightsSha256: null,
        pool: "cls",
        inputSize: 224,
        dim: DIM,
      };
      const ref = cells(n, 1);
      const queries = cells(n, 2);
      const refM = matrix(ref.data, n, DIM);
      const fitRows = Math.min(n, 2000);
      const probe = await Probe.fit(
        matrix(ref.data.subarray(0, fitRows * DIM), fitRows, DIM),
        ref.labels.slice(0, fitRows),
        model,
        { threads: pool },
      );
      const probePath = join(dir, "probe.safetensors");
      const knnPath = join(dir, "knn.safetensors");
      await probe.save(probePath);
      const index = await KnnIndex.build(refM, ref.labels, model, {
        k: 20,
        search: threadedNeighborSearch(pool, { screened: true }),
        oodSample: 500,
      });
      await index.save(knnPath);
      const queriesPath = join(dir, "queries.npy");
      await writeNpy(queriesPath, { dtype: "f32", shape: [n, DIM], data: queries.data });
      const onGpu = !gpu.adapter.isFallback;
      const search = onGpu
        ? gpuNeighborSearch(gpu)
        : threadedNeighborSearch(pool, { screened: true });
      const q = matrix(queries.data, n, DIM);
      // As `predict` does: the kNN search starts on the workers, the probe runs meanwhile.
      const ours = async () => {
        const t0 = performance.now();
        const [p, k] = await Promise.all([Probe.load(probePath), KnnIndex.load(knnPath)]);
        const searching = k.withSearch(search).query(q);
        try {
          p.predict(q);
        } finally {
          await searching;
        }
        return performance.now() - t0;
      };
      await ours(); // warm-up: workers, kernels
      peer = await PeerSession.open(peerScript("sklearn_predict.py"), [
        ...["--knn", knnPath, "--probe", probePath, "--queries", queriesPath],
        ...["--threads", String(threads), "--warmup", "1"],
      ], { timeoutMs: 30 * 60_000 });
      const r = await interleave(rounds, ours, peer, { maxRounds: rounds + 4 });
      return [comparisonRow(
        `predict ${n} cells: probe + ${n}-cell kNN reference (k 20), ${DIM}-d`,
        { ours: n, peer: n },
        r,
        "scikit-learn brute kNN + predict_proba",
        { ours: threads, peer: threads },
        `kNN on ${onGpu ? `the GPU (${gpu.describe()})` : `${threads} CPU threads`} ` +
          `(${PYTHON}); target ratio ≥ 1`,
      )];
    } finally {
      if (peer instanceof PeerSession) await peer.close();
      pool.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
};
