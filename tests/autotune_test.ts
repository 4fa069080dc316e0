/**
 * kernels/autotune.ts: choice, persistence, reload, corrupt and unwritable caches; tuneMatmul;
 * the adapter classes, their shipped defaults (kernels/defaults.ts) and the matmul cost model.
 */
import { ADAPTER_CLASSES, adapterClass } from "../kernels/adapters.ts";
import {
  AutotuneCache,
  Autotuner,
  type CandidateCodec,
  defaultCachePath,
  TuneBudget,
} from "../kernels/autotune.ts";
import { KERNEL_DEFAULTS } from "../kernels/defaults.ts";
import {
  classDefaults,
  fitVariant,
  matmul,
  matmulRef,
  type MatmulVariant,
  parseVariant,
  predictFlops,
  pruneCandidates,
  selectMatmulVariant,
  shapeClass,
  tuneMatmul,
  variantId,
} from "../kernels/matmul/mod.ts";
import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { gpuTest, Rng } from "./helpers.ts";

const codec: CandidateCodec<string> = {
  id: (c) => c,
  parse: (s) => (["fast", "slow", "broken", "faster"].includes(s) ? s : null),
};

/** A fake measurement: fixed times per candidate, counting calls. */
function fakeTimes(times: Record<string, number | null>) {
  const calls: string[] = [];
  return {
    calls,
    measure: (c: string) => {
      calls.push(c);
      if (times[c] === null) throw new Error(`${c} failed to compile`);
      return Promise.resolve(times[c]);
    },
  };
}

/** A fresh temp dir, removed when the test process ends. */
function tempDir(): string {
  const dir = Deno.makeTempDirSync({ prefix: "bloom-autotune-" });
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* already removed by the test */ }
  });
  return dir;
}

function tempPath(): string {
  return `${tempDir()}/sub/autotune.json`;
}

Deno.test("autotune: records the fastest candidate with every timing, failures as null", async () => {
  const cache = new AutotuneCache({ path: null });
  const t = new Autotuner("op", codec, cache);
  const f = fakeTimes({ slow: 5, fast: 2, broken: null });
  const r = await t.tuneWith("adapter A", "k1", ["slow", "fast", "broken"], f.measure, {
    iters: 3,
  });
  assertEquals(r.choice, "fast");
  assertEquals(r.cached, false);
  assertEquals(r.record.timings, { slow: 5, fast: 2, broken: null });
  // Interleaved rounds; a failed candidate is not retried.
  assertEquals(f.calls, ["slow", "fast", "broken", "slow", "fast", "slow", "fast"]);
  assertEquals(t.lookup("adapter A", "k1"), "fast");
  assertEquals(t.lookup("adapter B", "k1"), undefined, "choices are per adapter");
  // Cached: a second tune measures nothing unless forced.
  const again = await t.tuneWith("adapter A", "k1", ["slow", "fast"], f.measure);
  assert(again.cached && f.calls.length === 7, "cached result reused");
  // A candidate the record never timed (added since) makes the class measure again.
  const h = fakeTimes({ slow: 5, fast: 2, faster: 1 });
  const grown = await t.tuneWith("adapter A", "k1", ["slow", "fast", "faster"], h.measure);
  assert(!grown.cached && grown.choice === "faster", "new candidate measured");
  assertEquals(t.lookup("adapter A", "k1"), "faster");
  const forced = await t.tuneWith("adapter A", "k1", ["slow"], f.measure, { force: true });
  assertEquals(forced.choice, "slow");
  // A candidate 4× slower than the best after the first round is not measured again.
  const g = fakeTimes({ slow: 10, fast: 2 });
  await t.tuneWith("adapter A", "k3", ["slow", "fast"], g.measure, { iters: 3 });
  assertEquals(g.calls, ["slow", "fast", "fast", "fast"]);
  assertEquals(t.cache.get("adapter A", "op", "k3")?.timings, { slow: 10, fast: 2 });
  await assertRejects(
    () => t.tuneWith("adapter A", "k2", ["broken"], f.measure),
    Error,
    "every candidate failed",
  );
});

Deno.test("autotune: persisted to JSON, reloaded by a new cache, merged across writers", async () => {
  const path = tempPath();
  const t1 = new Autotuner("op", codec, new AutotuneCache({ path }));
  await t1.tuneWith("adapter A", "k1", ["slow", "fast"], fakeTimes({ slow: 3, fast: 1 }).measure);
  const doc = JSON.parse(Deno.readTextFileSync(path));
  assertEquals(doc.version, 1);
  assertEquals(doc.adapters["adapter A"].op.k1.choice, "fast");
  // A second process-like writer with its own (stale) memory adds another key...
  const t2 = new Autotuner("op", codec, new AutotuneCache({ path }));
  await t2.tuneWith("adapter A", "k2", ["slow", "fast"], fakeTimes({ slow: 1, fast: 3 }).measure);
  // ...without erasing the first one's result.
  const t3 = new Autotuner("op", codec, new AutotuneCache({ path }));
  assertEquals(t3.lookup("adapter A", "k1"), "fast");
  assertEquals(t3.lookup("adapter A", "k2"), "slow");
  // An id this version does not know is ignored, not trusted.
  t3.record("adapter A", "k3", { choice: "gone", ms: 1, timings: {}, at: "" });
  assertEquals(t3.lookup("adapter A", "k3"), undefined);
  assert(
    !Deno.readDirSync(path.slice(0, path.lastIndexOf("/"))).some((e) => e.name.endsWith(".tmp")),
  );
});

Deno.test("autotune: a corrupt cache file is ignored with a warning and replaced on save", async () => {
  const path = tempPath();
  Deno.mkdirSync(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  for (
    const bad of [
      "{not json",
      '{"version": 99, "adapters": {}}',
      '{"version":1,"adapters":{"a":{"op":{"k":{"choice":3}}}}}',
    ]
  ) {
    Deno.writeTextFileSync(path, bad);
    const warnings: string[] = [];
    const t = new Autotuner(
      "op",
      codec,
      new AutotuneCache({ path, warn: (m) => warnings.push(m) }),
    );
    assertEquals(t.lookup("a", "k"), undefined);
    assertEquals(warnings.length, 1, `one warning for ${bad}`);
    assert(warnings[0].includes("corrupt") && warnings[0].includes(path), warnings[0]);
  }
  const t = new Autotuner("op", codec, new AutotuneCache({ path, warn: () => {} }));
  await t.tuneWith("a", "k", ["fast"], fakeTimes({ fast: 1 }).measure);
  assertEquals(JSON.parse(Deno.readTextFileSync(path)).adapters.a.op.k.choice, "fast");
});

Deno.test("autotune: an unwritable location keeps results in memory, without throwing", async () => {
  const dir = tempDir();
  const blocker = `${dir}/file`;
  Deno.writeTextFileSync(blocker, "a file, not a directory");
  const warnings: string[] = [];
  const cache = new AutotuneCache({
    path: `${blocker}/autotune.json`,
    warn: (m) => warnings.push(m),
  });
  const t = new Autotuner("op", codec, cache);
  await t.tuneWith("a", "k1", ["slow", "fast"], fakeTimes({ slow: 2, fast: 1 }).measure);
  await t.tuneWith("a", "k2", ["slow", "fast"], fakeTimes({ slow: 1, fast: 2 }).measure);
  assertEquals([t.lookup("a", "k1"), t.lookup("a", "k2")], ["fast", "slow"]);
  assertEquals(warnings.length, 1, "warned once, then memory only");
  assert(/cannot (read|write)/.test(warnings[0]) && warnings[0].includes("memory"), warnings[0]);
});

Deno.test("autotune: default location honours BLOOM_CACHE_DIR, else ~/.cache/bloom", () => {
  const prev = Deno.env.get("BLOOM_CACHE_DIR");
  try {
    Deno.env.set("BLOOM_CACHE_DIR", "/tmp/somewhere/");
    assertEquals(defaultCachePath(), "/tmp/somewhere/autotune.json");
    Deno.env.delete("BLOOM_CACHE_DIR");
    assertEquals(defaultCachePath(), `${Deno.env.get("HOME")}/.cache/bloom/autotune.json`);
  } finally {
    if (prev !== undefined) Deno.env.set("BLOOM_CACHE_DIR", prev);
  }
});

gpuTest(
  "tuneMatmul: measures on this adapter, records per class, and matmul follows",
  async (gpu) => {
    const path = tempPath();
    const matCodec = { id: variantId, parse: parseVariant };
    const tuner = new Autotuner<MatmulVariant>("matmul", matCodec, new AutotuneCache({ path }));
    // Two candidates the cost model cannot tell apart on this shape (same block, ~20 % padding
    // difference), so both are measured.
    const candidates: MatmulVariant[] = [
      { kind: "reg", tm: 8, tn: 8, wgm: 2, wgn: 2 },
      { kind: "reg", tm: 8, tn: 8, wgm: 1, wgn: 2 },
    ];
    const shape = { M: 40, N: 24, K: 32, transB: true };
    // Nothing tuned: the shipped default of this adapter's class, its block shrunk to the shape.
    const shipped = classDefaults(gpu).matmul.general;
    const untuned = selectMatmulVariant(gpu, shape, { tuner });
    assertEquals(variantId(untuned), variantId(fitVariant(shipped, 40, 24)));
    const [r] = await tuneMatmul(gpu, [shape, shape], { tuner, candidates, iters: 2 });
    assertEquals(r.key, shapeClass(40, 24, 32, 1, false, true));
    assertEquals(Object.keys(r.timings).sort(), candidates.map(variantId).sort());
    assert(Object.values(r.timings).every((ms) => ms !== null && ms > 0), "both measured");
    const chosen = selectMatmulVariant(gpu, shape, { tuner });
    assertEquals(variantId(chosen), r.choice);
    // Other shapes: the shipped default where it was measured on this class, else the
    // adapter-wide default the tuned classes agree on.
    const other = selectMatmulVariant(gpu, { M: 300, N: 300, K: 300 }, { tuner });
    assertEquals(
      variantId(other),
      classDefaults(gpu).measured ? variantId(fitVariant(shipped, 300, 300)) : r.choice,
    );
    // A record made from another candidate set (an older bloom) does not override defaults.
    const stale = new Autotuner<MatmulVariant>(
      "matmul",
      matCodec,
      new AutotuneCache({ path: null }),
    );
    stale.record(gpu.adapter.name, r.key, {
      choice: variantId(candidates[1]),
      ms: r.ms,
      timings: r.timings,
      at: new Date().toISOString(),
      tag: "an older candidate set",
    });
    assertEquals(variantId(selectMatmulVariant(gpu, shape, { tuner: stale })), variantId(untuned));
    // Persisted under this adapter's name and reloaded by a fresh cache.
    const fresh = new Autotuner<MatmulVariant>("matmul", matCodec, new AutotuneCache({ path }));
    assertEquals(variantId(selectMatmulVariant(gpu, shape, { tuner: fresh })), r.choice);
    const doc = JSON.parse(Deno.readTextFileSync(path));
    assert(doc.adapters[gpu.adapter.name].matmul[r.key], "stored under the adapter name");
    // Second call: cached, nothing measured.
    const [again] = await tuneMatmul(gpu, [shape], { tuner, candidates });
    assert(again.cached, "second tuning comes from the cache");
    // And the tuned choice computes the right thing.
    const rng = new Rng(9);
    const a = rng.floats(40 * 32);
    const b = rng.floats(24 * 32);
    const ga = gpu.tensor(a, [40, 32]);
    const gb = gpu.tensor(b, [24, 32]);
    const y = matmul(gpu, ga, gb, { transB: true }, { tuner });
    assertClose(await gpu.readF32(y), matmulRef(a, [40, 32], b, [24, 32], { transB: true }), {
      rtol: 1e-5,
      atol: 2e-6 * Math.sqrt(32),
    });
    gpu.release(ga, gb, y);
  },
);

Deno.test("adapterClass: software, SwiftShader, the four GPU vendors by id or name, else other", () => {
  const a = (name: string, vendor = "", isFallback = false) => ({ name, vendor, isFallback });
  assertEquals(adapterClass(a("llvmpipe (LLVM 15.0.6, 256 bits)", "65541")), "software");
  assertEquals(adapterClass(a("anything", "", true)), "software");
  assertEquals(adapterClass(a("SwiftShader Device (Subzero)")), "swiftshader");
  assertEquals(
    adapterClass({
      name: "google",
      vendor: "google",
      architecture: "swiftshader",
      isFallback: true,
    }),
    "swiftshader",
  );
  assertEquals(adapterClass(a("", "4318")), "nvidia"); // 0x10de in decimal
  assertEquals(adapterClass(a("NVIDIA H200", "nvidia")), "nvidia");
  assertEquals(adapterClass(a("", "0x1002")), "amd");
  assertEquals(adapterClass(a("AMD Radeon RX 7900 XTX")), "amd");
  assertEquals(adapterClass(a("Intel(R) Arc(tm) A770 Graphics")), "intel");
  assertEquals(adapterClass(a("Apple M2 Pro", "apple")), "apple");
  assertEquals(adapterClass(a("Mali-G78", "arm")), "other");
});

Deno.test("defaults: every class ships valid kernels and says how they were chosen", () => {
  for (const cls of ADAPTER_CLASSES) {
    const d = KERNEL_DEFAULTS[cls];
    assert(d.basis.length > 40, `${cls}: the basis is written out`);
    assert(d.measured === d.basis.startsWith("measured"), `${cls}: basis says measured or not`);
    for (const v of [d.matmul.general, d.matmul.weightGrad, ...d.matmul.candidates]) {
      assertEquals(parseVariant(variantId(v)), v, `${cls}: ${variantId(v)} round-trips`);
    }
    assert(d.matmul.candidates.length >= 2, `${cls}: tuning has a choice`);
    assert(d.rowCap >= 1 && d.peakGflops > 0, `${cls}: row cap and peak`);
  }
  // Only the software class could be measured where bloom is developed.
  assert(KERNEL_DEFAULTS.software.measured);
  // SwiftShader's GPU process loses the device compiling the rows-16 attention kernels.
  const ss = KERNEL_DEFAULTS.swiftshader.attention;
  for (const v of [ss.plan.forward, ss.plan.dq, ss.plan.dkv, ...ss.candidates]) {
    assert(v.rows < 16, `swiftshader: attention rows ${v.rows}`);
  }
  for (const cls of ["nvidia", "amd", "intel", "apple"] as const) {
    assert(!KERNEL_DEFAULTS[cls].measured, `${cls} is marked unmeasured`);
    assertEquals(KERNEL_DEFAULTS[cls].matmul.general.kind, "tiled", `${cls}: a tiled kernel`);
  }
});

Deno.test("cost model: prunes what cannot win, keeps what might, drops what cannot run", () => {
  const sw = KERNEL_DEFAULTS.software.matmul;
  const ids = (vs: MatmulVariant[]) => vs.map(variantId);
  // A ViT-S linear: the texture kernels are kept; the tiled and 8×8 kernels (10× and 2.5×
  // slower on a CPU adapter) are not measured.
  const big = pruneCandidates(
    sw.candidates,
    { M: 2048, N: 1152, K: 384, transB: true },
    sw.cost,
    16384,
  );
  assert(ids(big.kept).includes("tex-32x24-8x1"), "the shipped default is kept");
  for (const id of ["tiled-64x64x16-4x4", "reg-8x8-8x8"]) {
    assert(ids(big.pruned).includes(id), `${id} is pruned`);
  }
  assertEquals(big.predicted.length, big.kept.length);
  // The weight gradient (A transposed): no texture kernel can run it; split-K competes.
  const wgrad = pruneCandidates(
    sw.candidates,
    { M: 384, N: 1152, K: 2048, transA: true },
    sw.cost,
    16384,
  );
  assert(ids(wgrad.kept).every((id) => !id.startsWith("tex")), "tex cannot run aᵀ");
  assert(ids(wgrad.kept).includes("reg-16x16-8x2-k512"), "split-K kept on a long K");
  // A short K: split-K would run the plain kernel, a duplicate.
  const short = pruneCandidates(
    sw.candidates,
    { M: 384, N: 1152, K: 256, transA: true },
    sw.cost,
    16384,
  );
  assert(!ids(short.kept).includes("reg-16x16-8x2-k512"), "no split-K on K ≤ 512");
  // A tiny matmul: padding a 256-row block dominates, so big blocks lose.
  assert(
    predictFlops(sw.general, { M: 8, N: 64, K: 64, transB: true }, sw.cost, 16384) >
      predictFlops(
        { kind: "reg", tm: 8, tn: 8, wgm: 8, wgn: 8 },
        { M: 8, N: 64, K: 64, transB: true },
        sw.cost,
        16384,
      ),
    "a 32×24 texture block pads an 8-row matmul",
  );
  // On a GPU class nothing is known to be slow: the tiled kernels all stay in.
  const gpuModel = KERNEL_DEFAULTS.nvidia.matmul;
  const g = pruneCandidates(
    gpuModel.candidates,
    { M: 4096, N: 4096, K: 1024 },
    gpuModel.cost,
    16384,
  );
  assert(ids(g.kept).filter((id) => id.startsWith("tiled")).length === 3, "tiled kept on GPUs");
});

gpuTest(
  "tuneMatmul: a spent budget measures nothing and says so; then it measures",
  async (gpu) => {
    const path = tempPath();
    const matCodec = { id: variantId, parse: parseVariant };
    const tuner = new Autotuner<MatmulVariant>("matmul", matCodec, new AutotuneCache({ path }));
    const candidates: MatmulVariant[] = [
      { kind: "reg", tm: 8, tn: 8, wgm: 2, wgn: 2 },
      { kind: "reg", tm: 8, tn: 8, wgm: 1, wgn: 2 },
    ];
    const shapes = [{ M: 40, N: 24, K: 32, transB: true }, { M: 40, N: 24, K: 64, transB: true }];
    const lines: string[] = [];
    const spent = await tuneMatmul(gpu, shapes, {
      tuner,
      candidates,
      budget: new TuneBudget(0),
      log: (l) => lines.push(l),
    });
    assertEquals(spent.map((r) => r.skipped), ["budget", "budget"]);
    assertEquals(Object.keys(tuner.cache.entries(gpu.adapter.name, "matmul")).length, 0);
    assert(lines.every((l) => /left for a later run \(ETA [\d.]+ s/.test(l)), lines.join("\n"));
    lines.length = 0;
    const done = await tuneMatmul(gpu, shapes, {
      tuner,
      candidates,
      iters: 1,
      budget: new TuneBudget(60_000),
      log: (l) => lines.push(l),
    });
    assert(done.every((r) => r.choice !== null && !r.cached), "both classes measured");
    assertEquals(lines.length, 2);
    assert(
      lines.every((l) => /\[\d\/2\] matmul .*: 2 candidates .*ETA [\d.]+ s/.test(l)),
      lines[0],
    );
  },
);
