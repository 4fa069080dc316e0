/** kernels/autotune.ts: choice, persistence, reload, corrupt and unwritable caches; tuneMatmul. */
import {
  AutotuneCache,
  Autotuner,
  type CandidateCodec,
  defaultCachePath,
} from "../kernels/autotune.ts";
import {
  FALLBACK_VARIANT,
  matmul,
  matmulRef,
  type MatmulVariant,
  parseVariant,
  selectMatmulVariant,
  shapeClass,
  tuneMatmul,
  variantId,
} from "../kernels/matmul.ts";
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

function tempPath(): string {
  return `${Deno.makeTempDirSync({ prefix: "bloom-autotune-" })}/sub/autotune.json`;
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
  const dir = Deno.makeTempDirSync({ prefix: "bloom-autotune-" });
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
    const candidates: MatmulVariant[] = [
      { kind: "reg", tm: 4, tn: 4, wgm: 4, wgn: 4 },
      { kind: "tiled", bm: 16, bn: 16, bk: 8, tm: 4, tn: 4 },
    ];
    const shape = { M: 40, N: 24, K: 32, transB: true };
    // Nothing tuned: the built-in fallback (its register block shrunk to the shape).
    const untuned = selectMatmulVariant(gpu, shape, { tuner });
    assertEquals(untuned.kind, FALLBACK_VARIANT.kind);
    const [r] = await tuneMatmul(gpu, [shape, shape], { tuner, candidates, iters: 2 });
    assertEquals(r.key, shapeClass(40, 24, 32, 1, false, true));
    assertEquals(Object.keys(r.timings).sort(), candidates.map(variantId).sort());
    assert(Object.values(r.timings).every((ms) => ms !== null && ms > 0), "both measured");
    const chosen = selectMatmulVariant(gpu, shape, { tuner });
    assertEquals(variantId(chosen), r.choice);
    // The adapter-wide default follows the tuned classes; other shapes fall back to it.
    const other = selectMatmulVariant(gpu, { M: 300, N: 300, K: 300 }, { tuner });
    assertEquals(variantId(other), r.choice);
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
