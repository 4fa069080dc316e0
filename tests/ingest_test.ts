/**
 * `deno task ingest`: every layout on small generated trees and on the shared
 * BCCD data (when present), shards read back by Python's tarfile, split
 * equality with scikit-learn, determinism, resume after a killed run, every
 * bad-input case, flag errors, and the progress display and ordered map the
 * pipeline is built on.
 */
import sharp from "npm:sharp@0.34.5";
import { join } from "node:path";
import { writeTextAtomic } from "../data/file.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { Rng, sharedData, withTemp } from "./helpers.ts";
import { decodeCell } from "../pipelines/dataset/images.ts";
import {
  INGEST_LIMITS,
  IngestOptionError,
  type IngestOptions,
  resolveOptions,
  runIngest,
} from "../pipelines/ingest/run.ts";
import { type Manifest, readManifest } from "../pipelines/dataset/manifest.ts";
import { orderedMap } from "../pipelines/dataset/ordered.ts";
import { keyFromPath, LayoutError } from "../pipelines/dataset/sample.ts";
import { parseCsv } from "../pipelines/dataset/csv.ts";
import { parseVocXml, VOC_CROP } from "../pipelines/dataset/voc.ts";
import { readShardSamples } from "../pipelines/dataset/webdataset.ts";
import { formatDuration, Progress } from "../pipelines/progress.ts";
import { INGEST, ingestOptions } from "../cli/ingest.ts";
import { parseFlags } from "../cli/args.ts";
import { InputError } from "../data/errors.ts";

const dec = new TextDecoder();
const CLI = new URL("../cli/ingest.ts", import.meta.url).pathname;

// ------------------------------------------------------------------ fixtures

type Kind = "jpg" | "png" | "tif8" | "tif16" | "gray" | "rgba" | "palette" | "cmyk" | "bmp";

/** A w×h image of `kind` made with sharp from seeded pixels (BMP written by hand). */
async function makeImage(kind: Kind, w: number, h: number, seed: number): Promise<Uint8Array> {
  const r = new Rng(seed);
  const base = r.int(200);
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0; i < rgb.length; i++) rgb[i] = (base + ((i * 7) % 50) + r.int(6)) & 255;
  const s = (d: Uint8Array | Uint16Array, ch: 1 | 2 | 3 | 4) =>
    sharp(d, { raw: { width: w, height: h, channels: ch } });
  let out: Buffer;
  switch (kind) {
    case "jpg":
      out = await s(rgb, 3).jpeg({ quality: 90 }).toBuffer();
      break;
    case "png":
      out = await s(rgb, 3).png().toBuffer();
      break;
    case "tif8":
      out = await s(rgb, 3).tiff({ compression: "deflate" }).toBuffer();
      break;
    case "tif16":
      out = await s(rgb.reduce((a, v, i) => (a[i] = v * 257, a), new Uint16Array(rgb.length)), 3)
        .toColourspace("rgb16").tiff({ compression: "lzw" }).toBuffer();
      break;
    case "gray":
      out = await s(rgb.subarray(0, w * h), 1).toColourspace("b-w").png().toBuffer();
      break;
    case "rgba": {
      const a = new Uint8Array(w * h * 4);
      for (let i = 0; i < w * h; i++) {
        a.set([rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2], i % 255], 4 * i);
      }
      out = await s(a, 4).png().toBuffer();
      break;
    }
    case "palette":
      out = await s(rgb, 3).png({ palette: true, colours: 16 }).toBuffer();
      break;
    case "cmyk":
      out = await s(rgb, 3).toColourspace("cmyk").jpeg().toBuffer();
      break;
    case "bmp":
      return bmp24(rgb, w, h);
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** A 24-bit bottom-up BMP. */
function bmp24(rgb: Uint8Array, w: number, h: number): Uint8Array {
  const stride = Math.ceil((3 * w) / 4) * 4;
  const f = new Uint8Array(54 + stride * h);
  const v = new DataView(f.buffer);
  f.set([0x42, 0x4d]);
  v.setUint32(2, f.length, true);
  v.setUint32(10, 54, true);
  v.setUint32(14, 40, true);
  v.setInt32(18, w, true);
  v.setInt32(22, h, true);
  v.setUint16(26, 1, true);
  v.setUint16(28, 24, true);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const p = (y * w + x) * 3;
      const q = 54 + (h - 1 - y) * stride + 3 * x;
      f[q] = rgb[p + 2];
      f[q + 1] = rgb[p + 1];
      f[q + 2] = rgb[p];
    }
  }
  return f;
}

/** Writes files (path → bytes or text) under `root`, creating folders. */
async function writeTree(root: string, files: Record<string, Uint8Array | string>): Promise<void> {
  for (const [rel, data] of Object.entries(files)) {
    const p = join(root, rel);
    await Deno.mkdir(join(p, ".."), { recursive: true });
    if (typeof data === "string") await Deno.writeTextFile(p, data);
    else await Deno.writeFile(p, data);
  }
}

async function readErrors(out: string): Promise<{ path: string; reason: string }[]> {
  const text = await Deno.readTextFile(join(out, "errors.jsonl"));
  return text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

/** All samples of a manifest's shards, read back with our own reader. */
async function readAll(out: string, m: Manifest) {
  const samples = [];
  for (const s of m.shards) {
    for await (const x of readShardSamples(join(out, s.name))) {
      samples.push({
        key: x.key,
        exts: [...x.files.keys()],
        cls: x.files.has("cls") ? Number(dec.decode(x.files.get("cls")!)) : null,
        json: JSON.parse(dec.decode(x.files.get("json")!)),
        image: x.files.get(m.imageExt)!,
        shard: s.name,
      });
    }
  }
  return samples;
}

const quiet = { progress: false as const };

async function ingest(o: Partial<IngestOptions> & Pick<IngestOptions, "input" | "layout" | "out">) {
  return await runIngest({ size: 16, workers: 2, minSize: 4, ...o }, quiet);
}

/** Runs the CLI as a subprocess. */
async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "--quiet", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * Runs a script with Debian's python3; null (after a warning) when python3 or
 * one of the modules it imports is missing, so oracle checks skip cleanly
 * (one interpreter start per check: imports like sklearn take seconds).
 */
async function runPython(script: string, args: string[] = []): Promise<string | null> {
  let r;
  try {
    r = await new Deno.Command("/usr/bin/python3", { args: ["-c", script, ...args] }).output();
  } catch {
    console.warn("skipping a Python oracle check: /usr/bin/python3 is missing");
    return null;
  }
  const err = dec.decode(r.stderr);
  if (!r.success && /ModuleNotFoundError/.test(err)) {
    console.warn(`skipping a Python oracle check: ${err.trim().split("\n").pop()}`);
    return null;
  }
  assert(r.success, err);
  return dec.decode(r.stdout);
}

/**
 * Python's view of the shards: tarfile reads them; members grouped into
 * samples by WebDataset's rule (key = name up to the first dot of the base
 * name, consecutive members); images decoded by Pillow; sha256 recomputed.
 */
async function pythonView(out: string): Promise<
  {
    shards: Record<string, string>;
    samples: { key: string; exts: string[]; size: number[]; mode: string; cls: number | null }[];
  } | null
> {
  const script = `
import tarfile, hashlib, json, re, sys, io, os
from PIL import Image
d = sys.argv[1]
m = json.load(open(os.path.join(d, "manifest.json")))
res = {"shards": {}, "samples": []}
for s in m["shards"]:
    p = os.path.join(d, s["name"])
    res["shards"][s["name"]] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    cur = None
    with tarfile.open(p) as t:
        for mem in t:
            k, ext = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", mem.name).groups()
            data = t.extractfile(mem).read()
            if cur is None or cur["key"] != k:
                cur = {"key": k, "exts": [], "size": None, "mode": None, "cls": None}
                res["samples"].append(cur)
            cur["exts"].append(ext)
            if ext in ("png", "jpg"):
                im = Image.open(io.BytesIO(data)); im.load()
                cur["size"] = list(im.size); cur["mode"] = im.mode
            if ext == "cls":
                cur["cls"] = int(data.decode())
print(json.dumps(res))`;
  const text = await runPython(script, [out]);
  return text === null ? null : JSON.parse(text);
}

// --------------------------------------------------------------- the layouts

Deno.test("imagefolder: every format, sorted classes, shards Python's tarfile reads", async () => {
  await withTemp(async (dir) => {
    const root = join(dir, "src");
    const kinds: [string, Kind][] = [
      ["Alpha/a.jpg", "jpg"],
      ["Alpha/b.png", "png"],
      ["Alpha/c16.tif", "tif16"],
      ["Alpha/sub/deep/d_gray.png", "gray"],
      ["Alpha/e_rgba.PNG", "rgba"],
      ["Beta/f_pal.png", "palette"],
      ["Beta/g cmyk.jpg", "cmyk"],
      ["Beta/h.bmp", "bmp"],
      ["Beta/i.tiff", "tif8"],
    ];
    const files: Record<string, Uint8Array | string> = {};
    for (const [i, [p, k]] of kinds.entries()) files[p] = await makeImage(k, 20 + i, 18, i);
    files["stray.jpg"] = await makeImage("jpg", 20, 20, 99); // no class folder
    files["Beta/notes.txt"] = "not picked up: not an image extension";
    await writeTree(root, files);
    await Deno.mkdir(join(root, "Gamma")); // empty class folder still counts as a class
    const out = join(dir, "out");
    const s = await ingest({ input: root, layout: "imagefolder", out, shardSize: 4 });
    const m = await readManifest(out);
    assertEquals(m.classes, ["Alpha", "Beta", "Gamma"]);
    assertEquals([s.samples, s.errors, m.errors], [9, 1, 1]);
    assertEquals(m.counts.all.samples, 9);
    assertEquals(m.counts.all.perClass, { Alpha: 5, Beta: 4 });
    assertEquals(m.shards.map((x) => [x.name, x.samples]), [
      ["all-000000.tar", 4],
      ["all-000001.tar", 4],
      ["all-000002.tar", 1],
    ]);
    const errors = await readErrors(out);
    assertEquals(errors.length, 1);
    assert(errors[0].path.endsWith("stray.jpg") && /outside a class folder/.test(errors[0].reason));

    const samples = await readAll(out, m);
    assertEquals(samples.map((x) => x.key), m.splits.all);
    assertEquals(
      new Set(samples.map((x) => x.key)),
      new Set(kinds.map(([p]) => keyFromPath(p))),
    );
    for (const x of samples) {
      assertEquals(x.exts, ["png", "cls", "json"]);
      assertEquals(x.cls, m.classes.indexOf(x.json.label));
      const src = kinds.find(([p]) => keyFromPath(p) === x.key)!;
      assertEquals(x.json.source, src[0]);
      assertEquals([x.json.width, x.json.height], [20 + kinds.indexOf(src), 18]);
      const meta = await sharp(x.image).metadata();
      assertEquals([meta.width, meta.height, meta.channels, meta.format], [16, 16, 3, "png"]);
    }
    assertEquals(samples.find((x) => x.key === "Beta__h")!.json.source_format, "bmp");
    assertEquals(samples.find((x) => x.key === "Alpha__c16")!.json.source_bits, 16);
    assertEquals(samples.find((x) => x.key === "Beta__i")!.json.source_format, "tiff");
    assertEquals(samples.find((x) => x.key === "Beta__g_cmyk")!.json.source_space, "cmyk");

    // Shard hashes and sizes in the manifest are the files'.
    for (const sh of m.shards) {
      const b = await Deno.readFile(join(out, sh.name));
      const h = new Uint8Array(await crypto.subtle.digest("SHA-256", b));
      assertEquals([...h].map((v) => v.toString(16).padStart(2, "0")).join(""), sh.sha256);
      assertEquals(b.length, sh.bytes);
    }
    const py = await pythonView(out);
    if (py) {
      for (const sh of m.shards) assertEquals(py.shards[sh.name], sh.sha256);
      assertEquals(py.samples.map((x) => x.key), m.splits.all);
      for (const x of py.samples) {
        assertEquals([x.exts, x.size, x.mode], [["png", "cls", "json"], [16, 16], "RGB"]);
      }
    }
  });
});

Deno.test("csv: 'Image Path,Label' relative to the CSV, quoted fields, --classes order", async () => {
  await withTemp(async (dir) => {
    await writeTree(dir, {
      "imgs/BLA/0-1000/a.jpg": await makeImage("jpg", 20, 20, 1),
      "imgs/EOS/b,comma.png": await makeImage("png", 20, 20, 2),
      "imgs/EOS/c.png": await makeImage("png", 20, 20, 3),
      "imgs/LYT/d.png": await makeImage("png", 20, 20, 4),
      "list.csv": "\ufeffImage Path,Label,Extra\r\n" +
        "imgs/BLA/0-1000/a.jpg,BLA,x\r\n" +
        '"imgs/EOS/b,comma.png",EOS,"y ""quoted"""\r\n' +
        "imgs/EOS/c.png,EOS,\r\n" +
        "imgs/LYT/d.png,LYT,\r\n" +
        "imgs/EOS/c.png,EOS,duplicate row\r\n" +
        ",EOS,no path\r\n" +
        "imgs/LYT/e.png,,empty label\r\n",
    });
    const out = join(dir, "out");
    await ingest({ input: join(dir, "list.csv"), layout: "csv", out, classes: ["LYT", "EOS"] });
    const m = await readManifest(out);
    assertEquals(m.classes, ["LYT", "EOS"]);
    assertEquals(m.counts.all.perClass, { EOS: 2, LYT: 1 });
    const reasons = (await readErrors(out)).map((e) => e.reason);
    assertEquals(reasons.length, 4, reasons.join("; "));
    assert(reasons.some((r) => r.startsWith("duplicate key 'imgs__EOS__c'")), reasons.join("; "));
    assert(reasons.some((r) => /empty 'Image Path'/.test(r)));
    assert(reasons.some((r) => r === "empty label"));
    assert(reasons.some((r) => /unknown label 'BLA' \(not in --classes LYT,EOS\)/.test(r)));
    const samples = await readAll(out, m);
    const b = samples.find((x) => x.key === "imgs__EOS__b_comma")!;
    assertEquals([b.json.source, b.cls], ["imgs/EOS/b,comma.png", 1]);

    assertEquals(parseCsv('a,"b\nc",d\n1,2'), [["a", "b\nc", "d"], ["1", "2"]]);
    await writeTree(dir, { "bad.csv": "path,class\nx.png,A\n" });
    await assertRejects(
      () => ingest({ input: join(dir, "bad.csv"), layout: "csv", out: join(dir, "o2") }),
      LayoutError,
      "needs columns 'Image Path' and 'Label'",
    );
  });
});

/** A VOC annotation with the given objects. */
function vocXml(file: string, w: number, h: number, objects: [string, number[]][]): string {
  const objs = objects.map(([n, [x0, y0, x1, y1]]) =>
    `<object><name>${n}</name><pose>Unspecified</pose><bndbox><xmin>${x0}</xmin>` +
    `<ymin>${y0}</ymin><xmax>${x1}</xmax><ymax>${y1}</ymax></bndbox></object>`
  ).join("\n");
  return `<annotation><folder>JPEGImages</folder><filename>${file}</filename>` +
    `<size><width>${w}</width><height>${h}</height><depth>3</depth></size>${objs}</annotation>`;
}

Deno.test("voc: square crops centred on the wanted boxes, edge-padded; orphans and bad boxes recorded", async () => {
  await withTemp(async (dir) => {
    const root = join(dir, "voc");
    const img1 = await makeImage("png", 80, 60, 1); // PNG, so crops compare exactly
    await writeTree(root, {
      "JPEGImages/s1.jpg": img1,
      "JPEGImages/s2.jpg": await makeImage("jpg", 80, 60, 2),
      "JPEGImages/lonely.jpg": await makeImage("jpg", 40, 40, 3),
      "Annotations/s1.xml": vocXml("s1.jpg", 80, 60, [
        ["WBC", [10, 10, 40, 30]],
        ["RBC", [0, 0, 20, 20]],
        ["WBC", [70, 50, 80, 60]], // at the corner: the square is padded
        ["", [1, 1, 30, 30]],
        ["WBC", [20, 20, 20, 40]], // degenerate
      ]),
      "Annotations/s2.xml": vocXml("s2.jpg", 80, 60, [["Platelets", [1, 1, 30, 30]]]),
      "Annotations/ghost.xml": vocXml("ghost.jpg", 10, 10, [["WBC", [1, 1, 5, 5]]]),
      "Annotations/broken.xml": "<html>not voc</html>",
    });
    const out = join(dir, "out");
    await ingest({ input: root, layout: "voc", out, margin: 0.1, size: 24 });
    const m = await readManifest(out);
    assertEquals(m.classes, ["WBC"]);
    assertEquals(m.splits.all.sort(), ["s1__box00", "s1__box02"]);
    const reasons = (await readErrors(out)).map((e) => `${e.path.split("/").pop()}: ${e.reason}`);
    assertEquals(reasons.sort(), [
      "broken.xml: bad annotation: not a Pascal-VOC annotation (no <annotation> element)",
      "ghost.xml: orphan annotation: no image JPEGImages/ghost.jpg (or <filename> ghost.jpg)",
      "lonely.jpg: missing annotation file Annotations/lonely.xml",
      "s1.xml#object3: empty label",
      "s1.xml#object4: degenerate box (20,20)-(20,40)",
    ]);
    const samples = await readAll(out, m);
    const a = samples.find((x) => x.key === "s1__box00")!;
    assertEquals(a.json.box, { xmin: 10, ymin: 10, xmax: 40, ymax: 30 });
    // A 30x20 box: a square of side 30 × 1.2 = 36 on its centre (25, 20), never squashed.
    assertEquals(a.json.crop, { left: 7, top: 2, width: 36, height: 36 });
    assertEquals(a.json.padding, undefined);
    assertEquals([a.json.label, a.cls, a.json.source], ["WBC", 0, "JPEGImages/s1.jpg"]);
    // The stored crop is the source crop resized: compare to decoding it directly.
    const direct = await decodeCell(img1, { size: 24, crop: a.json.crop });
    const stored = await sharp(a.image).raw().toBuffer();
    assertEquals(Array.from(stored), Array.from(direct.pixels));
    // At the smear's corner the square leaves the image by a pixel right and below: padded
    // with the edge pixels, so the cell stays centred.
    const corner = samples.find((x) => x.key === "s1__box02")!;
    assertEquals(corner.json.crop, { left: 69, top: 49, width: 12, height: 12 });
    assertEquals(corner.json.padding, { left: 0, top: 0, right: 1, bottom: 1 });
    const src = await sharp(img1).extract({ left: 69, top: 49, width: 11, height: 11 }).raw()
      .toBuffer();
    const rows: number[] = [];
    for (let y = 0; y < 12; y++) {
      for (let x = 0; x < 12; x++) {
        const at = (Math.min(y, 10) * 11 + Math.min(x, 10)) * 3;
        rows.push(src[at], src[at + 1], src[at + 2]);
      }
    }
    const padded = await decodeCell(
      await sharp(Uint8Array.from(rows), {
        raw: { width: 12, height: 12, channels: 3 },
      }).png().toBuffer(),
      { size: 24 },
    );
    assertEquals(Array.from(await sharp(corner.image).raw().toBuffer()), Array.from(padded.pixels));
    assertEquals(m.params.crop, VOC_CROP);

    // --classes picks other boxes, in the given order.
    const out2 = join(dir, "out2");
    await ingest({ input: root, layout: "voc", out: out2, classes: ["RBC", "Platelets"] });
    const m2 = await readManifest(out2);
    assertEquals(m2.classes, ["RBC", "Platelets"]);
    assertEquals(m2.counts.all.perClass, { RBC: 1, Platelets: 1 });
    assertEquals(parseVocXml(vocXml("x.jpg", 1, 2, [["A &amp; B", [1, 2, 3, 4]]])).objects, [
      { name: "A & B", box: { xmin: 1, ymin: 2, xmax: 3, ymax: 4 } },
    ]);
  });
});

Deno.test("mil: patient labels; --split splits patients, stratified, never across splits", async () => {
  await withTemp(async (dir) => {
    const files: Record<string, Uint8Array> = {};
    const patients: [string, string, string, number][] = [];
    let seed = 0;
    for (
      const [split, cls, n] of [["train", "AML", 4], ["train", "CBF", 3], ["test", "AML", 1], [
        "test",
        "CBF",
        1,
      ]] as const
    ) {
      for (let p = 0; p < n; p++) {
        const patient = `${cls}_${split}_${p}`;
        const cells = 2 + (p % 2);
        patients.push([split, cls, patient, cells]);
        for (let c = 0; c < cells; c++) {
          files[`${split}/${cls}/${patient}/cell${c}.png`] = await makeImage("png", 18, 18, seed++);
        }
      }
    }
    files["train/AML/AML_train_0/../stray.png"] = await makeImage("png", 18, 18, 99);
    files["test/CBF/AML_train_1/x.png"] = await makeImage("png", 18, 18, 98); // patient in 2 classes
    const root = join(dir, "mil");
    await writeTree(root, files);
    const out = join(dir, "out");
    await ingest({ input: root, layout: "mil", out });
    const m = await readManifest(out);
    assertEquals(m.classes, ["AML", "CBF"]);
    assertEquals(Object.keys(m.counts).sort(), ["test", "train"]);
    const reasons = (await readErrors(out)).map((e) => e.reason);
    // The stray image, and all 4 cells of the patient filed under two classes.
    assertEquals(reasons.length, 5, reasons.join("; "));
    assert(reasons.some((r) => /not under <split>\/<class>\/<patient>/.test(r)));
    const conflict = "patient 'AML_train_1' appears under classes 'AML' and 'CBF'";
    assertEquals(reasons.filter((r) => r === conflict).length, 4);
    const samples = await readAll(out, m);
    for (const x of samples) {
      const [split, cls, patient] = x.json.source.split("/");
      assertEquals([x.json.patient, x.json.label, x.json.source_split], [patient, cls, split]);
    }

    const out2 = join(dir, "out2");
    await ingest({ input: root, layout: "mil", out: out2, split: 0.5, seed: 3 });
    const m2 = await readManifest(out2);
    const byPatient = new Map<string, Set<string>>();
    for (const x of await readAll(out2, m2)) {
      const set = byPatient.get(x.json.patient) ?? new Set();
      set.add(x.json.split);
      byPatient.set(x.json.patient, set);
    }
    assertEquals(byPatient.size, 8);
    for (const [p, splits] of byPatient) assertEquals(splits.size, 1, `patient ${p} in two splits`);
    // Stratified at patient level: 4 AML and 4 CBF patients (AML_train_1 refused),
    // half of each in train.
    const trainPatients = [...byPatient].filter(([, s]) => s.has("train")).map(([p]) => p);
    assertEquals(trainPatients.filter((p) => p.startsWith("AML")).length, 2);
    assertEquals(trainPatients.filter((p) => p.startsWith("CBF")).length, 2);
  });
});

Deno.test("list: paths relative to the list, comments, absolute paths; no labels", async () => {
  await withTemp(async (dir) => {
    await writeTree(dir, {
      "data/a.png": await makeImage("png", 20, 20, 1),
      "data/sub/b.jpg": await makeImage("jpg", 20, 20, 2),
      "elsewhere/c.png": await makeImage("png", 20, 20, 3),
      "lists/paths.txt":
        `# cells\n../data/a.png\n\n  ../data/sub/b.jpg  \n${dir}/elsewhere/c.png\n` +
        "../data/missing.png\n",
    });
    const out = join(dir, "out");
    await ingest({ input: join(dir, "lists/paths.txt"), layout: "list", out });
    const m = await readManifest(out);
    assertEquals(m.classes, []);
    assertEquals(m.counts.all.samples, 3);
    const samples = await readAll(out, m);
    for (const x of samples) {
      assertEquals(x.exts, ["png", "json"]);
      assertEquals([x.cls, x.json.label], [null, null]);
    }
    // Keys relative to the deepest folder holding every listed path; sources as written.
    assertEquals(
      new Set(samples.map((x) => x.key)),
      new Set(["data__a", "data__sub__b", "elsewhere__c"]),
    );
    assert(samples.some((x) => x.json.source === "../data/sub/b.jpg"));
    const errors = await readErrors(out);
    assertEquals(errors.map((e) => e.reason), ["unreadable: file not found"]);
  });
});

// ------------------------------------------------ splits, order, determinism

Deno.test("--split 0.8 --seed 42 equals scikit-learn; shards deterministic for any --workers", async () => {
  await withTemp(async (dir) => {
    const root = join(dir, "src");
    const files: Record<string, Uint8Array> = {};
    const counts: Record<string, number> = { a: 12, b: 7, c: 5 };
    let seed = 0;
    for (const [cls, n] of Object.entries(counts)) {
      for (let i = 0; i < n; i++) {
        files[`${cls}/img${String(i).padStart(2, "0")}.png`] = await makeImage(
          "png",
          17,
          17,
          seed++,
        );
      }
    }
    await writeTree(root, files);
    const o1 = join(dir, "o1");
    const o2 = join(dir, "o2");
    await ingest({
      input: root,
      layout: "imagefolder",
      out: o1,
      split: 0.8,
      seed: 42,
      shardSize: 5,
      workers: 1,
    });
    await ingest({
      input: root,
      layout: "imagefolder",
      out: o2,
      split: 0.8,
      seed: 42,
      shardSize: 5,
      workers: 3,
    });
    const m1 = await readManifest(o1);
    const m2 = await readManifest(o2);
    assertEquals(m1.shards, m2.shards); // names, counts, bytes and sha256
    assertEquals([m1.counts.train.samples, m1.counts.test.samples], [19, 5]);
    // Each class keeps its share (stratified).
    assertEquals(m1.counts.test.perClass, { a: 3, b: 1, c: 1 });
    // Samples in enumeration order (sorted class folders, sorted files), labels = class index.
    const keys = Object.keys(files).map(keyFromPath);
    const labels = Object.keys(files).map((p) => Object.keys(counts).indexOf(p.split("/")[0]));
    const script = `
import json, sys
from sklearn.model_selection import train_test_split
labels = json.loads(sys.argv[1])
tr, te = train_test_split(list(range(len(labels))), train_size=0.8, stratify=labels, random_state=42)
print(json.dumps([tr, te]))`;
    const text = await runPython(script, [JSON.stringify(labels)]);
    if (text === null) return;
    const [tr, te] = JSON.parse(text) as number[][];
    assertEquals(new Set(m1.splits.train), new Set(tr.map((i) => keys[i])));
    assertEquals(new Set(m1.splits.test), new Set(te.map((i) => keys[i])));
  });
});

Deno.test("resume: a killed run finishes on rerun with the same shards as an uninterrupted one", async () => {
  await withTemp(async (dir) => {
    const root = join(dir, "src");
    const files: Record<string, Uint8Array> = {};
    for (let i = 0; i < 60; i++) files[`c${i % 3}/x${i}.jpg`] = await makeImage("jpg", 160, 150, i);
    await writeTree(root, files);
    const args = (out: string) => [
      "--input",
      root,
      "--layout",
      "imagefolder",
      "--out",
      out,
      "--size",
      "48",
      "--shard-size",
      "3",
      "--workers",
      "1",
      "--split",
      "0.8",
    ];
    // The uninterrupted reference runs in-process with the CLI's defaults
    // (min-size 16): same plan, so same shards, whatever --workers says.
    const full = join(dir, "full");
    const reference = (await runIngest({
      input: root,
      layout: "imagefolder",
      out: full,
      size: 48,
      shardSize: 3,
      workers: 2,
      split: 0.8,
    }, quiet)).manifest;

    const killed = join(dir, "killed");
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CLI, "--quiet", ...args(killed)],
      stdout: "null",
      stderr: "null",
    }).spawn();
    // Kill as soon as the first shard is finished and recorded (its record in
    // .ingest/ comes right after the rename): later shards are unwritten or partial.
    let recorded: string[] = [];
    for (let t = 0; t < 6000 && recorded.length === 0; t++) {
      await new Promise((r) => setTimeout(r, 5));
      try {
        recorded = [...Deno.readDirSync(join(killed, ".ingest"))].map((e) => e.name)
          .filter((n) => n.endsWith(".tar.json"));
      } catch { /* not created yet */ }
    }
    child.kill("SIGKILL");
    await child.status;
    const left = [...Deno.readDirSync(killed)].map((e) => e.name);
    assert(!left.includes("manifest.json"), "the run finished before it could be killed");
    assert(recorded.length > 0, "no shard finished before the timeout");
    assert(left.filter((n) => n.endsWith(".tar")).length < reference.shards.length);

    const rerun = await cli(args(killed));
    assertEquals(rerun.code, 0, rerun.stderr);
    const resumed = Number(rerun.stdout.match(/(\d+) resumed/)![1]);
    assert(resumed >= 1, `rerun resumed no shard: ${rerun.stdout}`);
    const m = await readManifest(killed);
    assertEquals(m.shards, reference.shards);
    assertEquals(m.splits, reference.splits);
    assert(!(await Array.fromAsync(Deno.readDir(killed))).some((e) => e.name.endsWith(".tmp")));

    // A third run redoes nothing; a changed parameter redoes everything.
    const again = await runIngest({
      input: root,
      layout: "imagefolder",
      out: killed,
      size: 48,
      shardSize: 3,
      workers: 2,
      split: 0.8,
    }, quiet);
    assertEquals([again.shardsWritten, again.shardsSkipped], [0, reference.shards.length]);
    assertEquals(again.manifest.shards, reference.shards);
    const other = await runIngest({
      input: root,
      layout: "imagefolder",
      out: killed,
      size: 40,
      shardSize: 3,
      workers: 2,
      split: 0.8,
      minSize: 4,
    }, quiet);
    assertEquals([other.shardsWritten, other.shardsSkipped], [reference.shards.length, 0]);
  });
});

Deno.test("writeTextAtomic (manifests, records): whole file or none, no .tmp left, errors name the file", async () => {
  await withTemp(async (dir) => {
    const path = join(dir, "manifest.json");
    await writeTextAtomic(path, "old\n");
    await writeTextAtomic(path, "new\n");
    assertEquals(await Deno.readTextFile(path), "new\n");
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["manifest.json"]);
    const missing = join(dir, "no-such-folder", "manifest.json");
    await assertRejects(() => writeTextAtomic(missing, "x"), Error, missing);
  });
});

// ----------------------------------------------------------------- bad input

Deno.test("bad inputs are recorded with their reason and never stop the run", async () => {
  await withTemp(async (dir) => {
    const root = join(dir, "src");
    const jpg = await makeImage("jpg", 30, 30, 1);
    await writeTree(root, {
      "A/good1.png": await makeImage("png", 30, 30, 2),
      "A/good2.jpg": jpg,
      "A/zero.jpg": new Uint8Array(0),
      "A/truncated.jpg": jpg.subarray(0, jpg.length >> 1),
      "A/text.png": "this is not a PNG",
      "A/tiny.png": await makeImage("png", 8, 30, 3),
      "A/dup.jpg": await makeImage("jpg", 30, 30, 4),
      "A/dup.png": await makeImage("png", 30, 30, 5),
      "Other/x.png": await makeImage("png", 30, 30, 6),
    });
    await Deno.symlink(join(root, "nowhere.png"), join(root, "A/dangling.png"));
    const out = join(dir, "out");
    const s = await runIngest({
      input: root,
      layout: "imagefolder",
      out,
      size: 16,
      minSize: 16,
      classes: ["A"],
    }, quiet);
    const errors = await readErrors(out);
    const byName = new Map(errors.map((e) => [e.path.split("/").pop(), e.reason]));
    const expect: Record<string, RegExp> = {
      "zero.jpg": /^empty file \(0 bytes\)$/,
      "truncated.jpg": /^corrupt or truncated image/,
      "text.png": /^not an image/,
      "tiny.png": /^image is 8x30 px, smaller than --min-size 16$/,
      "dup.png": /^duplicate key 'A__dup' \(also derived from A\/dup.jpg\)/,
      "x.png": /^unknown label 'Other' \(not in --classes A\)$/,
      "dangling.png": /^unreadable: file not found$/,
    };
    for (const [name, re] of Object.entries(expect)) {
      assert(re.test(byName.get(name) ?? "(none)"), `${name}: ${byName.get(name)} !~ ${re}`);
    }
    assertEquals(errors.length, Object.keys(expect).length);
    assertEquals([s.samples, s.errors, s.inputs], [3, 7, 10]);
    assertEquals((await readManifest(out)).errors, 7);

    // Listed paths that are a directory, or unreadable for lack of permission.
    await Deno.mkdir(join(root, "folder.jpg"));
    const locked = join(root, "A/good1.png");
    const root_ = Deno.uid() === 0; // root reads mode-000 files anyway
    if (!root_) await Deno.chmod(locked, 0o000);
    await writeTree(dir, { "paths.txt": `${root}/folder.jpg\n${locked}\n${root}/A/good2.jpg\n` });
    const out2 = join(dir, "out2");
    await runIngest({ input: join(dir, "paths.txt"), layout: "list", out: out2, size: 16 }, quiet);
    const e2 = await readErrors(out2);
    assertEquals(e2[0].reason, "unreadable: is a directory");
    if (!root_) assertEquals(e2[1].reason, "unreadable: permission denied");
  });
});

Deno.test("CLI: flag errors name the flag (exit 2); every input failing exits 1", async () => {
  // The flag table parses and range-checks (ranges from INGEST_LIMITS); the
  // pipeline's resolveOptions checks the rest. Both throw InputErrors.
  const flagError = (args: string[]) => {
    try {
      const parsed = parseFlags(INGEST, args);
      if (parsed === "help") return "help";
      resolveOptions(ingestOptions(parsed));
      return "no error";
    } catch (e) {
      assert(e instanceof InputError, `${args.join(" ")}: ${e}`);
      return (e as Error).message;
    }
  };
  const ok = ["--input", "x", "--layout", "list", "--out", "o"];
  const cases: [string[], RegExp][] = [
    [["--layout", "imagefolder", "--out", "x"], /^--input is required/],
    [
      ["--input", "x", "--out", "x"],
      /^--layout is required: dataset layout; one of imagefolder, csv, voc, mil, list/,
    ],
    [
      ["--input", "x", "--layout", "coco", "--out", "x"],
      /^--layout must be one of .*, got 'coco'$/,
    ],
    [
      ["--input", "x", "--layout", "imagefoldr", "--out", "x"],
      /got 'imagefoldr'; did you mean 'imagefolder'\?$/,
    ],
    [["--input", "x", "--layout", "list"], /^--out is required/],
    [[...ok, "--size", "abc"], /^--size must be an integer in \[1, 4096\], got 'abc'$/],
    [[...ok, "--quality", "0"], /^--quality must be an integer in \[1, 100\], got '0'$/],
    [[...ok, "--workers", "1.5"], /^--workers must be an integer/],
    [[...ok, "--split", "1.5"], /^--split must be a number in \(0, 1\), got '1.5'$/],
    [[...ok, "--margin=-1"], /^--margin must be a number in \[0, 2\], got '-1'$/],
    [[...ok, "--format", "gif"], /^--format must be one of png, jpg, got 'gif'/],
    [[...ok, "--classes", "A,,B"], /^--classes must be a comma-separated list of non-empty names/],
    [[...ok, "--classes", "A,B,A"], /^--classes lists a class twice/],
    [["--input", "x", "--bogus"], /^unknown flag --bogus \(/],
    [["--input", "x", "--layuot", "list"], /^unknown flag --layuot; did you mean --layout\?/],
    [[...ok, "more"], /^unexpected argument 'more'; pass the dataset with --input/],
  ];
  for (const [args, re] of cases) {
    const msg = flagError(args);
    assert(re.test(msg), `${args.join(" ")}: ${msg}`);
  }
  assertEquals(flagError(ok), "no error");
  // The range the flag table parses with is the one the pipeline checks.
  for (const [flag, lim] of Object.entries(INGEST_LIMITS)) {
    if (!("min" in lim)) continue;
    const outside = [...ok, `--${flag}=${lim.min - 1}`];
    assert(/must be/.test(flagError(outside)), `--${flag} below ${lim.min}`);
    assertEquals(flagError([...ok, `--${flag}=${lim.max}`]), "no error", `--${flag}=${lim.max}`);
    const key = flag.replace(/-(.)/g, (_, c: string) => c.toUpperCase()) as keyof IngestOptions;
    assert(
      /must be/.test(
        assertThrows(() =>
          resolveOptions({ input: "x", layout: "list", out: "o", [key]: lim.max + 1 })
        )
          .message,
      ),
      `resolveOptions ${key} = ${lim.max + 1}`,
    );
  }
  await assertRejects(
    () => runIngest({ input: "x", layout: "list", out: "y", shardSize: 0 }, quiet),
    IngestOptionError,
    "--shard-size must be an integer in [1, 1000000000], got 0",
  );

  // Through the real process: exit codes and messages.
  await withTemp(async (dir) => {
    await writeTree(dir, { "src/A/bad.jpg": "nope", "src/A/empty.png": new Uint8Array(0) });
    const [failing, missing, badNumber] = await Promise.all([
      cli(["--input", join(dir, "src"), "--layout", "imagefolder", "--out", join(dir, "o")]),
      cli(["--input", join(dir, "nope"), "--layout", "imagefolder", "--out", join(dir, "o2")]),
      cli(["--input", "x", "--layout", "list", "--out", "o", "--size", "0"]),
    ]);
    assertEquals(failing.code, 1, failing.stderr);
    assert(/every input failed \(2 errors, 2 inputs\)/.test(failing.stderr), failing.stderr);
    assertEquals((await readErrors(join(dir, "o"))).length, 2);
    assertEquals(missing.code, 2, missing.stderr);
    assert(/--input '.*nope' does not exist/.test(missing.stderr), missing.stderr);
    assertEquals(badNumber.code, 2, badNumber.stderr);
    assertEquals(badNumber.stderr, "error: --size must be an integer in [1, 4096], got '0'\n");
  });
});

// ----------------------------------------------------------------- real data

Deno.test("real data: BCCD crops as imagefolder (sklearn split), labels.csv refused, VOC subset", async () => {
  const shared = sharedData();
  if (!shared) {
    console.warn("skipping: ../shared/data is absent");
    return;
  }
  await withTemp(async (dir) => {
    const crops = join(shared, "bccd-cropped/BCCD_cropped");
    const out = join(dir, "crops");
    const s = await runIngest({
      input: crops,
      layout: "imagefolder",
      out,
      size: 16,
      split: 0.8,
      seed: 42,
      shardSize: 200,
    }, quiet);
    const m = await readManifest(out);
    assertEquals([s.samples, s.errors], [351, 0]);
    assertEquals(m.classes, ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]);
    const total = (c: string) =>
      (m.counts.train.perClass[c] ?? 0) + (m.counts.test.perClass[c] ?? 0);
    assertEquals(m.classes.map(total), [3, 88, 33, 20, 207]);
    assertEquals([m.counts.train.samples, m.counts.test.samples], [280, 71]);

    // labels.csv is ',Image,Category' (image numbers, no paths): not the csv layout.
    await assertRejects(
      () =>
        runIngest({
          input: join(shared, "bccd-cropped/labels.csv"),
          layout: "csv",
          out: join(dir, "c"),
        }, quiet),
      LayoutError,
      "has header ',Image,Category'",
    );

    // A VOC subset (links, not copies, so --follow-links) keeps the test fast.
    const voc = join(shared, "bccd-voc/BCCD");
    const sub = join(dir, "voc");
    await Deno.mkdir(join(sub, "Annotations"), { recursive: true });
    await Deno.mkdir(join(sub, "JPEGImages"));
    const names = [...Deno.readDirSync(join(voc, "Annotations"))].map((e) => e.name).sort().slice(
      0,
      12,
    );
    let wbc = 0;
    for (const n of names) {
      const stem = n.replace(/\.xml$/, "");
      await Deno.symlink(join(voc, "Annotations", n), join(sub, "Annotations", n));
      await Deno.symlink(
        join(voc, "JPEGImages", `${stem}.jpg`),
        join(sub, "JPEGImages", `${stem}.jpg`),
      );
      wbc += parseVocXml(await Deno.readTextFile(join(voc, "Annotations", n))).objects
        .filter((o) => o.name === "WBC").length;
    }
    const vout = join(dir, "vout");
    const linked = { input: sub, layout: "voc" as const, size: 32 };
    const refused = await runIngest({ ...linked, out: join(dir, "refused") }, quiet);
    assertEquals([refused.samples, refused.errors], [0, 2 * names.length]);
    const v = await runIngest({ ...linked, out: vout, followLinks: true }, quiet);
    assertEquals([v.samples, v.errors], [wbc, 0]);
    const vm = await readManifest(vout);
    for (const x of await readAll(vout, vm)) {
      assertEquals([x.json.label, x.json.width, x.json.height], ["WBC", 640, 480]);
      // Square crops; where one leaves the smear, its padding is exactly the part outside.
      const c = x.json.crop;
      const p = x.json.padding ?? { left: 0, top: 0, right: 0, bottom: 0 };
      assertEquals(c.width, c.height);
      assertEquals(
        [p.left, p.top, p.right, p.bottom],
        [-c.left, -c.top, c.left + c.width - 640, c.top + c.height - 480].map((d) =>
          Math.max(0, d)
        ),
      );
    }
  });
});

// ------------------------------------------------------- building blocks

Deno.test("orderedMap: input order, bounded concurrency and window, errors at their turn", async () => {
  const r = new Rng(4);
  const delays = Array.from({ length: 40 }, () => r.int(8));
  let running = 0;
  let maxRunning = 0;
  let maxHeld = 0;
  const out: number[] = [];
  for await (
    const v of orderedMap(delays, async (d, i) => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((res) => setTimeout(res, d));
      running--;
      return i;
    }, { concurrency: 3, window: 5, onHeld: (n) => (maxHeld = Math.max(maxHeld, n)) })
  ) {
    out.push(v);
    await new Promise((res) => setTimeout(res, 2)); // a slow consumer
  }
  assertEquals(out, delays.map((_, i) => i));
  assertEquals(maxRunning, 3);
  assert(maxHeld <= 5, `window exceeded: ${maxHeld}`);
  await assertRejects(
    async () => {
      for await (
        const _ of orderedMap(
          [1, 2, 3],
          (x) => x === 2 ? Promise.reject(new Error("boom")) : Promise.resolve(x),
          { concurrency: 2 },
        )
      ) {
        // consume
      }
    },
    Error,
    "boom",
  );
});

Deno.test("progress: items resumed from an earlier run count towards the total, not the rate", () => {
  let t = 0;
  const p = new Progress(100, { unit: "images", label: "ingest", now: () => t, silent: true });
  t = 1000;
  p.resumed(60, "resumed 3 shards");
  // A fully resumed run printed 200000 images/s (or 0.0): no rate until this run does one.
  assertEquals(p.line(), "ingest:  60/100 images (60.0%)  resumed 3 shards");
  t = 2000;
  p.tick(20);
  assertEquals(p.line(), "ingest:  80/100 images (80.0%)  10.0 images/s  ETA 2s  resumed 3 shards");

  // In a log, the final line is not the last periodic line again.
  const log: string[] = [];
  const q = new Progress(4, {
    now: () => t,
    sink: { write: (s) => log.push(s), isTerminal: false },
  });
  t = 4000;
  q.tick(4);
  q.done();
  assertEquals(log, ["4/4 items (100.0%)  2.0 items/s  ETA 0s\n"]);
});

Deno.test("progress: count/total, rate and ETA; one redrawn line on a TTY, periodic lines otherwise", () => {
  let t = 0;
  const tty: string[] = [];
  const p = new Progress(100, {
    unit: "images",
    label: "ingest",
    now: () => t,
    sink: { write: (s) => tty.push(s), isTerminal: true },
  });
  t = 1000;
  p.tick(10);
  assertEquals(p.line(), "ingest:  10/100 images (10.0%)  10.0 images/s  ETA 9s");
  t = 1050;
  p.tick(1); // within 100 ms of the last redraw: not drawn
  t = 2000;
  p.tick(9);
  p.done();
  assertEquals(tty.length, 4); // 3 redraws + the final newline
  assert(tty.slice(0, 3).every((s) => s.startsWith("\r") && s.endsWith("\x1b[K")));
  assertEquals(tty[3], "\n");

  t = 0;
  const log: string[] = [];
  const q = new Progress(0, {
    now: () => t,
    intervalMs: 1000,
    sink: { write: (s) => log.push(s), isTerminal: false },
  });
  for (let i = 0; i < 30; i++) {
    t += 100;
    q.tick();
  }
  q.done();
  assert(log.every((l) => l.endsWith("\n") && !l.includes("\r")));
  assertEquals(log.length, 4); // at 0.1 s, 1.1 s, 2.1 s, and the final line
  assertEquals(log[3], "30 items  10.0 items/s\n");
  assertEquals([formatDuration(59.4), formatDuration(185), formatDuration(7300)], [
    "59s",
    "3m05s",
    "2h01m",
  ]);
});
