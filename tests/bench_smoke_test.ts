/**
 * The model, training and loader benchmarks on tiny shapes, so they cannot rot: both suites run in quick
 * mode with peers and tuning off (no Python), and their rows must be finite and consistent. Also
 * what the rows rest on: the FLOP count against one derived from the parameter specs, the matmul
 * shapes tuned against those the forward and the training step really request, and the peer
 * protocol (parsing, and a missing interpreter or an unavailable torch giving a skipped row),
 * the served peers alternating with ours, and the --repeat stability table.
 */
import { ParamArena } from "../graph/arena.ts";
import { Graph } from "../graph/graph.ts";
import { linear } from "../graph/ops.ts";
import { Params } from "../graph/params.ts";
import { linearMatmulShapes, modelMatmulShapes, weightGradBlocks } from "../graph/tune.ts";
import { vitConfig, vitForward, vitParamSpecs } from "../graph/vit.ts";
import { matmulTuner, shapeClass } from "../kernels/matmul/mod.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { Trainer } from "../pipelines/train/trainer.ts";
import { type BenchRow, formatStability, type Peaks, stability } from "../bench/harness.ts";
import {
  makeModelSuite,
  type ModelPlan,
  randomTensor,
  randomVit,
  vitForwardFlops,
  vitPeerArgs,
} from "../bench/model.ts";
import {
  comparisonRow,
  interleave,
  parsePeerOutput,
  peerRow,
  PeerSession,
  runPeer,
} from "../bench/peers.ts";
import { makeTrainSuite, maskedPerMicroBatch, stepMasks, trainPass } from "../bench/train.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./helpers.ts";
import { tinyTrainConfig, tinyVit } from "./fixtures.ts";

const TINY = tinyVit({ depth: 2 });

/** Made-up peaks: the rows are ratios to whatever the run measured; here only consistency counts. */
const PEAKS: Peaks = { fmaGflops: 50, copyGbps: 10 };

const tinyTrain = () => tinyTrainConfig(2, {}, { depth: 2 });

function checkRow(r: BenchRow) {
  assert(Number.isFinite(r.ms) && r.ms > 0, `${r.name}: ms ${r.ms}`);
  assert(r.note && r.note.length > 0, `${r.name}: no note`);
}

/** Shape classes the matmuls of `fn` look up (awaited), via the process-wide tuner. */
async function requestedClasses(gpu: Gpu, fn: () => unknown): Promise<Set<string>> {
  const tuner = matmulTuner();
  const seen = new Set<string>();
  const orig = tuner.lookup;
  tuner.lookup = (adapter, key, tag) => {
    if (adapter === gpu.adapter.name && !key.startsWith("default")) seen.add(key);
    return orig.call(tuner, adapter, key, tag);
  };
  try {
    await fn();
  } finally {
    tuner.lookup = orig;
  }
  return seen;
}

const classes = (shapes: ReturnType<typeof linearMatmulShapes>) =>
  new Set(
    shapes.map((s) =>
      shapeClass(s.M, s.N, s.K, s.batch ?? 1, s.transA ?? false, s.transB ?? false)
    ),
  );

gpuTest("bench smoke: the model suite runs in quick mode on a tiny ViT", async (gpu) => {
  const plan = (quick: boolean): ModelPlan => {
    assert(quick, "the smoke test runs quick mode");
    return {
      forward: [{ name: "tiny forward b2", vit: TINY, batch: 2, image: 28, peerArgs: [] }],
      memory: { name: "tiny forward b3", vit: TINY, batch: 3, image: 28, peerArgs: [] },
      warmup: 1,
      iters: 1,
    };
  };
  const rows = await makeModelSuite({ plan, peers: false, tune: false })
    .run({ gpu, peaks: PEAKS, quick: true });
  assertEquals(rows.map((r) => r.name), [
    "tiny forward b2",
    "tiny forward b2 compute",
    "tiny forward b3",
  ]);
  rows.forEach(checkRow);
  const [speed, compute, memory] = rows;
  // Images/s is the batch over the time; the peer was off, so its reference is NaN and said so.
  assert(Math.abs(speed.rate! - 2 / (speed.ms / 1000)) <= 1e-9 * speed.rate!);
  assert(Number.isNaN(speed.peak) && Number.isNaN(speed.ratio));
  assert(speed.note!.includes("skipped: peers disabled"), speed.note);
  assertEquals(compute.ms, speed.ms);
  assert(Math.abs(compute.gflops! - vitForwardFlops(TINY, 2, 28) / compute.ms / 1e6) < 1e-9);
  // The compute row's peak is the FMA peak measured in its own rounds, not the run's.
  assert(Number.isFinite(compute.peak) && compute.peak > 0, `peak ${compute.peak}`);
  assert(Math.abs(compute.ratio - compute.gflops! / compute.peak) < 1e-12);
  assert(/pool peak \d/.test(memory.note!), memory.note);
});

gpuTest("bench smoke: the training suite runs in quick mode on a tiny model", async (gpu) => {
  const rows = await makeTrainSuite({
    plan: () => ({
      cases: [{ name: "tiny step b2", cfg: tinyTrain(), batch: 2 }],
      warmup: 1,
      iters: 1,
    }),
    peers: false,
    tune: false,
  }).run({ gpu, peaks: PEAKS, quick: true });
  assertEquals(rows.map((r) => r.name), ["tiny step b2", "loader 224² png shards → gpu, batch 8"]);
  rows.forEach(checkRow);
  assert(Math.abs(rows[0].rate! - 2 / (rows[0].ms / 1000)) <= 1e-9 * rows[0].rate!);
  assert(rows[0].note!.includes("64 prototypes") && rows[0].note!.includes("skipped"));
  // The loader row: 8 synthetic cells per class through shards, against the step's rate.
  const [step, loader] = rows;
  assertEquals(loader.peak, step.rate);
  assert(Math.abs(loader.ratio - loader.rate! / step.rate!) <= 1e-12 * loader.ratio);
  assert(loader.note!.includes("40 images (5 classes)"), loader.note);
});

Deno.test("bench: ViT FLOPs = 2·weights·rows + 4·T²·D per block, from the parameter specs", () => {
  for (const [cfg, B, S] of [[TINY, 3, 42], [vitConfig("vit_small"), 32, 224]] as const) {
    const T = 1 + (S / 14) ** 2;
    let flops = 0;
    for (const s of vitParamSpecs(cfg)) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      if (s.name === "patch_embed.proj.weight") flops += 2 * n * B * (T - 1);
      else if (s.name.startsWith("blocks.") && s.name.endsWith("weight") && s.shape.length === 2) {
        flops += 2 * n * B * T;
      }
    }
    flops += cfg.depth * 4 * B * T * T * cfg.dim;
    assertEquals(vitForwardFlops(cfg, B, S), flops);
  }
  // ViT-S/14 at 224 px: ~5.5 GMAC of linears (timm's figure scaled from 518 px) + 0.6 of attention.
  const perImage = vitForwardFlops(vitConfig("vit_small"), 1, 224) / 1e9;
  assert(perImage > 12 && perImage < 12.5, `${perImage} GFLOP`);
});

gpuTest("bench: the tuned matmul shapes cover what the forward requests", async (gpu) => {
  const arena = randomVit(gpu, TINY);
  const images = randomTensor(gpu, [3, 3, 42, 42]);
  const seen = await requestedClasses(gpu, () => {
    const g = new Graph(gpu, { training: false });
    vitForward(new Params(g, arena), TINY, g.input(images), { outputs: ["clsNorm"] });
    g.dispose();
  });
  assertEquals(seen, classes(modelMatmulShapes(TINY, { images: 3, image: 42, training: false })));
  gpu.release(images);
  arena.destroy();
});

gpuTest("bench: the tuned matmul shapes cover what a training step requests", async (gpu) => {
  const cfg = { ...tinyTrain(), batch: 4, microBatch: 2 };
  const masks = stepMasks(cfg, 4);
  assert(masks.count > 0, "the masks must exercise the iBOT head");
  const trainer = await Trainer.create(gpu, cfg);
  const crops = randomTensor(gpu, [8, 3, 56, 56]);
  // The whole step, teacher and student: it awaits between them (the teacher's targets).
  const seen = await requestedClasses(gpu, () => trainer.step(crops, masks));
  assertEquals(seen, classes(modelMatmulShapes(cfg.vit, trainPass(cfg, 4, masks), gpu.limits)));
  gpu.release(crops);
  trainer.destroy();
});

Deno.test("bench: masked tokens per micro-batch add up to the batch's", () => {
  const cfg = { ...tinyTrain(), batch: 4, microBatch: 4 };
  const masks = stepMasks(cfg, 4);
  const halves = maskedPerMicroBatch(masks, 4, 2);
  assertEquals(halves.length, 2);
  assertEquals(halves[0] + halves[1], masks.count);
  assertEquals(maskedPerMicroBatch(masks, 4, 4), [masks.count]);
});

gpuTest("bench: tuned shapes follow the weight gradient's split over row blocks", async (gpu) => {
  // dy [600, 65,536] is 150 MiB, over a 128 MiB binding: dW = dyᵀ·x runs over row blocks.
  const [rows, inDim, outDim] = [600, 16, 65536];
  const blocks = weightGradBlocks(rows, inDim, outDim, gpu.limits);
  if (rows * outDim * 4 > gpu.limits.maxStorageBufferBindingSize) {
    assert(blocks.length > 1, `one block of ${rows} rows would exceed the binding limit`);
  }
  assertEquals(blocks.reduce((a, b) => a + b, 0), rows);
  const arena = ParamArena.create(gpu, [{ name: "w", shape: [outDim, inDim] }], { grads: true });
  const x = randomTensor(gpu, [rows, inDim]);
  const g = new Graph(gpu, { training: true });
  const seen = await requestedClasses(gpu, () => {
    const y = linear(g, g.input(x, { requiresGrad: true }), new Params(g, arena).get("w"));
    g.backward(y);
  });
  await gpu.sync();
  g.dispose();
  const use = { rows, inDim, outDim, inputGrad: true };
  assertEquals(seen, classes(linearMatmulShapes([use], true, gpu.limits)));
  gpu.release(x);
  arena.destroy();
});

Deno.test("bench peers: the JSON protocol, with errors that name the peer and the field", () => {
  const ok = parsePeerOutput(
    'noise\n{"peer": "p", "ms": [3, 1, 2], "items": 4, "torch": "1.13"}\n',
    "p.py",
  );
  assert(ok.ok);
  assertEquals(ok.medianMs, 2);
  assertEquals(ok.rate, 2000);
  assertEquals(ok.info.torch, "1.13");
  const off = parsePeerOutput('{"peer": "p", "unavailable": "no torch"}', "p.py");
  assertEquals(off, { ok: false, reason: "no torch" });
  assertThrows(() => parsePeerOutput("", "p.py"), Error, "p.py: printed nothing");
  assertThrows(() => parsePeerOutput("Traceback", "p.py"), Error, "not JSON");
  assertThrows(() => parsePeerOutput('{"ms": [], "items": 1}', "p.py"), Error, "'ms'");
  assertThrows(() => parsePeerOutput('{"ms": [1], "items": 0}', "p.py"), Error, "'items'");
  const row = peerRow("r", 500, 8, ok, "pytorch cpu", "n");
  assertEquals([row.rate, row.peak, row.ratio], [16, 2000, 16 / 2000]);
  assertThrows(
    () => vitPeerArgs({ ...TINY, registers: 4 }, 1, 28),
    RangeError,
    "register-free",
  );
});

Deno.test("bench peers: a missing interpreter or torch gives a skipped row, not a crash", async () => {
  const missing = await runPeer("x.py", [], { python: "/nonexistent/python3" });
  assert(!missing.ok && missing.reason.includes("/nonexistent/python3"), JSON.stringify(missing));
  // /bin/echo stands in for a peer that reports torch unavailable on stdout.
  const unavailable = await runPeer('{"peer": "x", "unavailable": "no module named torch"}', [], {
    python: "/bin/echo",
  });
  assertEquals(unavailable, { ok: false, reason: "no module named torch" });
  const failing = await runPeer("-c", ["exit 3"], { python: "/bin/sh" });
  assert(!failing.ok && failing.reason.includes("exited with 3"), JSON.stringify(failing));
  const row = peerRow("r", 100, 2, unavailable, "pytorch cpu", "n");
  assert(Number.isNaN(row.ratio) && row.note!.includes("no module named torch"));
});

Deno.test("bench peers: a served peer runs one iteration per request, alternating with ours", async () => {
  // A stand-in peer speaking serve.py's protocol: ready, then {"ms": 5} per "run" line.
  const script = `echo '{"peer": "fake", "ready": true, "items": 4, "threads": 2}'
while read cmd; do
  if [ "$cmd" = run ]; then echo '{"ms": 5}'; echo peer >> "$LOG"; fi
  if [ "$cmd" = quit ]; then echo '{"peer": "fake", "done": true, "max_rss_mib": 12}'; exit 0; fi
done`;
  const log = Deno.makeTempFileSync();
  const made: string[] = [log];
  const file = (text: string) => {
    const f = Deno.makeTempFileSync({ suffix: ".sh" });
    made.push(f);
    Deno.writeTextFileSync(f, text);
    return f;
  };
  const peer = await PeerSession.open(file(script), [], { python: "/bin/sh", env: { LOG: log } });
  assert(peer instanceof PeerSession, JSON.stringify(peer));
  assertEquals([peer.items, peer.info.threads], [4, 2]);
  const rounds = await interleave(3, () => {
    Deno.writeTextFileSync(log, "ours\n", { append: true });
    return Promise.resolve(10);
  }, peer);
  await peer.close();
  assertEquals(peer.info.max_rss_mib, 12);
  assertEquals(Deno.readTextFileSync(log).trim().split("\n"), [
    "ours",
    "peer",
    "ours",
    "peer",
    "ours",
    "peer",
  ]);
  assertEquals([rounds.ours, rounds.theirs], [[10, 10, 10], [5, 5, 5]]);
  assertEquals(rounds.load?.length, 3); // other processes' cores in each round (bench/load.ts)
  // Both sides' rates, spread and per-round ratios travel with the row.
  const row = comparisonRow("r", { ours: 8, peer: 4 }, rounds, "fake", { ours: 2, peer: 2 }, "n");
  assertEquals([row.rate, row.peak, row.ratio], [800, 800, 1]); // ratio: the rounds' median
  // A burst of load in one round moves the ratio of the medians, not the rounds' median ratio.
  const burst = comparisonRow(
    "b",
    { ours: 1, peer: 1 },
    { ours: [10, 20, 30], theirs: [10, 10, 60] },
    "fake",
    { ours: 2, peer: 2 },
    "n",
  );
  assertEquals([burst.rate! / burst.peak, burst.ratio, burst.compare!.ratioPerRound], [0.5, 1, [
    0.5,
    1,
    2,
  ]]);
  assertEquals(row.compare!.ratioPerRound, [1, 1, 1]);
  assertEquals(row.compare!.peer.msMedian, 5);
  assert(row.note!.includes("3 rounds A B interleaved, 2 vs 2 threads"), row.note);
  // A peer that dies mid-way leaves its side short and says why; one that never starts, too.
  const dying = await PeerSession.open(
    file(`echo '{"peer": "d", "ready": true, "items": 1}'; read cmd; echo oops >&2; exit 4`),
    [],
    { python: "/bin/sh" },
  );
  const r2 = await interleave(2, () => Promise.resolve(1), dying);
  assertEquals(r2.theirs, []);
  assert(r2.peerError?.includes("exited mid-run: oops"), r2.peerError);
  if (dying instanceof PeerSession) await dying.close();
  const never = await PeerSession.open(file("exit 3"), [], { python: "/bin/sh" });
  assert(!(never instanceof PeerSession) && never.reason.includes("exited before it was ready"));
  for (const f of made) Deno.removeSync(f);
});

Deno.test("bench --repeat: each row's ratio across runs and its largest consecutive move", () => {
  const side = { rate: 1, msMedian: 1, msMin: 1, msMax: 1 };
  const compare: BenchRow["compare"] = {
    rounds: 3,
    threads: { ours: 2, peer: 2 },
    ours: side,
    peer: { ...side, name: "x" },
    ratioPerRound: [1, 1, 1],
  };
  const row = (name: string, ratio: number, peer = true): BenchRow => ({
    name,
    ms: 1,
    peak: 1,
    peakName: "x",
    ratio,
    ...(peer ? { compare } : {}),
  });
  // Rows against a peer count; a kernel row (no peer) and a skipped one do not.
  const runs = [
    [row("a", 1.0), row("b", 0.5), row("skip", NaN), row("kernel", 1, false)],
    [row("a", 1.1), row("b", 0.7), row("kernel", 2, false)],
    [row("a", 1.0), row("b", 0.7)],
  ];
  const st = stability(runs);
  assertEquals(st.map((s) => s.name), ["a", "b"]);
  assert(Math.abs(st[0].maxChange - 0.1) < 1e-12 && st[0].holds);
  assert(Math.abs(st[1].maxChange - 0.4) < 1e-12 && !st[1].holds);
  assert(formatStability(st).includes("NO"));
});
