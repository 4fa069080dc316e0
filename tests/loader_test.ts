/**
 * `pipelines/loader.ts`: order, seeded shuffling, batching, folder sources,
 * bad samples, bounded prefetch, sample ranges, the resize filter, and the
 * GPU upload.
 */
import sharp from "npm:sharp@0.34.5";
import { join } from "node:path";
import { assert, assertEquals, assertNotEquals, assertRejects } from "./assert.ts";
import { collect, gpuTest, Rng } from "./helpers.ts";
import { decodeCell } from "../pipelines/dataset/images.ts";
import { runIngest } from "../pipelines/ingest/run.ts";
import { readManifest } from "../pipelines/dataset/manifest.ts";
import { readShardSamples } from "../pipelines/dataset/webdataset.ts";
import { tarEnd, tarEntry } from "../data/tar.ts";
import { type Batch, openLoader, uploadBatch } from "../pipelines/loader.ts";

const CLASSES = ["bas", "eos", "lym"];

/** A folder-per-class tree of small PNGs of varied sizes; returns its files. */
async function makeTree(root: string, perClass = 5): Promise<string[]> {
  const files: string[] = [];
  let seed = 0;
  for (const cls of CLASSES) {
    await Deno.mkdir(join(root, cls), { recursive: true });
    for (let i = 0; i < perClass; i++) {
      const r = new Rng(++seed);
      const w = 12 + r.int(12);
      const h = 12 + r.int(12);
      const px = Uint8Array.from({ length: w * h * 3 }, () => r.int(256));
      const p = join(root, cls, `img${i}.png`);
      await Deno.writeFile(
        p,
        await sharp(px, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer(),
      );
      files.push(p);
    }
  }
  return files;
}

/** A temp dir with the tree and its ingest (size 16, shards of 4, 60/40 split). */
async function withDataset(
  fn: (d: { dir: string; src: string; out: string; files: string[] }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "bloom-loader-" });
  try {
    const src = join(dir, "src");
    const files = await makeTree(src);
    const out = join(dir, "shards");
    await runIngest({
      input: src,
      layout: "imagefolder",
      out,
      size: 16,
      shardSize: 4,
      split: 0.6,
      minSize: 4,
    }, { progress: false });
    await fn({ dir, src, out, files });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const keysOf = (bs: Batch[]) => bs.flatMap((b) => b.keys);

Deno.test("shards in order: manifest order, labels from .cls, pixels = the stored PNGs", async () => {
  await withDataset(async ({ out }) => {
    const m = await readManifest(out);
    const expected: { key: string; cls: number; png: Uint8Array }[] = [];
    for (const s of m.shards) {
      for await (const x of readShardSamples(join(out, s.name))) {
        expected.push({
          key: x.key,
          cls: Number(new TextDecoder().decode(x.files.get("cls"))),
          png: x.files.get("png")!,
        });
      }
    }
    const loader = await openLoader(out, { batchSize: 4, workers: 2 });
    assertEquals([loader.classes, loader.size, loader.length], [CLASSES, 16, 15]);
    const batches = await collect(loader.batches());
    assertEquals(batches.map((b) => b.count), [4, 4, 4, 3]); // the last one short
    assertEquals(keysOf(batches), expected.map((e) => e.key));
    assertEquals(batches.flatMap((b) => Array.from(b.labels)), expected.map((e) => e.cls));
    const last = batches[3];
    assertEquals([last.pixels.length, last.labels.length], [3 * 16 * 16 * 3, 3]);
    let i = 0;
    for (const b of batches) {
      for (let j = 0; j < b.count; j++, i++) {
        const want = await sharp(expected[i].png).raw().toBuffer();
        const got = b.pixels.subarray(j * 768, (j + 1) * 768);
        assertEquals(Array.from(got), Array.from(want), expected[i].key);
      }
    }
    assertEquals(batches[0].meta[0].key, expected[0].key); // the sample's json
    // Training drops the short batch.
    const dropped = await collect(
      (await openLoader(out, { batchSize: 4, dropLast: true })).batches(),
    );
    assertEquals(dropped.length, 3);
  });
});

Deno.test("split selection, resizing shards on the fly, and refusing unfinished dirs", async () => {
  await withDataset(async ({ out, dir }) => {
    const m = await readManifest(out);
    const test = await collect((await openLoader(out, { batchSize: 8, split: "test" })).batches());
    assertEquals(keysOf(test), m.splits.test);
    await assertRejects(
      () => openLoader(out, { batchSize: 2, split: "val" }),
      Error,
      "split val is not in",
    );
    // Asking for 8 px from 16 px shards resizes with the ingest's code.
    const small = await collect((await openLoader(out, { batchSize: 32, size: 8 })).batches());
    const first = m.shards[0].name;
    let png: Uint8Array | undefined;
    for await (const x of readShardSamples(join(out, first))) {
      png = x.files.get("png");
      break;
    }
    const want = await decodeCell(png!, { size: 8 });
    assertEquals(Array.from(small[0].pixels.subarray(0, 192)), Array.from(want.pixels));
    // Explicit tar files work without a manifest.
    const tars = m.shards.map((s) => join(out, s.name));
    assertEquals(keysOf(await collect((await openLoader(tars, { batchSize: 5 })).batches())), [
      ...m.splits.test,
      ...m.splits.train,
    ]);
    // A shard directory without manifest.json did not finish ingesting.
    await Deno.remove(join(out, "manifest.json"));
    await assertRejects(() => openLoader(out, { batchSize: 2 }), Error, "ingest did not finish");
    void dir;
  });
});

Deno.test("shuffle: seeded, a permutation per epoch, equal for any worker count", async () => {
  await withDataset(async ({ out }) => {
    const all = keysOf(await collect((await openLoader(out, { batchSize: 4 })).batches()));
    const run = async (seed: number, epoch: number, workers: number, buffer = 3) =>
      keysOf(
        await collect(
          (await openLoader(out, { batchSize: 4, seed, shuffleBuffer: buffer, workers }))
            .batches(epoch),
        ),
      );
    const a = await run(7, 0, 1);
    assertEquals(await run(7, 0, 3), a); // decode timing does not change the order
    assertEquals([...a].sort(), [...all].sort()); // every sample once
    assertNotEquals(a, all);
    const b = await run(7, 1, 2);
    assertNotEquals(b, a); // another epoch, another order
    assertEquals([...b].sort(), [...all].sort());
    assertNotEquals(await run(8, 0, 2), a);
  });
});

Deno.test("folder, csv and list sources decode and resize on the fly; bad files skipped", async () => {
  await withDataset(async ({ dir, src, files }) => {
    await Deno.writeTextFile(join(src, "eos", "broken.png"), "not a png");
    const errors: string[] = [];
    const loader = await openLoader(src, {
      batchSize: 6,
      size: 20,
      onError: (where, why) => errors.push(`${where}: ${why}`),
    });
    assertEquals(loader.classes, CLASSES);
    const batches = await collect(loader.batches());
    assertEquals(batches.reduce((n, b) => n + b.count, 0), 15);
    assertEquals(errors.length, 1);
    assert(/broken\.png: not an image/.test(errors[0]), errors[0]);
    assertEquals(loader.stats.failed, 1);
    // Folder order: classes sorted, files sorted; labels are class indices.
    assertEquals(batches.flatMap((b) => Array.from(b.labels)), [
      0,
      0,
      0,
      0,
      0,
      1,
      1,
      1,
      1,
      1,
      2,
      2,
      2,
      2,
      2,
    ]);
    const want = await decodeCell(await Deno.readFile(files[5]), { size: 20 });
    assertEquals(
      Array.from(batches[0].pixels.subarray(5 * 1200, 6 * 1200)),
      Array.from(want.pixels),
    );
    assertEquals(batches[0].meta[5].source, "eos/img0.png");

    const list = join(dir, "paths.txt");
    await Deno.writeTextFile(list, files.slice(0, 4).join("\n"));
    const lb = await collect((await openLoader(list, { batchSize: 8, size: 20 })).batches());
    assertEquals(Array.from(lb[0].labels), [-1, -1, -1, -1]);
    assertEquals(
      Array.from(lb[0].pixels.subarray(0, 1200)),
      Array.from((await decodeCell(await Deno.readFile(files[0]), { size: 20 })).pixels),
    );

    // A flat folder of images: unlabelled, sorted.
    const flat = await openLoader(join(src, "lym"), { batchSize: 8, size: 20 });
    const fb = await collect(flat.batches());
    assertEquals([flat.classes, fb[0].keys], [[], ["img0", "img1", "img2", "img3", "img4"]]);
    assertEquals(Array.from(fb[0].labels), [-1, -1, -1, -1, -1]);

    const csv = join(dir, "l.csv");
    await Deno.writeTextFile(csv, `Image Path,Label\nsrc/lym/img1.png,lym\nsrc/bas/img2.png,bas\n`);
    const cl = await openLoader(csv, { batchSize: 8, size: 20 });
    assertEquals(cl.classes, ["bas", "lym"]);
    assertEquals(Array.from((await collect(cl.batches()))[0].labels), [1, 0]);
  });
});

Deno.test("prefetch is bounded: decoding runs at most `prefetch` batches ahead and stops on break", async () => {
  await withDataset(async ({ src }) => {
    const B = 2;
    const prefetch = 1;
    const workers = 2;
    const window = 2 * workers + 2;
    const loader = await openLoader(src, { batchSize: B, size: 16, prefetch, workers });
    let delivered = 0;
    for await (const _ of loader.batches()) {
      delivered++;
      // Everything decoded is: delivered batches, `prefetch` queued ones, the
      // one being filled, and what the decode window holds.
      const bound = (delivered + prefetch + 1) * B + window;
      assert(loader.stats.decoded <= bound, `decoded ${loader.stats.decoded} > ${bound}`);
      await new Promise((r) => setTimeout(r, 40)); // a slow consumer
      if (delivered === 2) break;
    }
    assert(loader.stats.maxQueuedBatches <= prefetch, `queued ${loader.stats.maxQueuedBatches}`);
    assert(loader.stats.maxDecodeWindow <= window, `window ${loader.stats.maxDecodeWindow}`);
    const atBreak = loader.stats.decoded;
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(loader.stats.decoded, atBreak); // the producer stopped with the consumer
    assert(atBreak < 15, "the whole dataset was decoded ahead of a consumer that stopped");
  });
});

gpuTest("uploadBatch puts the batch's bytes on the GPU", async (gpu) => {
  await withDataset(async ({ out }) => {
    const [batch] = await collect((await openLoader(out, { batchSize: 3 })).batches());
    const t = uploadBatch(gpu, batch);
    const back = await gpu.readBytes(t);
    assertEquals(Array.from(back.subarray(0, batch.pixels.length)), Array.from(batch.pixels));
    gpu.release(t);
  });
});

/** Writes a tar shard by hand: one PNG (or given bytes) and a .cls per sample. */
async function writeShard(path: string, samples: { key: string; png: Uint8Array }[]) {
  const parts = samples.flatMap((s) => [
    tarEntry(`${s.key}.cls`, new TextEncoder().encode("0")),
    tarEntry(`${s.key}.png`, s.png),
  ]);
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0) + tarEnd().length);
  let at = 0;
  for (const p of [...parts, tarEnd()]) {
    bytes.set(p, at);
    at += p.length;
  }
  await Deno.writeFile(path, bytes);
}

Deno.test("range: a slice of the unshuffled order; --part i/n slices tile the data", async () => {
  await withDataset(async ({ out }) => {
    const all = keysOf(await collect((await openLoader(out, { batchSize: 4 })).batches()));
    assertEquals(all.length, 15);
    const loader = await openLoader(out, { batchSize: 4, range: [5, 11], workers: 2 });
    assertEquals(loader.length, 6);
    const bs = await collect(loader.batches());
    assertEquals(bs.map((b) => b.count), [4, 2]);
    assertEquals(keysOf(bs), all.slice(5, 11));
    assertEquals(bs.flatMap((b) => b.indices), [5, 6, 7, 8, 9, 10]);
    // Only the range is decoded: the 5 samples before it are passed over.
    assertEquals(loader.stats.decoded, 6);
    // Three parts, as `embed --part i/3` cuts them, give every sample once, in order.
    const parts: string[] = [];
    for (let i = 0; i < 3; i++) {
      const range: [number, number] = [Math.floor((i * 15) / 3), Math.floor(((i + 1) * 15) / 3)];
      parts.push(
        ...keysOf(await collect((await openLoader(out, { batchSize: 3, range })).batches())),
      );
    }
    assertEquals(parts, all);
    // Pixels in a range are the same as in a full pass.
    const full = await collect((await openLoader(out, { batchSize: 15 })).batches());
    const part = await collect(
      (await openLoader(out, { batchSize: 15, range: [9, 12] })).batches(),
    );
    const px = 16 * 16 * 3;
    assertEquals(Array.from(part[0].pixels), Array.from(full[0].pixels.subarray(9 * px, 12 * px)));
    // A split's range counts within the split.
    const m = await readManifest(out);
    const train = await openLoader(out, { batchSize: 8, split: "train", range: [2, 5] });
    assertEquals(keysOf(await collect(train.batches())), m.splits.train.slice(2, 5));
  });
});

Deno.test("range: end clamps to the data, start beyond it is an error, bad ranges named", async () => {
  await withDataset(async ({ out, src }) => {
    const m = await readManifest(out);
    const tars = m.shards.map((s) => join(out, s.name));
    const all = keysOf(await collect((await openLoader(tars, { batchSize: 4 })).batches()));
    for (const source of [out, tars, src]) {
      const tail = await openLoader(source, { batchSize: 4, range: [13, 100] });
      const keys = keysOf(await collect(tail.batches()));
      assertEquals(keys.length, 2, `${source}`);
      assertEquals(tail.length, Array.isArray(source) ? null : 2); // tar files: no count up front
      const rest = await openLoader(source, { batchSize: 4, range: [15, Infinity] });
      assertEquals(await collect(rest.batches()), []); // resuming a finished run: nothing left
    }
    assertEquals(
      keysOf(await collect((await openLoader(tars, { batchSize: 4, range: [13, 100] })).batches())),
      all.slice(13),
    );
    await assertRejects(
      () => openLoader(out, { batchSize: 4, range: [16, 20] }),
      RangeError,
      "range start 16 is beyond the 15 samples of",
    );
    await assertRejects(
      () => openLoader(src, { batchSize: 4, range: [16, 20] }),
      RangeError,
      "range start 16 is beyond the 15 samples",
    );
    // Tar files given without a manifest are only counted by reading them.
    const lazy = await openLoader(tars, { batchSize: 4, range: [16, 20] });
    await assertRejects(
      () => collect(lazy.batches()),
      RangeError,
      `beyond the 15 samples of ${tars.length} shard(s)`,
    );
    const bad: [unknown, string][] = [
      [[1.5, 3], "range start must be an integer ≥ 0, got [1.5, 3)"],
      [[-1, 3], "range start must be an integer ≥ 0"],
      [[4, 3], "range end must be an integer ≥ start (or Infinity: to the end), got [4, 3)"],
      [[0, NaN], "range end must be an integer"],
      [[2], "range must be [start, end), got [2)"],
      ["0:3", 'range must be [start, end), got "0:3"'],
    ];
    for (const [range, msg] of bad) {
      await assertRejects(
        () => openLoader(out, { batchSize: 4, range: range as [number, number] }),
        RangeError,
        msg,
      );
    }
    await assertRejects(
      () => openLoader(out, { batchSize: 4, range: [0, 4], seed: 1 }),
      Error,
      "range [0, 4) counts samples in the unshuffled order, so it cannot be combined with seed 1",
    );
  });
});

Deno.test("range skips without decoding: unopened manifest shards, tar members, folder files", async () => {
  await withDataset(async ({ dir, out, src }) => {
    const m = await readManifest(out);
    const all = keysOf(await collect((await openLoader(out, { batchSize: 4 })).batches()));
    // With a manifest, shards wholly before the range are not even opened:
    // the first one (4 samples) can be garbage.
    assertEquals(m.shards[0].samples, 4);
    await Deno.writeTextFile(join(out, m.shards[0].name), "not a tar");
    const past = await openLoader(out, { batchSize: 4, range: [4, 9] });
    assertEquals(keysOf(await collect(past.batches())), all.slice(4, 9));
    // A range that starts in it opens it: the broken shard is skipped and reported.
    const skipped: string[] = [];
    const into = await openLoader(out, {
      batchSize: 4,
      range: [3, 9],
      onError: (where, why) => skipped.push(`${where}: ${why}`),
    });
    assertEquals(keysOf(await collect(into.batches())), all.slice(4, 9));
    assertEquals(into.stats.failedShards, 1);
    assert(
      skipped.length === 1 &&
        skipped[0].includes(`${m.shards[0].name}: shard skipped after 0 samples`) &&
        skipped[0].includes("header at byte 0: tar truncated in the header"),
      skipped.join("\n"),
    );

    // Inside a shard, members before the range are read past, never decoded:
    // a broken image there reports nothing.
    const png = await sharp(new Uint8Array(5 * 5 * 3).fill(90), {
      raw: { width: 5, height: 5, channels: 3 },
    }).png().toBuffer();
    const good = new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
    const tar = join(dir, "hand.tar");
    await writeShard(tar, [
      { key: "a", png: good },
      { key: "b", png: new TextEncoder().encode("not a png") },
      { key: "c", png: good },
      { key: "d", png: good },
    ]);
    const errors: string[] = [];
    const onError = (where: string, why: string) => errors.push(`${where}: ${why}`);
    const after = await openLoader([tar], { batchSize: 4, size: 5, range: [2, 4], onError });
    const ab = await collect(after.batches());
    assertEquals([keysOf(ab), errors, after.stats.decoded], [["c", "d"], [], 2]);
    // Indices count the failed sample too, so a resume after "c" is [3, …).
    const over = await openLoader([tar], { batchSize: 4, size: 5, range: [1, 3], onError });
    const ob = await collect(over.batches());
    assertEquals([keysOf(ob), ob[0].indices, over.stats.failed], [["c"], [2], 1]);
    assertEquals(errors.length, 1);
    assert(/hand\.tar:b: not an image/.test(errors[0]), errors[0]);

    // Folder sources: the same, by slicing the file list (eos/broken.png is index 5).
    await Deno.writeTextFile(join(src, "eos", "broken.png"), "not a png");
    errors.length = 0;
    const folderAll = await openLoader(src, { batchSize: 8, size: 8, onError });
    assertEquals(folderAll.length, 16);
    const fkeys = keysOf(await collect(folderAll.batches()));
    assertEquals(errors.length, 1);
    errors.length = 0;
    const f = await openLoader(src, { batchSize: 8, size: 8, range: [6, 10], onError });
    const fb = await collect(f.batches());
    assertEquals([keysOf(fb), errors, f.stats.decoded, f.length], [fkeys.slice(5, 9), [], 4, 4]);
    assertEquals(fb[0].indices, [6, 7, 8, 9]);
  });
});

Deno.test("resample: bilinear (evaluation) or lanczos (default), as decodeCell does them", async () => {
  await withDataset(async ({ src, files }) => {
    const want = async (resample?: "bilinear" | "lanczos") =>
      Array.from((await decodeCell(await Deno.readFile(files[0]), { size: 20, resample })).pixels);
    const got = async (resample?: "bilinear" | "lanczos") => {
      const [b] = await collect(
        (await openLoader(src, { batchSize: 1, size: 20, resample, range: [0, 1] })).batches(),
      );
      return Array.from(b.pixels);
    };
    const bil = await got("bilinear");
    assertEquals(bil, await want("bilinear"));
    assertEquals(await got(), await want("lanczos"));
    assertNotEquals(bil, await got()); // the filters differ on these noise images
    await assertRejects(
      () => openLoader(src, { batchSize: 1, resample: "bicubic" as "bilinear" }),
      RangeError,
      'openLoader: resample must be "lanczos" or "bilinear", got "bicubic"',
    );
  });
});

Deno.test("indices: unshuffled positions under shuffling; a manifest that lies is caught", async () => {
  await withDataset(async ({ out }) => {
    const m = await readManifest(out);
    const tars = m.shards.map((s) => join(out, s.name));
    const all = keysOf(await collect((await openLoader(out, { batchSize: 4 })).batches()));
    // Shuffled manifest shards: each image still carries its unshuffled index.
    const sh = await collect((await openLoader(out, { batchSize: 4, seed: 3 })).batches());
    const pairs = sh.flatMap((b) => b.keys.map((k, j) => [k, b.indices[j]] as const));
    assertNotEquals(pairs.map(([k]) => k), all);
    for (const [k, i] of pairs) assertEquals(k, all[i]);
    // Shuffled tar files without a manifest: offsets unknown.
    const st = await collect((await openLoader(tars, { batchSize: 15, seed: 3 })).batches());
    assertEquals(st[0].indices, new Array(15).fill(-1));
    // A manifest whose shard count disagrees with the shard would shift a range.
    const lie = structuredClone(m);
    lie.shards[1].samples += 1;
    await Deno.writeTextFile(join(out, "manifest.json"), JSON.stringify(lie));
    await assertRejects(
      async () =>
        await collect((await openLoader(out, { batchSize: 4, range: [0, 15] })).batches()),
      Error,
      `holds 2 samples but manifest.json says 3`,
    );
  });
});
