/**
 * Ingest throughput (images/s: read → decode → Lanczos resize to 224 → PNG
 * → tar shard), next to Pillow doing the same in one process
 * (`scripts/bench/pillow_ingest.py`) in the same run. Two inputs: generated
 * 360×363 JPEGs (Acevedo's size: a reduction) and the BCCD crops when
 * ../shared/data is present (about 60% of them are enlarged to 224).
 * Target: ≥ 1.5× Pillow.
 */
import sharp from "sharp";
import { join } from "node:path";
import { type BenchRow, type BenchSuite, median } from "./harness.ts";
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

/** Pillow's images/s on `input`, or null where python3 with PIL is missing. */
async function pillowRate(input: string, out: string): Promise<number | null> {
  try {
    const r = await new Deno.Command("/usr/bin/python3", {
      args: [PILLOW, "--input", input, "--out", out, "--size", "224"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!r.success) {
      console.warn(`pillow_ingest.py failed: ${new TextDecoder().decode(r.stderr).trim()}`);
      return null;
    }
    return JSON.parse(new TextDecoder().decode(r.stdout)).rate;
  } catch {
    return null;
  }
}

/** Median images/s of ours and Pillow's on one input, alternating runs (the machine drifts). */
async function measure(name: string, input: string, iters: number): Promise<BenchRow> {
  const tmp = await Deno.makeTempDir({ prefix: "bloom-bench-ingest-" });
  try {
    const workers = navigator.hardwareConcurrency ?? 1;
    const ours: number[] = [];
    const theirs: number[] = [];
    let images = 0;
    let ourBytes = 0;
    let pillowBytes = 0;
    // One untimed run loads libvips and warms the file cache for both.
    await runIngest({ input, layout: "imagefolder", out: join(tmp, "warm"), workers }, {
      progress: false,
    });
    for (let i = 0; i < iters; i++) {
      const t0 = performance.now();
      const s = await runIngest(
        { input, layout: "imagefolder", out: join(tmp, `run${i}`), workers },
        { progress: false },
      );
      ours.push(s.samples / ((performance.now() - t0) / 1000));
      images = s.samples;
      ourBytes = s.manifest.shards.reduce((n, x) => n + x.bytes, 0);
      await Deno.remove(join(tmp, `run${i}`), { recursive: true });
      const p = await pillowRate(input, join(tmp, "pillow.tar"));
      if (p !== null) {
        theirs.push(p);
        pillowBytes = (await Deno.stat(join(tmp, "pillow.tar"))).size;
      }
    }
    const rate = median(ours);
    const peak = theirs.length ? median(theirs) : NaN;
    return {
      name: `ingest ${name} → png 224`,
      ms: 1000 / rate,
      rate,
      peak,
      peakName: "pillow 1 process",
      ratio: rate / peak,
      note: `${images} images, ${workers} workers, median of ${iters}; ` +
        `tar KiB/image ours ${(ourBytes / images / 1024).toFixed(1)}` +
        (theirs.length
          ? ` vs Pillow ${(pillowBytes / images / 1024).toFixed(1)}`
          : "; Pillow unavailable") +
        "; target ratio ≥ 1.5",
    };
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

/** The ingest benchmark suite (wired into bench/suites.ts by the lead). */
export const ingestSuite: BenchSuite = {
  name: "ingest",
  async run(ctx) {
    const rows: BenchRow[] = [];
    const iters = ctx.quick ? 1 : 3;
    const gen = await Deno.makeTempDir({ prefix: "bloom-bench-acevedo-" });
    try {
      const n = ctx.quick ? 48 : 240;
      await makeAcevedoLike(gen, n);
      rows.push(await measure(`${n} generated 360x363 jpg`, gen, iters));
    } finally {
      await Deno.remove(gen, { recursive: true });
    }
    const crops = new URL("../../shared/data/bccd-cropped/BCCD_cropped", import.meta.url).pathname;
    try {
      await Deno.stat(crops);
      rows.push(await measure("bccd-cropped 351 jpg", crops, iters));
    } catch {
      console.warn("ingest bench: ../shared/data/bccd-cropped absent, BCCD row skipped");
    }
    return rows;
  },
};
