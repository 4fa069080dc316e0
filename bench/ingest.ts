/**
 * Ingest throughput (images/s: read → decode → Lanczos resize to 224 → PNG
 * → tar shard), next to Pillow doing the same (`scripts/bench/pillow_ingest.py`)
 * in alternating rounds at the same thread count: one worker against one Pillow
 * process, and all cores against as many Pillow processes. Inputs: generated
 * 360×363 JPEGs (Acevedo's size: a reduction) and, when `BLOOM_BENCH_CELLS` names a folder
 * of real cell crops (the BCCD crops: about 60% of them are enlarged to 224), those too.
 * Target: ≥ 1.5× Pillow at one thread each.
 */
import sharp from "npm:sharp@0.34.5";
import { join } from "node:path";
import type { BenchRow, BenchSuite } from "./harness.ts";
import { QUIET_WAIT_MS } from "./load.ts";
import { comparisonRow, interleave, PeerSession } from "./peers.ts";
import { runIngest } from "../pipelines/ingest/run.ts";

const PILLOW = new URL("../scripts/bench/pillow_ingest.py", import.meta.url).pathname;

/** Writes `n` cell-like 360×363 JPEGs (smooth blobs plus sensor noise) in 4 class folders. */
async function makeAcevedoLike(root: string, n: number): Promise<void> {
  const W = 360;
  const H = 363;
  let s = 12345;
  const rand = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (let k = 0; k < n; k++) {
    const cls = `class${k % 4}`;
    await Deno.mkdir(join(root, cls), { recursive: true });
    const cx = W * (0.3 + 0.4 * rand());
    const cy = H * (0.3 + 0.4 * rand());
    const r = 60 + 60 * rand();
    const px = new Uint8Array(W * H * 3);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const d = Math.hypot(x - cx, y - cy) / r;
        const cell = d < 1 ? 1 - d * d : 0;
        const i = (y * W + x) * 3;
        const noise = (rand() - 0.5) * 12;
        px[i] = 225 - 120 * cell + noise;
        px[i + 1] = 205 - 150 * cell + noise;
        px[i + 2] = 215 - 60 * cell + noise;
      }
    }
    await sharp(px, { raw: { width: W, height: H, channels: 3 } })
      .jpeg({ quality: 95 })
      .toFile(join(root, cls, `img${String(k).padStart(5, "0")}.jpg`));
  }
}

/**
 * Ours against Pillow on one input at one thread count, in alternating rounds: each round is
 * a full ingest by us (`runIngest` with `workers` workers, one libvips thread each) and then
 * by Pillow (`scripts/bench/pillow_ingest.py` with as many processes), its process kept alive
 * across rounds so start-up never counts.
 */
async function measure(
  name: string,
  input: string,
  rounds: number,
  workers: number,
  quick: boolean,
): Promise<BenchRow> {
  const tmp = await Deno.makeTempDir({ prefix: "bloom-bench-ingest-" });
  const peer = await PeerSession.open(PILLOW, [
    ...["--input", input, "--out", join(tmp, "pillow.tar"), "--size", "224"],
    ...["--procs", String(workers), "--warmup", "1"],
  ]);
  try {
    let images = 0;
    let ourBytes = 0;
    let round = 0;
    const ours = async () => {
      const out = join(tmp, `run${round++}`);
      const t0 = performance.now();
      const s = await runIngest({ input, layout: "imagefolder", out, workers }, {
        progress: false,
      });
      const ms = performance.now() - t0;
      images = s.samples;
      ourBytes = s.manifest.shards.reduce((n, x) => n + x.bytes, 0);
      await Deno.remove(out, { recursive: true });
      return ms;
    };
    await ours(); // loads libvips and warms the file cache, as the peer's warm-up does
    const r = await interleave(rounds, ours, peer, {
      maxRounds: quick ? rounds : rounds + 4,
      quietWaitMs: quick ? 0 : QUIET_WAIT_MS,
    });
    const pillowBytes = await Deno.stat(join(tmp, "pillow.tar")).then((s) => s.size, () => 0);
    const kib = (b: number) => (b / images / 1024).toFixed(1);
    return comparisonRow(
      `ingest ${name} → png 224, ${workers} thread${workers > 1 ? "s" : ""}`,
      { ours: images, peer: peer instanceof PeerSession ? peer.items : images },
      r,
      `pillow ${workers} process${workers > 1 ? "es" : ""}`,
      { ours: workers, peer: workers },
      `${images} images; tar KiB/image ours ${kib(ourBytes)}` +
        (pillowBytes ? ` vs Pillow ${kib(pillowBytes)}` : "") +
        (workers === 1 ? "; target ratio ≥ 1.5" : ""),
    );
  } finally {
    if (peer instanceof PeerSession) await peer.close();
    await Deno.remove(tmp, { recursive: true });
  }
}

/** The ingest benchmark suite (wired into bench/suites.ts by the lead). */
export const ingestSuite: BenchSuite = {
  name: "ingest",
  async run(ctx) {
    const rows: BenchRow[] = [];
    // Rounds are short (~0.3 s quick): medians over many keep a shared machine's bursts out.
    const rounds = ctx.quick ? 7 : 9;
    const threads = navigator.hardwareConcurrency || 1;
    const gen = await Deno.makeTempDir({ prefix: "bloom-bench-acevedo-" });
    try {
      const n = ctx.quick ? 48 : 240;
      await makeAcevedoLike(gen, n);
      const gens = `${n} generated 360x363 jpg`;
      rows.push(await measure(gens, gen, rounds, 1, ctx.quick));
      if (threads > 1) rows.push(await measure(gens, gen, rounds, threads, ctx.quick));
    } finally {
      await Deno.remove(gen, { recursive: true });
    }
    // Real crops, when a folder of them is given (a folder per class of JPEGs).
    const crops = Deno.env.get("BLOOM_BENCH_CELLS");
    if (crops) {
      await Deno.stat(crops);
      rows.push(await measure(`${crops.split("/").at(-1)} cells jpg`, crops, rounds, 1, ctx.quick));
    } else console.warn("ingest bench: BLOOM_BENCH_CELLS=DIR adds a row of real cell crops");
    return rows;
  },
};
