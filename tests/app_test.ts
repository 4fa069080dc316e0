/**
 * bloom's web page (app/, served by cli/app.ts): its pure parts under Deno,
 * then the page itself in a real Chromium (Debian's `chromium`, driven by
 * playwright-core) with WebGPU on SwiftShader.
 *
 * Parity: the page's embeddings equal the command line's (`deno task embed`
 * on llvmpipe) within 1e-4 relative per cell in the norm sense (f32 on two
 * software adapters with different summation orders); the page's kNN
 * predictions equal eval/knn.ts's on the command line's embeddings, exactly.
 * Privacy: every request the browser makes goes to the page's own server.
 * The browser tests skip, saying why, where no Chromium is installed.
 */
import { join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import { readEmbeddings } from "../data/embeddings_file.ts";
import { CorruptFileError } from "../data/errors.ts";
import { blobSource, RandomAccessFile } from "../data/file.ts";
import { openPth } from "../data/pth.ts";
import { differentialCount } from "../eval/differential.ts";
import { KNeighborsClassifier } from "../eval/knn.ts";
import { LogisticRegression } from "../eval/logreg.ts";
import { matrix } from "../eval/matrix.ts";
import { Probe } from "../eval/probe.ts";
import { writePth } from "../data/pth_writer.ts";
import { writeSafetensors } from "../data/safetensors.ts";
import { randomVitWeights } from "../graph/init.ts";
import { mulberry32 } from "../graph/random.ts";
import { vitConfig, vitParamSpecs } from "../graph/vit.ts";
import { decodeCell } from "../pipelines/dataset/images.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import { buildApp, CONTENT_SECURITY_POLICY, DIST_DIR, handle } from "../cli/app.ts";
import { makeAppSuite } from "../bench/app.ts";
import { DeviceLostError, GpuError, GpuLimitError } from "../kernels/errors.ts";
import { BufferPool } from "../kernels/pool.ts";
import { getGpu } from "../kernels/runtime.ts";
import { LOOSE_SAMPLE, placeCell, sortDropped } from "../app/cells.ts";
import { knnPredict, probePredict } from "../app/classify.ts";
import {
  download,
  findChromium,
  loadWeights,
  openPage,
  type PageSession,
  type PageWindow,
  snapshot,
  waitSettled,
  writeRandomCheckpoint,
} from "../app/driver.ts";
import { type EntryLike, looseFiles, walkEntries } from "../app/entries.ts";
import { embeddingsCsv, embeddingsSafetensors, predictionsCsv } from "../app/export.ts";
import { doesNotFit, endsJob, inHalves } from "../app/fit.ts";
import { failureKind } from "../app/protocol.ts";
import { galleryOrder } from "../app/gallery.ts";
import { cellPixels, flattenRgba } from "../app/pixels.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { tinyVit } from "./fixtures.ts";
import { relErr } from "./vit_oracle.ts";

const TOL = 1e-4;
const CHROMIUM = findChromium();
if (!CHROMIUM) {
  console.warn(
    "app_test: no Chromium found (/usr/bin/chromium, or set BLOOM_CHROMIUM): the browser " +
      "tests are skipped; install Debian's chromium package to run them",
  );
}
const CLI = new URL("../cli/embed.ts", import.meta.url).pathname;
const APP_CLI = new URL("../cli/app.ts", import.meta.url).pathname;
const EVAL_CLI = new URL("../cli/eval.ts", import.meta.url).pathname;
const dec = new TextDecoder();

// ------------------------------------------------------------------ fixtures

const TINY = tinyVit({ depth: 2 });

/** `deno task embed` in a subprocess; the embeddings file it wrote. */
async function embedCli(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", CLI, "--quiet", "--no-autotune", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, `embed CLI failed: ${dec.decode(out.stderr)}`);
}

/**
 * The row of the CLI's `paths` (relative to its --input folder) for page path
 * `rel` (relative to what was dropped, the folder's own name first).
 */
function rowOf(paths: string[], rel: string): number {
  const i = paths.findIndex((p) => rel === p || rel.endsWith("/" + p));
  assert(i >= 0, `the CLI's file has no row for ${rel}`);
  return i;
}

/** Standard deviation of a PNG's pixels (all channels): 0 for a blank image. */
async function pngSpread(bytes: Uint8Array): Promise<number> {
  const st = await sharp(bytes).stats();
  return Math.max(...st.channels.map((c) => c.stdev));
}

// ------------------------------------------------------------- pure modules

Deno.test("app cells: folders give samples and labels; non-images are refused with the reason", () => {
  assertEquals(placeCell("a.png"), {
    path: "a.png",
    name: "a.png",
    folder: "",
    sample: LOOSE_SAMPLE,
    label: null,
  });
  assertEquals(placeCell("smear1/a.png").sample, "smear1");
  assertEquals(placeCell("smear1/a.png").label, null);
  assertEquals(placeCell("set/blast/a.png"), {
    path: "set/blast/a.png",
    name: "a.png",
    folder: "set/blast",
    sample: "set",
    label: "blast",
  });
  assertEquals(placeCell("study/p7/a.png", "samples").sample, "study/p7");
  assertEquals(placeCell("study/p7/a.png", "samples").label, null);
  const { cells, refused } = sortDropped([
    "set/blast/a.PNG",
    "set/.DS_Store",
    "set/notes.txt",
    "set/scan.tif",
    "set/README",
    "set/blast/b.jpeg",
  ]);
  assertEquals(cells.map((c) => c.path), ["set/blast/a.PNG", "set/blast/b.jpeg"]);
  assertEquals(refused.map((r) => r.path), ["set/notes.txt", "set/scan.tif", "set/README"]);
  assert(/not an image \(a \.txt file\)/.test(refused[0].reason), refused[0].reason);
  assert(/TIFF/.test(refused[1].reason), refused[1].reason);
  assert(/no extension/.test(refused[2].reason), refused[2].reason);
});

/** Gaussian clusters per class, float32 rows. */
function clusters(n: number, dim: number, classes: string[], seed: number) {
  const rand = mulberry32(seed);
  const labels = Array.from({ length: n }, (_, i) => classes[i % classes.length]);
  const x = new Float32Array(n * dim);
  labels.forEach((l, i) => {
    const c = classes.indexOf(l);
    for (let j = 0; j < dim; j++) x[i * dim + j] = (j % classes.length === c ? 1.5 : 0) + rand();
  });
  return { x, labels };
}

Deno.test("app classify: kNN is eval's KNeighborsClassifier, leaving a reference cell out of its own vote", async () => {
  const classes = ["blast", "lymphocyte", "neutrophil"];
  const ref = clusters(30, 8, classes, 1);
  const q = clusters(12, 8, classes, 2);
  const reference = { features: ref.x, dim: 8, labels: ref.labels };
  const page = await knnPredict(matrix(q.x, 12, 8), reference, 5);
  const clf = new KNeighborsClassifier(matrix(ref.x, 30, 8), ref.labels);
  assertEquals(page.labels, (await clf.predict(matrix(q.x, 12, 8), 5)).map(String));
  assertEquals(page.classes, classes);
  // Leave-one-out: querying the reference itself must equal kNN over the other 29 rows.
  const self = Int32Array.from({ length: 30 }, (_, i) => i);
  const loo = await knnPredict(matrix(ref.x, 30, 8), reference, 5, self);
  for (const i of [0, 7, 29]) {
    const keep = [...Array(30).keys()].filter((r) => r !== i);
    const x = new Float32Array(keep.flatMap((r) => [...ref.x.subarray(r * 8, r * 8 + 8)]));
    const one = new KNeighborsClassifier(matrix(x, 29, 8), keep.map((r) => ref.labels[r]));
    const want = await one.predict(matrix(ref.x.slice(i * 8, i * 8 + 8), 1, 8), 5);
    assertEquals(loo.labels[i], String(want[0]), `leave-one-out of row ${i}`);
  }
  assert(loo.confidence.every((c) => c > 0 && c <= 1));
  // k beyond the reference is capped (29 others here), not an error.
  assert((await knnPredict(matrix(ref.x, 30, 8), reference, 50, self)).method.includes("k = 29"));
});

Deno.test("app classify: the probe is eval's logistic regression, cross-fitted on labelled cells", () => {
  const classes = ["blast", "lymphocyte"];
  const ref = clusters(20, 6, classes, 3);
  const q = clusters(6, 6, classes, 4);
  const reference = { features: ref.x, dim: 6, labels: ref.labels };
  const page = probePredict(matrix(q.x, 6, 6), reference);
  const lr = LogisticRegression.fit(matrix(ref.x, 20, 6), ref.labels);
  assertEquals(page.labels, lr.predict(matrix(q.x, 6, 6)).map(String));
  // Cross-fitted: row 0 (fold 0 of 5) is predicted by a probe fitted without rows 0, 5, 10, 15.
  const self = Int32Array.from({ length: 20 }, (_, i) => i);
  const cf = probePredict(matrix(ref.x, 20, 6), reference, self, 5);
  const keep = [...Array(20).keys()].filter((r) => r % 5 !== 0);
  const x = new Float32Array(keep.flatMap((r) => [...ref.x.subarray(r * 6, r * 6 + 6)]));
  const fold0 = LogisticRegression.fit(matrix(x, 16, 6), keep.map((r) => ref.labels[r]));
  assertEquals(cf.labels[0], String(fold0.predict(matrix(ref.x.slice(0, 6), 1, 6))[0]));
  assert(cf.method.includes("5-fold"));
});

Deno.test("app export: embeddings files are the ones bloom embed writes (readEmbeddings reads them)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-app-export-" });
  try {
    const rows = {
      features: Float32Array.from({ length: 6 }, (_, i) => Math.fround(i / 7 - 0.3)),
      dim: 3,
      paths: ["s/a,1.png", 's/"b".png'],
      labels: ["blast", "lymphocyte"],
      arch: "vit_small",
      weights: "DinoBloom-S.pth",
      inputSize: 224,
    };
    await Deno.writeFile(join(dir, "e.safetensors"), embeddingsSafetensors(rows));
    await Deno.writeTextFile(join(dir, "e.csv"), embeddingsCsv(rows));
    for (const f of ["e.safetensors", "e.csv"]) {
      const e = await readEmbeddings(join(dir, f));
      assertEquals([...e.features], [...rows.features], f);
      assertEquals(e.paths, rows.paths, f);
      assertEquals(e.labels, rows.labels, f);
    }
    const st = await readEmbeddings(join(dir, "e.safetensors"));
    assertEquals([st.meta.arch, st.meta.weights, st.meta["bloom.size"]], [
      "vit_small",
      "DinoBloom-S.pth",
      "224",
    ]);
    // The same files as ByteSources (a file dropped on the page).
    for (const f of ["e.safetensors", "e.csv"]) {
      const bytes = await Deno.readFile(join(dir, f));
      const e = await readEmbeddings(blobSource(new Blob([bytes]), f));
      assertEquals([...e.features], [...rows.features], `${f} as a Blob`);
    }
    const csv = predictionsCsv([
      { path: "s/a,1.png", sample: "s", label: "blast", predicted: "blast", confidence: 0.75 },
      {
        path: "s/bad.png",
        sample: "s",
        label: null,
        predicted: null,
        confidence: null,
        error: "corrupt",
      },
    ], "kNN, k = 20");
    assertEquals(csv.split("\n").slice(0, 3), [
      "path,sample,label,predicted,confidence,method,error",
      '"s/a,1.png",s,blast,blast,0.75,"kNN, k = 20",',
      "s/bad.png,s,,,,,corrupt",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("app pixels: flatten and resize give the command line's cell, byte for byte", async () => {
  const rand = mulberry32(11);
  for (const [w, h, alpha] of [[61, 47, false], [224, 224, false], [33, 40, true]] as const) {
    const rgba = new Uint8Array(w * h * 4);
    for (let i = 0; i < rgba.length; i++) rgba[i] = Math.floor(rand() * 256);
    if (!alpha) { for (let i = 3; i < rgba.length; i += 4) rgba[i] = 255; }
    const png = new Uint8Array(
      await sharp(rgba, { raw: { width: w, height: h, channels: 4 } }).png().toBuffer(),
    );
    const cli = await decodeCell(png, { size: 56, resample: "bilinear" });
    const page = cellPixels(rgba, w, h, 56);
    let worst = 0;
    for (let i = 0; i < page.length; i++) {
      worst = Math.max(worst, Math.abs(page[i] - cli.pixels[i]));
    }
    // Opaque: exact. Alpha: libvips composites in float, we round once; one level at most.
    assert(worst <= (alpha ? 1 : 0), `${w}×${h}${alpha ? " with alpha" : ""}: off by ${worst}`);
  }
  assertEquals([...flattenRgba(Uint8Array.of(10, 20, 30, 0, 10, 20, 30, 255), 2, 1)], [
    255,
    255,
    255,
    10,
    20,
    30,
  ]);
});

Deno.test("app gallery: sorted by confidence or type, filtered by type and name", () => {
  const cell = (id: number, path: string, predicted: string | null, confidence: number | null) => ({
    id,
    path,
    name: path,
    sample: "s",
    label: null,
    url: "",
    predicted,
    confidence,
  });
  const cells = [
    cell(1, "c.png", "b", 0.9),
    cell(2, "a.png", "a", 0.4),
    cell(3, "b.png", null, null),
  ];
  const view = { sort: "path" as const, type: "", text: "", limit: 10, selected: null };
  assertEquals(galleryOrder(cells, view).map((c) => c.id), [2, 3, 1]);
  assertEquals(galleryOrder(cells, { ...view, sort: "confidence-asc" }).map((c) => c.id), [
    3,
    2,
    1,
  ]);
  assertEquals(galleryOrder(cells, { ...view, sort: "predicted" }).map((c) => c.id), [2, 1, 3]);
  assertEquals(galleryOrder(cells, { ...view, type: "b" }).map((c) => c.id), [1]);
  assertEquals(galleryOrder(cells, { ...view, text: "A.P" }).map((c) => c.id), [2]);
});

Deno.test("app folder drops: every directory read to its end, subfolders kept, unreadable parts named", async () => {
  type Tree = { [name: string]: Tree | string | Error };
  // readEntries answers in batches of two, then an empty one, as browsers do (in 100s).
  const entry = (name: string, node: Tree | string | Error): EntryLike =>
    typeof node === "string" || node instanceof Error
      ? {
        name,
        isFile: true,
        isDirectory: false,
        file: (ok, fail) => typeof node === "string" ? ok(new File([node], name)) : fail(node),
      }
      : {
        name,
        isFile: false,
        isDirectory: true,
        createReader() {
          const children = Object.entries(node).map(([n, c]) => entry(n, c));
          let at = 0;
          return {
            readEntries(ok, fail) {
              if (name === "locked") return fail(new DOMException("denied", "SecurityError"));
              ok(children.slice(at, at += 2));
            },
          };
        },
      };
  const { files, unreadable } = await walkEntries([
    entry("smear1", {
      blast: { "a.png": "A", "b.png": "B", "c.png": "C", "d.png": "D", "e.png": "E" },
      lymphocyte: { "f.png": "F" },
      locked: { "x.png": "X" },
      "gone.png": new DOMException("A requested file could not be found", "NotFoundError"),
    }),
    entry("loose.jpg", "L"),
  ]);
  assertEquals(files.map((f) => f.path), [
    "loose.jpg",
    "smear1/blast/a.png",
    "smear1/blast/b.png",
    "smear1/blast/c.png",
    "smear1/blast/d.png",
    "smear1/blast/e.png",
    "smear1/lymphocyte/f.png",
  ]);
  assertEquals(await files[5].file.text(), "E");
  assertEquals(unreadable.map((u) => u.path), ["smear1/locked/", "smear1/gone.png"]);
  assert(/could not be read \(A requested file could not be found\)/.test(unreadable[1].reason));
  // And the folder rule: the subfolders are the labels of the sample "smear1".
  const { cells } = sortDropped(files.map((f) => f.path));
  assertEquals(cells.map((c) => [c.sample, c.label]).slice(0, 2), [
    [LOOSE_SAMPLE, null],
    ["smear1", "blast"],
  ]);
  assertEquals(looseFiles([new File([""], "b.png"), new File([""], "a.png")]).map((f) => f.path), [
    "a.png",
    "b.png",
  ]);
});

Deno.test("app GPU failures: memory or a limit halves the batch down to one cell; a model that does not fit says so", async () => {
  // The runtime's own errors, as the engine sees them.
  const pool = new BufferPool({} as GPUDevice, 1024);
  const tooBig = (() => {
    try {
      pool.acquire(4096, "gpu-write", "attention scores");
    } catch (e) {
      return e;
    }
  })();
  const kinds = [
    new GpuError("GPU out-of-memory error in submit #3 (matmul ×2): Out of memory"),
    new GpuError("uncaptured GPU error (out of memory): Failed to allocate"),
    new DeviceLostError("the GPU device was lost (destroyed): no detail"),
    new GpuLimitError("attention variant {}: workgroup of 512 exceeds this adapter's 256"),
    tooBig,
    new GpuError("GPU validation error in submit #1 (x): Binding size is zero"),
  ].map(failureKind);
  assertEquals(kinds, ["oom", "oom", "lost", "limit", "limit", "other"]);

  // A fake GPU that takes at most 3 cells at once: 10 cells go through as 2+3+… in order.
  const runs: number[][] = [];
  const fits = (max: number) => (part: readonly number[]) => {
    runs.push([...part]);
    if (part.length > max) {
      return Promise.reject(new GpuError("GPU out-of-memory error in submit #1 (x): OOM"));
    }
    return Promise.resolve();
  };
  const cells = [...Array(10).keys()];
  assertEquals(await inHalves(cells, fits(3)), 3);
  const done = runs.filter((r) => r.length <= 3);
  assertEquals(done.flat(), cells, "every cell once, in order");
  // One cell too many: the error comes out (the job stops saying the model does not fit).
  runs.length = 0;
  await assertRejects(() => inHalves(cells, fits(0)), GpuError, "out-of-memory");
  assertEquals(runs.at(-1)!.length, 1);
  // Other failures are not retried.
  let calls = 0;
  await assertRejects(() =>
    inHalves(cells, () => {
      calls++;
      return Promise.reject(new GpuError("GPU validation error"));
    }), GpuError);
  assertEquals(calls, 1);
  assert(endsJob("oom") && endsJob("limit") && endsJob("lost") && !endsJob("other"));

  // ViT-L on a small adapter: named, sized, with what to do.
  const params = vitParamSpecs(vitConfig("vit_large")).reduce(
    (n, s) => n + s.shape.reduce((a, b) => a * b, 1),
    0,
  );
  const msg = doesNotFit(
    { arch: "vit_large", params },
    "SwiftShader",
    224,
    new GpuError("uncaptured GPU error (out of memory): Failed to allocate"),
  );
  assertEquals(
    msg,
    "vit_large (303.2 M parameters, 1.1 GiB of weights) does not fit this adapter " +
      "(SwiftShader) at 224 px: out of GPU memory; use a smaller model or input side, or the " +
      "command line on a larger GPU",
  );
  assert(
    doesNotFit({ arch: "vit_giant2", params: 1.1e9 }, "x", 224, tooBig).includes("maxBufferSize"),
  );
});

Deno.test("data: a Blob is read like the file (the page's dropped checkpoints); damage names it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-app-blob-" });
  try {
    const path = join(dir, "tiny.pth");
    await writeRandomCheckpoint(path, TINY, 1);
    const bytes = await Deno.readFile(path);
    using a = await openPth(path);
    using b = await openPth(blobSource(new Blob([bytes]), "dropped.pth"));
    assertEquals([...b.tensors.keys()], [...a.tensors.keys()]);
    for (const [k, t] of a.tensors) {
      assertEquals([...await b.tensors.get(k)!.f32()], [...await t.f32()]);
    }
    const cut = blobSource(new Blob([bytes.subarray(0, bytes.length - 100)]), "cut.pth");
    const e = await assertRejects(() => openPth(cut), CorruptFileError);
    assert(e.message.includes("cut.pth"), e.message);
    const f = await RandomAccessFile.open(blobSource(new Blob([bytes]), "x"));
    await assertRejects(() => f.readAt(bytes.length - 4, 8, "tail"), CorruptFileError, "outside");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("app build: the page bundles bloom's own modules for the browser, self-contained, with no way to reach another host", async () => {
  await buildApp();
  // The engine is built from the command line's modules (no fork): readers, kernels, model, embed.
  const sources: string[] = JSON.parse(
    await Deno.readTextFile(join(DIST_DIR, "worker.js.map")),
  ).sources;
  for (
    const m of ["data/pth.ts", "data/safetensors.ts", "graph/checkpoint.ts", "kernels/attention.ts"]
      .concat(["kernels/runtime.ts", "pipelines/embed.ts", "pipelines/dataset/resample.ts"])
  ) {
    assert(sources.some((s) => s.endsWith(`../${m}`)), `the engine bundle lacks ${m}`);
  }
  // The page's own files name nothing outside the server; the code has no network API at all.
  const appDir = join(DIST_DIR, "..");
  for (const f of ["index.html", "style.css"]) {
    const text = await Deno.readTextFile(join(appDir, f));
    const refs = [...text.matchAll(/(?:src|href)\s*=\s*"([^"]*)"|url\(([^)]*)\)|@import/g)]
      .map((m) => m[1] ?? m[2] ?? m[0]);
    const foreign = refs.filter((r) => /^(?:[a-z]+:)?\/\/|@import/i.test(r) && r !== "data:,");
    assertEquals(foreign, [], `${f} refers to another host`);
  }
  for (const f of ["main.js", "worker.js"]) {
    const js = await Deno.readTextFile(join(DIST_DIR, f));
    const network = js.match(
      /\bfetch\(|XMLHttpRequest|WebSocket|EventSource|sendBeacon|importScripts|RTCPeerConnection/g,
    );
    assertEquals(network, null, `${f} has a network API`);
    const urls = (js.match(/\b(?:https?|wss?|ftp):\/\/[^\s"'`)]*/g) ?? [])
      .filter((u) => u !== "http://www.w3.org/2000/svg"); // SVG's namespace, not a request
    assertEquals(urls, [], `${f} names another host`);
    const imports = [...js.matchAll(/^\s*import\s[^;]*?from\s*["']([^"']+)["']/gm)].map((m) =>
      m[1]
    );
    assertEquals(imports, [], `${f} imports modules the browser cannot load`);
    assert(
      !/["']node:|from "(npm:)?sharp|(?<![.\w])require\(\s*["']/.test(js),
      `${f} reaches Deno/Node-only modules`,
    );
  }
});

Deno.test("app server: only the page's files, with a policy that forbids other origins", async () => {
  await buildApp();
  const get = (p: string, method = "GET") =>
    handle(new Request(`http://127.0.0.1:1${p}`, { method }));
  const index = await get("/");
  assertEquals(index.status, 200);
  assert((await index.text()).includes('src="dist/main.js"'));
  assertEquals(index.headers.get("content-security-policy"), CONTENT_SECURITY_POLICY);
  assert(CONTENT_SECURITY_POLICY.includes("default-src 'self'"));
  assertEquals(
    (await get("/dist/worker.js")).headers.get("content-type"),
    "text/javascript; charset=utf-8",
  );
  for (
    const p of [
      "/dist/../../deno.json",
      "/%2e%2e/deno.json",
      "/app/main.ts",
      "/dist/x.ts",
      "/cli/app.ts",
    ]
  ) {
    const r = await get(p);
    await r.body?.cancel();
    assertEquals(r.status, 404, p);
  }
  const post = await get("/", "POST");
  await post.body?.cancel();
  assertEquals(post.status, 405);
});

Deno.test("app command: serves the page on 127.0.0.1 until stopped, --open opens it; a taken port is a usage error", async () => {
  // --open runs the desktop's opener (xdg-open; open on macOS): a stand-in records the URL.
  const bin = await Deno.makeTempDir({ prefix: "bloom-app-opener-" });
  const opened = join(bin, "opened");
  for (const name of ["xdg-open", "open"]) {
    await Deno.writeTextFile(join(bin, name), `#!/bin/sh\nprintf %s "$1" > '${opened}'\n`, {
      mode: 0o755,
    });
  }
  const start = (port: string, ...more: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", APP_CLI, "--port", port, ...more],
      env: { PATH: `${bin}:${Deno.env.get("PATH") ?? ""}` },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  const child = start("0", "--open");
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/http:\/\/\S+\//.test(text)) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  const url = /http:\/\/\S+\//.exec(text)?.[0];
  try {
    assert(url?.startsWith("http://127.0.0.1:"), text);
    const r = await fetch(url!);
    assertEquals(r.status, 200);
    assert((await r.text()).includes("<title>bloom"));
    assertEquals(r.headers.get("content-security-policy"), CONTENT_SECURITY_POLICY);
    // The same port again: refused, naming the flag.
    const port = new URL(url!).port;
    const second = await start(port).output();
    assertEquals(second.code, 2);
    assert(/port \d+ on 127\.0\.0\.1 is in use: pass --port/.test(dec.decode(second.stderr)));
    if (Deno.build.os !== "windows") {
      let got = "";
      for (let i = 0; i < 100 && !got; i++) {
        got = await Deno.readTextFile(opened).catch(() => "");
        if (!got) await new Promise((r) => setTimeout(r, 50));
      }
      assertEquals(got, url, "--open handed the page's URL to the desktop's opener");
    }
  } finally {
    child.kill("SIGTERM");
    await reader.cancel();
    await child.stderr.cancel();
    await child.status;
    await Deno.remove(bin, { recursive: true });
  }
});

// ------------------------------------------------------------------ browser

/** A test in Chromium: a served page (opened as `openPage` does) and a temp folder, both removed after. */
function pageTest(
  name: string,
  fn: (s: PageSession, dir: string) => Promise<void>,
  opts: Parameters<typeof openPage>[1] = {},
): void {
  Deno.test({
    name,
    ignore: !CHROMIUM,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const dir = await Deno.makeTempDir({ prefix: "bloom-app-test-" });
      const s = await openPage(CHROMIUM!, opts);
      try {
        await fn(s, dir);
      } finally {
        await s.close();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

pageTest(
  "app in Chromium: a small ViT embeds like the CLI; kNN, gallery, differential, UMAP, patch PCA, exports; no request leaves",
  async (s, dir) => {
    const weights = join(dir, "tiny.pth");
    await writeRandomCheckpoint(weights, TINY, 3);
    const classes = ["eosinophil", "lymphocyte", "neutrophil"] as const;
    await writeSyntheticImageFolder(join(dir, "reference"), {
      perClass: 3,
      size: 40,
      seed: 1,
      classes,
    });
    await writeSyntheticImageFolder(join(dir, "cells"), {
      perClass: 3,
      size: 52,
      seed: 2,
      classes,
    });
    // And one JPEG per class (the browser's decoder against libvips'), under its own name.
    const jpegs = await writeSyntheticImageFolder(join(dir, "jpeg"), {
      perClass: 1,
      size: 47,
      seed: 3,
      classes,
      format: "jpg",
    });
    for (const f of jpegs.files) {
      await Deno.rename(f, f.replace("/jpeg/", "/cells/").replace(/([^/]+)\.jpg$/, "j_$1.jpg"));
    }
    const size = 42; // 3×3 patches: the 2×2 position grid is interpolated, as in DINOv2
    const common = ["--weights", weights, "--heads", "2", "--size", String(size), "--batch", "4"];
    await embedCli([
      ...common,
      "--input",
      join(dir, "reference"),
      "--out",
      join(dir, "ref.safetensors"),
    ]);
    await embedCli([
      ...common,
      "--input",
      join(dir, "cells"),
      "--out",
      join(dir, "cli.safetensors"),
    ]);
    const ref = await readEmbeddings(join(dir, "ref.safetensors"));
    const cli = await readEmbeddings(join(dir, "cli.safetensors"));

    const page = s.page;
    const adapter = await page.textContent("#adapter");
    assert(/^WebGPU adapter: .*swiftshader.*binding ≤/i.test(adapter!), adapter!);
    assertEquals(await loadWeights(page, weights, { size, heads: 2, batch: 4 }), "loaded");
    const info = await page.textContent("#model-info");
    assert(info!.includes("custom") && info!.includes("parameters"), info!);
    // Reference: the CLI's labelled embeddings file; k = 3.
    await page.fill("#k", "3");
    await page.selectOption("#reference", "file");
    await page.setInputFiles("#reference-input", join(dir, "ref.safetensors"));
    await page.setInputFiles("#folder-input", join(dir, "cells"));
    await waitSettled(page);

    // Parity of the embeddings, through the page's own export.
    const exported = await download(page, "#export-emb-st");
    assertEquals(exported.name, "embeddings.safetensors");
    await Deno.writeFile(join(dir, "page.safetensors"), exported.bytes);
    const mine = await readEmbeddings(join(dir, "page.safetensors"));
    assertEquals(mine.rows, cli.rows);
    assertEquals(mine.meta.arch, "custom");
    let worst = 0;
    mine.paths.forEach((p, i) => {
      const j = rowOf(cli.paths, p);
      const err = relErr(
        mine.features.subarray(i * mine.dim, (i + 1) * mine.dim),
        cli.features.subarray(j * cli.dim, (j + 1) * cli.dim),
      );
      worst = Math.max(worst, err);
    });
    assert(worst < TOL, `page vs CLI embeddings: ${worst.toExponential(2)} relative`);
    console.log(`  page vs CLI, small ViT: worst ${worst.toExponential(2)} relative`);

    // kNN against the reference file: eval/knn.ts on the CLI's embeddings, exactly.
    const snap = await snapshot(page);
    const clf = new KNeighborsClassifier(matrix(ref.features, ref.rows, ref.dim), ref.labels!);
    const want = await clf.predict(matrix(cli.features, cli.rows, cli.dim), 3);
    for (const c of snap.cells) {
      assertEquals(c.predicted, String(want[rowOf(cli.paths, c.path)]), `kNN of ${c.path}`);
    }
    // Leave-one-out on the page's own labelled cells, the same on the CLI's embeddings.
    await page.selectOption("#reference", "cells");
    await page.waitForFunction(() =>
      (globalThis as unknown as PageWindow).document.body.dataset.analysis === "done"
    );
    const loo = await snapshot(page);
    assert(loo.method!.includes("left out"), loo.method!);
    const order = loo.cells.map((c) => rowOf(cli.paths, c.path));
    const x = new Float32Array(
      order.flatMap((j) => [...cli.features.subarray(j * cli.dim, (j + 1) * cli.dim)]),
    );
    const labels = loo.cells.map((c) => c.label!);
    const self = Int32Array.from(labels, (_, i) => i);
    const cliLoo = await knnPredict(
      matrix(x, labels.length, cli.dim),
      { features: x, dim: cli.dim, labels },
      3,
      self,
    );
    assertEquals(loo.cells.map((c) => c.predicted), cliLoo.labels);

    // Gallery: every cell, sortable and filterable.
    assertEquals(await page.locator("#gallery figure.cell").count(), cli.rows);
    await page.selectOption("#sort", "confidence-asc");
    const confs = await page.locator("#gallery figure.cell .conf").allTextContents();
    const values = confs.map((t) => parseInt(t));
    assertEquals(values, [...values].sort((a, b) => a - b));
    const type = loo.classes![0];
    await page.selectOption("#filter-type", type);
    const shown = await page.locator("#gallery figure.cell .pred").allTextContents();
    assertEquals(shown.length, loo.cells.filter((c) => c.predicted === type).length);
    assert(shown.every((t) => t === type));
    await page.selectOption("#filter-type", "");

    // Differential count: eval/differential.ts over the page's predictions.
    const table = differentialCount(
      loo.cells.map((c) => c.predicted!),
      loo.cells.map((c) => c.sample),
      loo.classes!,
    );
    for (const k of loo.classes!.keys()) {
      const td = await page.textContent(
        `#differential tr[data-sample="cells"] td[data-class="${loo.classes![k]}"]`,
      );
      assert(td!.startsWith(`${table.samples[0].percent[k].toFixed(1)} %`), `${td}`);
    }

    // UMAP: one point per cell; hovering one shows its thumbnail.
    assertEquals(await page.locator("#umap circle[data-i]").count(), cli.rows);
    await page.locator("#umap circle[data-i]").first().hover({ force: true });
    await page.waitForSelector("#umap-hover:not([hidden])");
    assert((await page.getAttribute("#umap-hover img", "src"))!.startsWith("blob:"));
    await page.selectOption("#umap-colour", "sample");
    assert((await page.textContent("#umap svg"))!.includes(`cells (${cli.rows})`));
    await page.selectOption("#umap-colour", "label");
    const legend = (await page.textContent("#umap svg"))!;
    assert(classes.every((c) => legend.includes(`${c} (4)`)), legend);

    // Patch-token PCA of one cell.
    await page.locator("#gallery figure.cell").first().click();
    await page.waitForSelector("body[data-pca=shown]");
    const pca = await download(page, "#export-pca-png");
    assert((await pngSpread(pca.bytes)) > 5, "the patch PCA PNG is blank");

    // Exports: csv embeddings equal the safetensors; predictions, differential, UMAP.
    const csv = await download(page, "#export-emb-csv");
    await Deno.writeFile(join(dir, "page.csv"), csv.bytes);
    assertEquals([...(await readEmbeddings(join(dir, "page.csv"))).features], [...mine.features]);
    const preds = dec.decode((await download(page, "#export-pred-csv")).bytes).trim().split("\n");
    assertEquals(preds.length, 1 + cli.rows);
    assert(preds[0].startsWith("path,sample,label,predicted,confidence"));
    const diff = dec.decode((await download(page, "#export-diff-csv")).bytes);
    assert(diff.startsWith("sample,class,count,percent"), diff);
    const svg = dec.decode((await download(page, "#export-umap-svg")).bytes);
    assertEquals(svg.match(/<circle [^>]*data-i=/g)?.length, cli.rows);
    const png = await download(page, "#export-umap-png");
    assert((await pngSpread(png.bytes)) > 5, "the UMAP PNG is blank");

    // The linear probe trained in the page (cross-fitted on the labelled cells) …
    await page.selectOption("#method", "probe");
    await page.waitForFunction(() =>
      (globalThis as unknown as PageWindow).document.body.dataset.analysis === "done"
    );
    const probed = await snapshot(page);
    assert(probed.method!.startsWith("linear probe"), probed.method!);
    const cliProbe = probePredict(
      matrix(x, labels.length, cli.dim),
      { features: x, dim: cli.dim, labels },
      self,
    );
    assertEquals(probed.cells.map((c) => c.predicted), cliProbe.labels);
    // … and the probe `bloom eval --save DIR` trained on the reference, loaded from its file.
    const evalOut = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", EVAL_CLI, "--train", join(dir, "ref.safetensors")]
        .concat(["--test", join(dir, "cli.safetensors"), "--protocol", "linear", "--device"])
        .concat(["cpu", "--quiet", "--save", join(dir, "heads")]),
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(evalOut.success, `eval CLI failed: ${dec.decode(evalOut.stderr)}`);
    const saved = await Probe.load(join(dir, "heads", "probe.safetensors"));
    await page.setInputFiles("#probe-input", join(dir, "heads", "probe.safetensors"));
    await page.waitForFunction(() => {
      const w = globalThis as unknown as PageWindow;
      return w.document.body.dataset.analysis === "done" &&
        (w.bloom.snapshot().method ?? "").startsWith("saved probe");
    });
    const fromFile = await snapshot(page);
    const wantProbe = saved.predict(matrix(x, labels.length, cli.dim)).labels.map(String);
    assertEquals(fromFile.cells.map((c) => c.predicted), wantProbe);

    const shot = await page.screenshot({ fullPage: true });
    assert((await pngSpread(shot)) > 10, "the page screenshot is blank");
    assertEquals(s.errors, []);
    assertEquals(s.foreignRequests(), [], "the page asked another host for something");
    assert(s.requests.some((r) => r.endsWith("/dist/worker.js")), "the requests were recorded");
  },
);

pageTest(
  "app in Chromium: a real-size ViT-S (DINOv2 hub checkpoint) embeds like the CLI, with the same kNN predictions",
  async (s, dir) => {
    // DINOv2's own layout: 37×37 position grid, interpolated at run time to the 8×8 of 112 px.
    const weights = join(dir, "dinov2_vits14.pth");
    await writeRandomCheckpoint(weights, { ...vitConfig("vit_small"), posGrid: 37 }, 5);
    await writeSyntheticImageFolder(join(dir, "cells"), {
      perClass: 1,
      size: 90,
      seed: 4,
      classes: ["lymphocyte", "neutrophil"],
    });
    const size = 112;
    await embedCli([
      "--weights",
      weights,
      "--size",
      String(size),
      "--batch",
      "2",
      "--input",
      join(dir, "cells"),
      "--out",
      join(dir, "cli.safetensors"),
    ]);
    const cli = await readEmbeddings(join(dir, "cli.safetensors"));
    const loaded = await loadWeights(s.page, weights, { size, batch: 2 });
    assertEquals(loaded, "loaded", JSON.stringify((await snapshot(s.page)).messages));
    const snap0 = await snapshot(s.page);
    assertEquals(snap0.model?.arch, "vit_small");
    assert(Math.abs(snap0.model!.params - 22.06e6) < 0.1e6, `${snap0.model!.params} parameters`);
    // kNN (k = 1) against the CLI's embeddings of the same cells, as a reference file.
    await s.page.fill("#k", "1");
    await s.page.selectOption("#reference", "file");
    await s.page.setInputFiles("#reference-input", join(dir, "cli.safetensors"));
    await s.page.setInputFiles("#folder-input", join(dir, "cells"));
    await waitSettled(s.page);
    const got = await s.page.evaluate(() =>
      (globalThis as unknown as PageWindow).bloom
        .embeddings()
    );
    assertEquals(Object.keys(got).length, 2);
    let worst = 0;
    for (const [p, v] of Object.entries(got)) {
      const j = rowOf(cli.paths, p);
      worst = Math.max(worst, relErr(v, cli.features.subarray(j * cli.dim, (j + 1) * cli.dim)));
    }
    assert(worst < TOL, `page vs CLI, vit_small: ${worst.toExponential(2)} relative`);
    console.log(
      `  page vs CLI, vit_small at ${size} px: worst ${worst.toExponential(2)} relative`,
    );
    // The page's kNN predictions are eval/knn.ts's on the CLI's embeddings.
    const clf = new KNeighborsClassifier(matrix(cli.features, cli.rows, cli.dim), cli.labels!);
    const want = await clf.predict(matrix(cli.features, cli.rows, cli.dim), 1);
    const snap = await snapshot(s.page);
    assertEquals(snap.method, "kNN, k = 1");
    for (const c of snap.cells) {
      assertEquals(c.predicted, String(want[rowOf(cli.paths, c.path)]), `kNN of ${c.path}`);
    }
    assertEquals(s.foreignRequests(), []);
  },
);

pageTest(
  "app in Chromium: every weights format loads; wrong weights, non-images, corrupt images and out of memory are named with the reason; a lost device is survived",
  async (s, dir) => {
    const page = s.page;

    const weights = join(dir, "tiny.pth");
    await writeRandomCheckpoint(weights, TINY, 7);
    const folder = await writeSyntheticImageFolder(join(dir, "cells"), {
      perClass: 3,
      size: 40,
      seed: 5,
      classes: ["lymphocyte", "neutrophil"],
    });
    // Wrong weights: an image, and a file of the wrong format.
    assertEquals(await loadWeights(page, folder.files[0], { size: 28, heads: 2 }), "failed");
    let snap = await snapshot(page);
    assert(
      snap.messages.some((m) =>
        m.kind === "error" && /^[a-z]+_\d+\.png: file header: not a \.pth/.test(m.text)
      ),
      JSON.stringify(snap.messages),
    );
    await Deno.writeTextFile(join(dir, "model.safetensors"), "{}");
    assertEquals(
      await loadWeights(page, join(dir, "model.safetensors"), { size: 28, heads: 2 }),
      "failed",
    );
    snap = await snapshot(page);
    assert(
      snap.messages.some((m) => m.text.startsWith("model.safetensors: ")),
      JSON.stringify(snap.messages),
    );
    assertEquals(await page.getAttribute("body", "data-model"), "failed");

    // Every format the readers take: DinoBloom's {"teacher": …} .pth, timm-named safetensors,
    // bloom's own (train's backbone.* safetensors), DINOv2's hub .pth last (used below).
    const sd = randomVitWeights(TINY, 7, 0.05);
    const prefixed = Object.fromEntries(Object.entries(sd).map(([k, v]) => [`backbone.${k}`, v]));
    await writePth(join(dir, "dinobloom.pth"), { teacher: prefixed });
    await writeSafetensors(join(dir, "timm.safetensors"), sd);
    await writeSafetensors(join(dir, "teacher_final.safetensors"), prefixed);
    const params = vitParamSpecs(TINY).reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
    for (
      const [file, layout] of [
        ["dinobloom.pth", "dinobloom"],
        ["timm.safetensors", "timm"],
        ["teacher_final.safetensors", "bloom"],
        ["tiny.pth", "dinov2-hub"],
      ]
    ) {
      assertEquals(
        await loadWeights(page, join(dir, file), { size: 28, heads: 2, batch: 1 }),
        "loaded",
        `${file}: ${JSON.stringify((await snapshot(page)).messages.at(-1))}`,
      );
      const m = (await snapshot(page)).model!;
      assertEquals([m.file, m.layout, m.arch, m.params], [file, layout, "custom", params]);
      const info = await page.textContent("#model-info");
      assert(info!.startsWith(`${file}: custom (${layout} layout) · ${params} parameters`), info!);
    }
    // Dropped single files (a drop without folders): a text file, an empty and a corrupt "PNG".
    const good = await Deno.readFile(folder.files[0]);
    await page.evaluate(async (png) => {
      const w = globalThis as unknown as PageWindow;
      const bytes = new Uint8Array(png);
      const dt = new w.DataTransfer();
      dt.items.add(new File(["some notes"], "notes.txt"));
      dt.items.add(new File([], "empty.png"));
      dt.items.add(new File([bytes.slice(0, 60)], "broken.png"));
      dt.items.add(new File([bytes], "fine.png"));
      w.document.getElementById("cells-drop")!.dispatchEvent(
        new w.DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }),
      );
      await new Promise((r) => setTimeout(r, 100));
    }, [...good]);
    await waitSettled(page);
    snap = await snapshot(page);
    const text = snap.messages.map((m) => m.text).join("\n");
    assert(/notes\.txt: skipped, not an image \(a \.txt file\)/.test(text), text);
    assert(/empty\.png: empty file/.test(text), text);
    assert(/broken\.png: not an image, or a corrupt one/.test(text), text);
    assertEquals(snap.cells.find((c) => c.path === "fine.png")?.embedded, true);
    assertEquals(snap.cells.find((c) => c.path === "fine.png")?.sample, "single images");

    // The device is lost (a driver reset): the next job fails, the engine restarts with the
    // weights and finishes; what was embedded before stays as it was.
    const embeddings = () =>
      page.evaluate(() =>
        (globalThis as unknown as PageWindow).bloom
          .embeddings()
      );
    const before = await embeddings();
    await page.evaluate(() => (globalThis as unknown as PageWindow).bloom.loseDevice());
    await page.setInputFiles("#folder-input", join(dir, "cells"));
    await waitSettled(page);
    snap = await snapshot(page);
    const after = await embeddings();
    const folderCells = snap.cells.filter((c) => c.path.startsWith("cells/"));
    assertEquals(folderCells.length, 6);
    assert(folderCells.every((c) => c.embedded), JSON.stringify(folderCells));
    for (const [p, v] of Object.entries(before)) assertEquals(after[p], v, `${p} was recomputed`);
    const all = snap.messages.map((m) => m.text).join("\n");
    assert(/GPU device lost/.test(all) && /restarting the GPU engine/.test(all), all);
    // A differential count per sample: the loose images and the folder, each summing to 100 %.
    for (const sample of ["single images", "cells"]) {
      const row = page.locator(`#differential tr[data-sample="${sample}"] td[data-class]`);
      const pct = (await row.allTextContents()).map((t) => parseFloat(t.replace("–", "0")));
      const n = snap.cells.filter((c) => c.sample === sample && c.predicted !== null).length;
      assert(n > 0 && Math.abs(pct.reduce((a, b) => a + b, 0) - 100) < 0.2, `${sample}: ${pct}`);
    }

    // Weights that cannot be used: named, and the page goes on with the model it had.
    const kept = await embeddings();
    assertEquals(
      await loadWeights(page, join(dir, "model.safetensors"), { size: 28, heads: 2 }),
      "failed",
    );
    snap = await snapshot(page);
    assertEquals(snap.model?.file, "tiny.pth");
    assertEquals(
      snap.messages.at(-1)?.text,
      "model.safetensors is not in use; the page goes on with tiny.pth",
    );
    assertEquals(await embeddings(), kept);

    // Out of GPU memory (simulated: SwiftShader has all of the host's memory). A batch of 8 on a
    // device that takes 2 cells at once goes through in halves; the results are the same.
    /** Writes a folder of synthetic cells of two types (40 px) and drops it on the page. */
    const dropFolder = async (name: string, perClass: number, seed: number) => {
      await writeSyntheticImageFolder(join(dir, name), {
        perClass,
        size: 40,
        seed,
        classes: ["lymphocyte", "neutrophil"],
      });
      await page.setInputFiles("#folder-input", join(dir, name));
    };
    const simulate = (cells: number | null) =>
      page.evaluate((n) => (globalThis as unknown as PageWindow).bloom.simulateMemory(n), cells);
    await page.fill("#batch-size", "8");
    await simulate(2);
    await dropFolder("halved", 3, 5); // the images of cells/, under another folder
    await waitSettled(page);
    const halved = await embeddings();
    for (const p of Object.keys(kept).filter((p) => p.startsWith("cells/"))) {
      const twin = halved[p.replace(/^cells\//, "halved/")];
      assert(twin && relErr(twin, kept[p]) < TOL, `${p} in halves`);
    }
    // One cell is already too much: the cells are named with the reason, the job stops, and
    // nothing computed before is lost.
    await simulate(0);
    await dropFolder("huge", 1, 9);
    await waitSettled(page);
    snap = await snapshot(page);
    const huge = snap.cells.filter((c) => c.path.startsWith("huge/"));
    assert(
      huge.every((c) => /^GPU: .*does not fit this adapter/.test(c.error ?? "")),
      JSON.stringify(huge),
    );
    const oom = snap.messages.map((m) => m.text).find((t) => t.includes("not embedded"));
    assert(
      /^2 cells not embedded \(huge\/\w+\/\w+\.png, huge\/\w+\/\w+\.png\): custom \(\d+ parameters, [\d.]+ KiB of weights\) does not fit this adapter \(.+\) at 28 px: out of GPU memory; use a smaller model or input side/
        .test(oom ?? ""),
      oom,
    );
    assertEquals(Object.keys(await embeddings()).length, Object.keys(halved).length);
    await simulate(null);
    await page.fill("#batch-size", "1");

    // Progress with rate and time left; Cancel stops after the batch in flight; the rest resumes.
    await dropFolder("more", 12, 6);
    // Cancel from inside the page the moment a first cell is in: a click from here can come
    // after a fast machine has embedded all 24.
    const running = await (await page.waitForFunction(
      () => {
        const w = globalThis as unknown as PageWindow;
        const doc = (globalThis as unknown as {
          document: { getElementById(id: string): { click(): void; textContent: string | null } };
        }).document;
        if (!w.bloom.snapshot().cells.some((c) => c.path.startsWith("more/") && c.embedded)) {
          return false;
        }
        const text = doc.getElementById("progress-text").textContent;
        doc.getElementById("cancel").click();
        return text;
      },
      null,
      { polling: 20 },
    )).jsonValue() as string;
    await page.waitForFunction(() =>
      (globalThis as unknown as PageWindow).document.body.dataset.job === "idle"
    );
    assert(/^\d+ \/ 24 cells · [\d.]+ cells\/s · about \d+ s left$/.test(running!), running!);
    const stopped = (await snapshot(page)).cells.filter((c) => c.path.startsWith("more/"));
    const done = stopped.filter((c) => c.embedded).length;
    assert(done > 0 && done < 24, `${done} of 24 embedded before Cancel took effect`);
    assert((await page.textContent("#progress-text"))!.includes(`cancelled, ${24 - done} left`));
    await page.click("#resume");
    await waitSettled(page);
    const resumed = (await snapshot(page)).cells.filter((c) => c.path.startsWith("more/"));
    assert(resumed.every((c) => c.embedded), "Embed remaining left cells out");

    // A model too large for the adapter (simulated, as above) is refused at load, named with its
    // size; the page says when it cannot reload the previous one either.
    await simulate(0);
    assertEquals(
      await loadWeights(page, join(dir, "timm.safetensors"), { size: 28, heads: 2 }),
      "failed",
    );
    const last = (await snapshot(page)).messages.slice(-2).map((m) => m.text);
    assert(
      /^timm\.safetensors: custom \(\d+ parameters, [\d.]+ KiB of weights\) does not fit this adapter \(.+\) at 28 px: out of GPU memory/
        .test(last[0]),
      last[0],
    );
    assert(last[1].startsWith("tiny.pth could not be loaded again: tiny.pth: custom"), last[1]);
    assertEquals(await page.getAttribute("body", "data-engine"), "ready");
    assertEquals(s.foreignRequests(), []);
  },
);

pageTest("app in Chromium: without WebGPU the page says so and what to do", async (s) => {
  assertEquals(await s.page.getAttribute("body", "data-engine"), "no-gpu");
  const text = await s.page.textContent("#adapter");
  assert(/No WebGPU: this browser offers no WebGPU adapter\. Open the page/.test(text!), text!);
  assertEquals(s.foreignRequests(), []);
  // The recorder sees every request of the browser: one to another host (here "localhost",
  // not the page's 127.0.0.1) is caught, even from a second tab and even when it fails.
  const other = await s.context.newPage();
  await other.goto(s.url.replace("127.0.0.1", "localhost") + "dist/none.js").catch(() => {});
  await other.close();
  assertEquals(s.foreignRequests(), [s.url.replace("127.0.0.1", "localhost") + "dist/none.js"]);
}, { adapter: "none" });

Deno.test({
  name: "app bench: the suite times the page against the CLI (tiny model, smoke)",
  ignore: !CHROMIUM,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const suite = makeAppSuite(() => ({
      name: "tiny",
      config: TINY,
      heads: 2,
      perClass: 1,
      imageSide: 40,
      inputSize: 28,
      batch: 5,
    }));
    const rows = await suite.run({
      gpu: await getGpu(),
      quick: true,
      peaks: { fmaGflops: 1, copyGbps: 1 },
    });
    assertEquals(rows.length, 1);
    const r = rows[0];
    assert(Number.isFinite(r.ms) && r.ms > 0 && r.rate! > 0 && r.peak > 0, JSON.stringify(r));
    assertEquals(r.peakName, "deno cli");
    assert(
      Math.abs(r.ratio - r.rate! / r.peak) < 1e-12 && /Chromium/.test(r.note!),
      JSON.stringify(r),
    );
  },
});
