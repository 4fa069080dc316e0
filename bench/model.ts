/**
 * Model-level inference benchmarks: the DINOv2 ViT forward (random weights, inference graph,
 * CLS after the final norm) next to PyTorch CPU running the same model from
 * scripts/reference/dinov2_ref.py in the same run (scripts/bench/torch_vit.py), plus the same
 * forward as GFLOP/s against the adapter's FMA peak; and a ViT-B memory check: a batch whose
 * activations exceed the adapter's binding limit must run (the kernels split large bindings),
 * reported with its time and the buffer pool's peak bytes.
 *
 * FLOPs counted (`vitForwardFlops`): 2·rows·in·out for every linear layer (patch embedding,
 * qkv, proj, fc1/fc2 or w12/w3) and 4·T²·D per block for attention (QKᵀ and PV, all heads);
 * biases, norms, softmax, GELU and the position add are not counted.
 */
import { ParamArena } from "../graph/arena.ts";
import { Graph } from "../graph/graph.ts";
import { Params } from "../graph/params.ts";
import {
  type LinearUse,
  type ModelPass,
  tokenCounts,
  tuneForVit,
  vitLinears,
} from "../graph/tune.ts";
import { type VitConfig, vitConfig, vitForward, vitParamSpecs } from "../graph/vit.ts";
import { fmtBytes } from "../kernels/pool.ts";
import { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { initialValue } from "../graph/init.ts";
import { mulberry32 } from "../graph/random.ts";
import type { BenchRow, BenchSuite } from "./harness.ts";
import { QUIET_WAIT_MS } from "./load.ts";
import { fmaPeak } from "./peaks.ts";
import {
  comparisonRow,
  interleave,
  ourThreads,
  peakComparisonRow,
  peerScript,
  PeerSession,
  type PeerSkipped,
  type Rounds,
} from "./peers.ts";

// ------------------------------------------------------------------ FLOPs

/** FLOPs of one ViT forward over `batch` images (what is counted: see the top of this file). */
export function vitForwardFlops(cfg: VitConfig, batch: number, image: number): number {
  const { tokens } = tokenCounts(cfg, image);
  const [patch, ...block] = vitLinears(cfg, batch, image);
  const lin = (u: LinearUse) => 2 * u.rows * u.inDim * u.outDim;
  const perBlock = block.reduce((s, u) => s + lin(u), 0) + 4 * batch * tokens * tokens * cfg.dim;
  return lin(patch) + cfg.depth * perBlock;
}

// ------------------------------------------------------------------ model set-up

/** A ViT arena with DINOv2's (seeded) initialisation, no gradients. */
export function randomVit(gpu: Gpu, cfg: VitConfig, seed = 0): ParamArena {
  const specs = vitParamSpecs(cfg);
  const arena = ParamArena.create(gpu, specs);
  const rand = mulberry32(seed);
  for (const s of specs) arena.set(s.name, initialValue(s, rand));
  return arena;
}

/** Uploads `n` standard-normal floats (stand-ins for normalised images). */
export function randomTensor(gpu: Gpu, shape: readonly number[], seed = 1): GpuTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const rand = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    // Box–Muller pairs: two normals per two uniforms.
    const r = Math.sqrt(-2 * Math.log(Math.max(rand(), 1e-12)));
    const t = 2 * Math.PI * rand();
    x[i] = r * Math.cos(t);
    if (i + 1 < n) x[i + 1] = r * Math.sin(t);
  }
  return gpu.tensor(x, shape);
}

/**
 * The warm-up's tuning, what the train and embed commands run (graph/tune.ts `tuneForVit`:
 * the pass's matmul shapes, attention, row kernels), without their time budget: benchmarks
 * measure the tuned steady state a machine reaches after its first few runs. Cached choices
 * cost nothing. Says what it did, for the row's note.
 */
export async function tuneFor(gpu: Gpu, vit: VitConfig, pass: ModelPass): Promise<string> {
  const r = await tuneForVit(gpu, vit, { ...pass, budgetMs: Infinity });
  return `tuned (tuneForVit: ${r.matmulClasses} matmul classes, ${r.measured} kernel shapes ` +
    `measured now) in ${r.seconds.toFixed(0)} s`;
}

/** One forward of `cfg` over `images`, CLS after the final norm copied into `sink` [B, D]. */
export function forwardOnce(
  gpu: Gpu,
  arena: ParamArena,
  cfg: VitConfig,
  images: GpuTensor,
  sink: GpuTensor,
): void {
  const g = new Graph(gpu, { training: false });
  try {
    const ps = new Params(g, arena, { trainable: false });
    const out = vitForward(ps, cfg, g.input(images), { outputs: ["clsNorm"] });
    gpu.copy(out.clsNorm!.value, sink);
  } finally {
    g.dispose();
  }
}

/** Throws unless every value is finite and they are not all equal (a forward that really ran). */
async function checkOutput(gpu: Gpu, sink: GpuTensor, what: string): Promise<void> {
  const v = await gpu.readF32(sink);
  const bad = v.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) throw new Error(`${what}: output element ${bad} is ${v[bad]}`);
  if (v.every((x) => x === v[0])) throw new Error(`${what}: every output element is ${v[0]}`);
}

// ------------------------------------------------------------------ plan

/** One forward row: a named model at a batch and image size. */
export interface ForwardCase {
  /** Row name, e.g. "vit_small forward b32". */
  name: string;
  vit: VitConfig;
  batch: number;
  image: number;
  /** Arguments that make scripts/bench/torch_vit.py build the same model. */
  peerArgs: string[];
}

/** What the suite runs: speed rows, the memory row, and how often. */
export interface ModelPlan {
  forward: ForwardCase[];
  /** Run once (plus a batch-1 warm-up that compiles the pipelines); null: no memory row. */
  memory: ForwardCase | null;
  warmup: number;
  /** Interleaved rounds, and at most this many where too few of them were quiet. */
  iters: number;
  maxIters?: number;
  /** Rounds of the memory row (each one forward against the FMA peak): [rounds, at most]. */
  memoryRounds?: [number, number];
  /** Wait before each round for a quiet machine (bench/load.ts; default 0). */
  quietWaitMs?: number;
}

/** torch_vit.py arguments for a config. */
export function vitPeerArgs(cfg: VitConfig, batch: number, image: number): string[] {
  if (cfg.registers > 0 || cfg.posInterp !== "runtime") {
    throw new RangeError("torch_vit.py builds register-free models with runtime interpolation");
  }
  return [
    ...(cfg.arch === "custom" ? [] : ["--arch", cfg.arch]),
    ...["--dim", cfg.dim, "--depth", cfg.depth, "--heads", cfg.heads, "--mlp", cfg.mlpHidden],
    ...["--ffn", cfg.ffn, "--patch", cfg.patch, "--pos-grid", cfg.posGrid],
    ...["--batch", batch, "--image", image],
  ].map(String);
}

function forwardCase(arch: "vit_small" | "vit_base", batch: number): ForwardCase {
  const vit = vitConfig(arch);
  return {
    name: `${arch} forward b${batch}`,
    vit,
    batch,
    image: 224,
    peerArgs: vitPeerArgs(vit, batch, 224),
  };
}

/**
 * The benchmark's shapes: ViT-S b32 and ViT-B b64 (quick: b4 and b8), 224 px; rounds of ours
 * and PyTorch alternating (quick 5, full 7: medians over fewer moved by 20 % between runs on a
 * shared 2-core machine; up to 4 more where other processes' load spoilt too many), and the
 * ViT-B forward in rounds of its own against the FMA peak (quick 1; full 5, up to 7: over 3,
 * the row moved by 12 % between two quiet runs, the host's speed drifting within a round).
 */
export function modelPlan(quick: boolean): ModelPlan {
  return {
    forward: [forwardCase("vit_small", quick ? 4 : 32)],
    memory: forwardCase("vit_base", quick ? 8 : 64),
    warmup: 1,
    iters: quick ? 5 : 7,
    maxIters: quick ? 5 : 11,
    memoryRounds: quick ? [1, 1] : [5, 7],
    quietWaitMs: quick ? 0 : QUIET_WAIT_MS,
  };
}

// ------------------------------------------------------------------ rows

async function forwardRows(
  gpu: Gpu,
  c: ForwardCase,
  plan: ModelPlan,
  opts: ModelSuiteOptions,
): Promise<BenchRow[]> {
  const { vit, batch: B, image: S } = c;
  const notes = [`${S} px, random weights`];
  const threads = ourThreads();
  // The peer warms up in its own process first (it shares the cores: never beside our runs).
  const peer: PeerSession | PeerSkipped = opts.peers ?? true
    ? await PeerSession.open(peerScript("torch_vit.py"), [
      ...c.peerArgs,
      ...["--warmup", String(plan.warmup), "--threads", String(threads)],
    ])
    : { ok: false, reason: "peers disabled" };
  const arena = randomVit(gpu, vit);
  const images = randomTensor(gpu, [B, 3, S, S]);
  const sink = gpu.empty([B, vit.dim]);
  let rounds: Rounds;
  const roundPeaks: number[] = [];
  try {
    if (opts.tune ?? true) {
      notes.push(await tuneFor(gpu, vit, { images: B, image: S, training: false }));
    }
    for (let i = 0; i < plan.warmup; i++) forwardOnce(gpu, arena, vit, images, sink);
    await gpu.sync();
    await fmaPeak(gpu, [1024], 1); // compiled outside the rounds
    // Wall time of ours (graph building and encoding included), as the peer's is; each round
    // also measures the FMA peak, so the compute row's ratio is interleaved too: the best of
    // calls just before and just after the forward (other load only ever slows a call down, and
    // a burst seldom covers both).
    rounds = await interleave(
      plan.iters,
      async () => {
        const before = await fmaPeak(gpu, [1024], 2);
        const t = await gpu.time(() => forwardOnce(gpu, arena, vit, images, sink));
        roundPeaks.push(Math.max(before, await fmaPeak(gpu, [1024], 2)));
        return t.wallMs;
      },
      peer,
      { maxRounds: plan.maxIters, quietWaitMs: plan.quietWaitMs },
    );
    await checkOutput(gpu, sink, c.name);
  } finally {
    gpu.release(images, sink);
    arena.destroy();
    if (peer instanceof PeerSession) await peer.close();
  }
  const flops = vitForwardFlops(vit, B, S);
  const rss = peer instanceof PeerSession && typeof peer.info.max_rss_mib === "number"
    ? `; pytorch max RSS ${peer.info.max_rss_mib} MiB`
    : "";
  return [
    comparisonRow(
      c.name,
      { ours: B, peer: B },
      rounds,
      "pytorch cpu",
      { ours: threads, peer: peer instanceof PeerSession ? Number(peer.info.threads) : threads },
      notes.join("; ") + rss,
    ),
    peakComparisonRow(
      `${c.name} compute`,
      flops,
      { ours: rounds.ours, peaks: roundPeaks, load: rounds.load },
      threads,
      `${(flops / 1e9).toFixed(1)} GFLOP: 2·rows·in·out per linear + 4·T²·D attention per ` +
        `block; wall time against the FMA peak measured around the forward in each round`,
    ),
  ];
}

/**
 * The memory check, on a fresh device so the pool's peak is this model's alone: a batch-1
 * forward compiles the pipelines, then forwards at the case's batch are timed in rounds, each
 * against the FMA peak measured just before and just after it on the same device (the best of
 * both: other load only slows a call down), and the output checked. Falls back to the shared
 * device (and says so) where a second device cannot be made.
 */
async function memoryRow(shared: Gpu, c: ForwardCase, plan: ModelPlan): Promise<BenchRow> {
  const [rounds, maxRounds] = plan.memoryRounds ?? [1, 1];
  let gpu: Gpu;
  let own = true;
  try {
    gpu = await Gpu.create();
  } catch {
    gpu = shared;
    own = false;
  }
  const { vit, batch: B, image: S } = c;
  const before = gpu.pool.stats();
  const arena = randomVit(gpu, vit);
  const paramBytes = gpu.pool.stats().liveBytes - before.liveBytes;
  try {
    const warmImages = randomTensor(gpu, [1, 3, S, S]);
    const warmSink = gpu.empty([1, vit.dim]);
    forwardOnce(gpu, arena, vit, warmImages, warmSink);
    await gpu.sync();
    gpu.release(warmImages, warmSink);
    await fmaPeak(gpu, [256], 1); // compiled outside the rounds
    const images = randomTensor(gpu, [B, 3, S, S]);
    const sink = gpu.empty([B, vit.dim]);
    const peaks: number[] = [];
    let peakBefore = 0;
    const r = await interleave(rounds, async () => {
      peakBefore = await fmaPeak(gpu, [256], 3);
      const t = await gpu.time(() => forwardOnce(gpu, arena, vit, images, sink));
      return t.gpuMs ?? t.wallMs;
    }, {
      name: "fma peak",
      run: async () => {
        peaks.push(Math.max(peakBefore, await fmaPeak(gpu, [256], 3)));
        return 1; // unused: the peaks go to peakComparisonRow
      },
    }, { maxRounds, quietWaitMs: plan.quietWaitMs });
    await checkOutput(gpu, sink, c.name);
    gpu.release(images, sink);
    const after = gpu.pool.stats();
    const limit = gpu.limits.maxStorageBufferBindingSize;
    const { tokens } = tokenCounts(vit, S);
    const widest = B * tokens * Math.max(vit.mlpHidden, 3 * vit.dim) * 4;
    const peak = own || after.peakLiveBytes > before.peakLiveBytes
      ? `pool peak ${fmtBytes(after.peakLiveBytes - (own ? 0 : before.liveBytes))}`
      : `pool peak not above the earlier ${fmtBytes(before.peakLiveBytes)}`;
    return peakComparisonRow(
      c.name,
      vitForwardFlops(vit, B, S),
      { ours: r.ours, peaks, load: r.load },
      ourThreads(),
      `forwards (matmuls as tuned so far, not tuned here), output finite; ${peak} ` +
        `(params ${fmtBytes(paramBytes)}); widest activation ` +
        `${fmtBytes(widest)} vs binding limit ${fmtBytes(limit)}` +
        (own ? "" : "; shared device (a second one could not be made)"),
    );
  } finally {
    arena.destroy();
    if (own) gpu.destroy();
  }
}

// ------------------------------------------------------------------ suite

/** Knobs of the model suite (the smoke test turns off peers and tuning, and shrinks shapes). */
export interface ModelSuiteOptions {
  /** Shapes per mode (default `modelPlan`). */
  plan?: (quick: boolean) => ModelPlan;
  /** Run the PyTorch peer (default true); off, the rows say "peers disabled". */
  peers?: boolean;
  /** Tune the forward's matmul classes before timing (default true; cached classes are free). */
  tune?: boolean;
}

/** The model suite with these options. */
export function makeModelSuite(opts: ModelSuiteOptions = {}): BenchSuite {
  return {
    name: "model",
    async run({ gpu, quick }) {
      const plan = (opts.plan ?? modelPlan)(quick);
      const rows: BenchRow[] = [];
      for (const c of plan.forward) rows.push(...await forwardRows(gpu, c, plan, opts));
      if (plan.memory) {
        rows.push(await memoryRow(gpu, plan.memory, plan));
      }
      return rows;
    },
  };
}

/** ViT-S forward next to PyTorch CPU, its GFLOP/s, and the ViT-B memory check. */
export const modelSuite: BenchSuite = makeModelSuite();
