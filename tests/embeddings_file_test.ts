/**
 * Embeddings files: every format round-trips features bit-exactly (csv
 * prints 9 significant digits, which restore any float32), metadata lists
 * survive, streamed block writes equal one-shot writes, files appear
 * atomically and leave no side files, and bad files fail with errors that
 * name the file and the field.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { hasPython, Rng } from "./helpers.ts";
import {
  createEmbeddingsWriter,
  type EmbeddingsData,
  EmbeddingsFileError,
  readEmbeddings,
  requireLabels,
  requirePatients,
  writeEmbeddings,
} from "../data/embeddings_file.ts";
import { openSafetensors, writeSafetensors } from "../data/safetensors.ts";
import { writeNpy } from "../data/npy.ts";

function sample(rows: number, dim: number, seed = 1): EmbeddingsData {
  const rng = new Rng(seed);
  const features = rng.normals(rows * dim, 3);
  features[0] = 1e-30; // tiny and huge values must survive csv too
  features[1] = -3.4e38;
  return {
    features,
    dim,
    paths: Array.from({ length: rows }, (_, i) => `cls${i % 3}/img "${i}", v2.png`),
    labels: Array.from({ length: rows }, (_, i) => ["blast", "lymphocyte", "neutrophil"][i % 3]),
    patients: Array.from({ length: rows }, (_, i) => `P${Math.floor(i / 4)}`),
    meta: { arch: "vit_small", weights: "DinoBloom-S.pth", pool: "cls" },
  };
}

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

Deno.test("embeddings: safetensors, npy and csv round-trip features and metadata", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-emb-" });
  try {
    const data = sample(10, 7);
    for (const ext of ["safetensors", "npy", "csv"]) {
      const path = `${dir}/e.${ext}`;
      await writeEmbeddings(path, data);
      const e = await readEmbeddings(path);
      assertEquals(e.format, ext);
      assertEquals([e.rows, e.dim], [10, 7]);
      assertEquals(e.features, data.features, `${ext}: features bit-exact`);
      assertEquals(e.paths, data.paths);
      assertEquals(e.labels, data.labels);
      assertEquals(e.patients, data.patients);
      if (ext !== "csv") {
        assertEquals(e.meta.arch, "vit_small");
        assertEquals(e.meta.pool, "cls");
        assertEquals(e.meta.weights, "DinoBloom-S.pth");
        assert(e.meta["bloom.version"], "bloom.version written");
      }
    }
    // The safetensors layout is the documented one.
    using f = await openSafetensors(`${dir}/e.safetensors`);
    assertEquals(f.tensor("features").dtype, "f32");
    assertEquals(f.tensor("features").shape, [10, 7]);
    assertEquals(JSON.parse(f.metadata.labels), data.labels);
    assertEquals(JSON.parse(f.metadata.paths), data.paths);
    // npy keeps the metadata in a plain-JSON sidecar.
    const side = JSON.parse(await Deno.readTextFile(`${dir}/e.npy.json`));
    assertEquals(side.labels, data.labels);
    assertEquals(side.arch, "vit_small");
    // Only the finished files are left: no .tmp or raw side files.
    assertEquals(await files(dir), ["e.csv", "e.npy", "e.npy.json", "e.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embeddings: streamed blocks equal a one-shot write; patch tokens; no labels", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-emb-" });
  try {
    const rng = new Rng(5);
    const n = 9, d = 4, np = 3;
    const feats = rng.normals(n * d);
    const patch = rng.normals(n * np * d);
    const paths = Array.from({ length: n }, (_, i) => `x/${i}.png`);
    const w = await createEmbeddingsWriter(`${dir}/s.safetensors`, {
      dim: d,
      patchTokens: np,
      meta: { pool: "cls+mean", version: "9.9.9" },
    });
    for (const [a, b] of [[0, 4], [4, 5], [5, 9]]) {
      await w.append({
        features: feats.subarray(a * d, b * d),
        paths: paths.slice(a, b),
        patchTokens: patch.subarray(a * np * d, b * np * d),
      });
    }
    await w.finish();
    const e = await readEmbeddings(`${dir}/s.safetensors`, { patchTokens: true });
    assertEquals(e.features, feats);
    assertEquals(e.patchTokens?.tokens, np);
    assertEquals(e.patchTokens?.data, patch);
    assertEquals(e.labels, null, "unlabelled input: no labels key");
    assertEquals(e.patients, null);
    assertEquals(e.meta["bloom.version"], "9.9.9");
    assertEquals((await readEmbeddings(`${dir}/s.safetensors`)).patchTokens, null, "not asked");

    // npy streaming (unknown row count, header patched at the end).
    const wn = await createEmbeddingsWriter(`${dir}/s.npy`, { dim: d });
    await wn.append({ features: feats.subarray(0, 2 * d), paths: paths.slice(0, 2) });
    await wn.append({ features: feats.subarray(2 * d), paths: paths.slice(2) });
    await wn.finish();
    const en = await readEmbeddings(`${dir}/s.npy`);
    assertEquals(en.features, feats);
    assertEquals(en.paths, paths);
    assertEquals(en.labels, null);
    assertEquals(
      (await files(dir)).sort(),
      ["s.npy", "s.npy.json", "s.safetensors"],
      "side files removed",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embeddings: npy without a sidecar has placeholder paths and no labels", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-emb-" });
  try {
    await writeNpy(`${dir}/raw.npy`, {
      dtype: "f32",
      shape: [3, 2],
      data: Float32Array.of(1, 2, 3, 4, 5, 6),
    });
    const e = await readEmbeddings(`${dir}/raw.npy`);
    assertEquals(e.paths, ["#0", "#1", "#2"]);
    assertEquals(e.labels, null);
    const err = assertThrows(
      () => requireLabels(e, "1-NN"),
      EmbeddingsFileError,
      /raw\.npy: labels: no labels in the metadata, and the 1-NN protocol/,
    );
    assert(/embed a labelled layout/.test(err.message), err.message);
    assertThrows(() => requirePatients(e, "MIL"), EmbeddingsFileError, /--layout mil/);
    // A sidecar with the wrong number of labels is refused, naming the field.
    await Deno.writeTextFile(`${dir}/raw.json`, JSON.stringify({ labels: ["a", "b"] }));
    await assertRejects(
      () => readEmbeddings(`${dir}/raw.npy`),
      EmbeddingsFileError,
      /raw\.npy: labels: has 2 entries for 3 feature rows/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embeddings: bad files and bad writes fail naming the file and field", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-emb-" });
  try {
    await assertRejects(
      () => readEmbeddings(`${dir}/missing.safetensors`),
      EmbeddingsFileError,
      /missing\.safetensors: file: cannot open: no such file/,
    );
    await Deno.writeTextFile(`${dir}/junk.bin`, "hello world, not embeddings");
    await assertRejects(() => readEmbeddings(`${dir}/junk.bin`), EmbeddingsFileError, /junk\.bin/);
    await writeSafetensors(`${dir}/w.safetensors`, {
      weights: { dtype: "f32", shape: [2], data: new Float32Array(2) },
    });
    await assertRejects(
      () => readEmbeddings(`${dir}/w.safetensors`),
      EmbeddingsFileError,
      /w\.safetensors: features: no 'features' tensor \(the file holds weights\)/,
    );
    await writeSafetensors(`${dir}/m.safetensors`, {
      features: { dtype: "f32", shape: [2, 2], data: new Float32Array(4) },
    }, { labels: "not json" });
    await assertRejects(
      () => readEmbeddings(`${dir}/m.safetensors`),
      EmbeddingsFileError,
      /m\.safetensors: labels: metadata is not a JSON list/,
    );
    await Deno.writeTextFile(`${dir}/h.csv`, "file,label,patient,f0\na,b,c,1\n");
    await assertRejects(
      () => readEmbeddings(`${dir}/h.csv`),
      EmbeddingsFileError,
      /h\.csv: header/,
    );
    await Deno.writeTextFile(`${dir}/v.csv`, "path,label,patient,f0,f1\na,b,,1,x\n");
    await assertRejects(
      () => readEmbeddings(`${dir}/v.csv`),
      EmbeddingsFileError,
      /v\.csv: line 2, f1: 'x' is not a finite number/,
    );
    await Deno.writeTextFile(`${dir}/p.csv`, "path,label,patient,f0\na,b,,1\nc,,,2\n");
    await assertRejects(
      () => readEmbeddings(`${dir}/p.csv`),
      EmbeddingsFileError,
      /p\.csv: label: row 1 has an empty label while others have one/,
    );
    // Writers: labels for some blocks only, non-finite values, patch tokens in npy.
    const w = await createEmbeddingsWriter(`${dir}/x.safetensors`, { dim: 2 });
    await w.append({ features: new Float32Array(2), paths: ["a"], labels: ["c1"] });
    await assertRejects(
      () => w.append({ features: new Float32Array(2), paths: ["b"] }),
      EmbeddingsFileError,
      /x\.safetensors: labels: some blocks have labels and some do not/,
    );
    await w.abort();
    await assertRejects(
      () =>
        writeEmbeddings(`${dir}/n.safetensors`, {
          features: Float32Array.of(1, NaN),
          dim: 2,
          paths: ["a"],
        }),
      EmbeddingsFileError,
      /n\.safetensors: features: row 0 holds NaN/,
    );
    await assertRejects(
      () => createEmbeddingsWriter(`${dir}/t.npy`, { dim: 2, patchTokens: 4 }),
      EmbeddingsFileError,
      /t\.npy: patch_tokens: the npy format holds features only/,
    );
    const left = (await files(dir)).filter((f) => /tmp/.test(f));
    assertEquals(left, [], "aborted writes leave no temporary files");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embeddings: a failed write leaves an existing file untouched", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-emb-" });
  try {
    const path = `${dir}/keep.safetensors`;
    await writeEmbeddings(path, sample(4, 3));
    const before = await Deno.readFile(path);
    const w = await createEmbeddingsWriter(path, { dim: 3 });
    await w.append({ features: new Float32Array(3), paths: ["p"] });
    await w.abort();
    assertEquals(await Deno.readFile(path), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "embeddings: numpy loads the npy file and its sidecar",
  ignore: !(await hasPython("numpy")),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-emb-" });
    try {
      const data = sample(6, 5);
      await writeEmbeddings(`${dir}/e.npy`, data);
      const out = await new Deno.Command("/usr/bin/python3", {
        args: [
          "-c",
          "import json,sys,numpy as np; a=np.load(sys.argv[1]); m=json.load(open(sys.argv[1]+'.json'));" +
          "print(json.dumps({'shape':list(a.shape),'dtype':str(a.dtype),'sum':float(a.astype('f8')[:,1:].sum()),'labels':m['labels']}))",
          `${dir}/e.npy`,
        ],
      }).output();
      assert(out.success, new TextDecoder().decode(out.stderr));
      const r = JSON.parse(new TextDecoder().decode(out.stdout));
      assertEquals(r.shape, [6, 5]);
      assertEquals(r.dtype, "float32");
      assertEquals(r.labels, data.labels);
      let s = 0;
      for (let i = 0; i < 6; i++) for (let j = 1; j < 5; j++) s += data.features[i * 5 + j];
      assert(Math.abs(r.sum - s) < 1e-9 * Math.max(1, Math.abs(s)), `${r.sum} vs ${s}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
