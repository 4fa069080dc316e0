/**
 * What the fuzzer runs: one target per reader, each pairing a generator with
 * the reader's entry point, the errors it may throw, and properties a
 * successful read must have. A target's `run` throws the reader's own error,
 * or a FuzzPropertyError when a read "succeeded" with something wrong.
 */
import { resolve } from "node:path";
import { DTYPE_SIZE } from "../../data/dtypes.ts";
import { readEmbeddings } from "../../data/embeddings_file.ts";
import { CheckpointError, InputError } from "../../data/errors.ts";
import { openNpy } from "../../data/npy.ts";
import { unpickle } from "../../data/pickle.ts";
import { openPth } from "../../data/pth.ts";
import type { TensorFile } from "../../data/record.ts";
import { openSafetensors } from "../../data/safetensors.ts";
import { readTar } from "../../data/tar.ts";
import { ZipReader } from "../../data/zip.ts";
import { openCheckpoint } from "../../graph/checkpoint.ts";
import { vitConfigProblems } from "../../graph/vit.ts";
import { BmpError, decodeBmp } from "../../pipelines/dataset/bmp.ts";
import { enumerateCsv } from "../../pipelines/dataset/csv.ts";
import { readManifest } from "../../pipelines/dataset/manifest.ts";
import { SPLIT_ORIGIN_KEY, splitOriginOf } from "../../pipelines/dataset/split_origin.ts";
import { parseVocXml, VocError } from "../../pipelines/dataset/voc.ts";
import { parseConfig } from "../../pipelines/train/config.ts";
import { chunks, memorySource } from "./build.ts";
import {
  generateBmp,
  generateConfig,
  generateCsv,
  generateEmbeddings,
  generateManifest,
  generateNpy,
  generateSafetensors,
  generateTar,
  generateVitCheckpoint,
  generateVoc,
} from "./gen_formats.ts";
import { generatePickle, generatePth } from "./gen_pth.ts";
import { type FuzzRng, mutateMany } from "./mutate.ts";

/** A read that returned, but with something no valid file can give. */
export class FuzzPropertyError extends Error {
  override name = "FuzzPropertyError";
}

function property(ok: boolean, what: string): void {
  if (!ok) throw new FuzzPropertyError(what);
}

/** One reader under fuzzing. */
export interface FuzzTarget {
  name: string;
  /** Extension of saved reproducers. */
  ext: string;
  /** A case's input, from its seeded random source. */
  generate(rng: FuzzRng): Uint8Array;
  /**
   * Reads `bytes` as the file `file` (written under `tmp` first where the
   * reader takes a path); resolves on success, throws the reader's error.
   */
  run(bytes: Uint8Array, file: string, tmp: string): Promise<void>;
  /** Whether `e` is an error this reader may throw (its typed errors). */
  typed(e: unknown): boolean;
  /** Whether a typed error must name the file. */
  namesFile: boolean;
  /** Share of the cases (cheap targets get more). */
  weight: number;
}

/** Reads every tensor of an open file, checking each one's size; closes the file. */
async function readAllTensors(f: TensorFile): Promise<void> {
  try {
    for (const t of f.tensors.values()) {
      const b = await t.bytes();
      property(b.length === t.numel * DTYPE_SIZE[t.dtype], `${t.name}: ${b.length} bytes`);
      const v = await t.f32();
      property(v.length === t.numel, `${t.name}: ${v.length} of ${t.numel} values`);
    }
  } finally {
    f.close();
  }
}

const isCheckpointError = (e: unknown) => e instanceof CheckpointError;
const isInputError = (e: unknown) => e instanceof InputError;

const dec = new TextDecoder();

/** Every target, by name. */
export const TARGETS: readonly FuzzTarget[] = [
  {
    name: "pickle",
    ext: "pkl",
    generate: (rng) => {
      const { pickle } = generatePickle(rng);
      return rng.chance(0.6) ? mutateMany(pickle, rng, 3).bytes : pickle;
    },
    run: (bytes, file) => {
      unpickle(bytes, { file, entry: "archive/data.pkl" });
      return Promise.resolve();
    },
    typed: isCheckpointError,
    namesFile: true,
    weight: 3,
  },
  {
    name: "pth",
    ext: "pth",
    generate: generatePth,
    run: async (bytes, file) => await readAllTensors(await openPth(memorySource(file, bytes))),
    typed: isCheckpointError,
    namesFile: true,
    weight: 4,
  },
  {
    name: "zip",
    ext: "zip",
    generate: generatePth,
    run: async (bytes, file) => {
      using zip = await ZipReader.open(memorySource(file, bytes));
      for (const e of zip.entries) {
        const data = await zip.read(e);
        property(data.length === e.size, `${e.name}: ${data.length} of ${e.size} bytes`);
        if (e.size > 2) await zip.readRange(e, 1, e.size - 2);
      }
    },
    typed: isCheckpointError,
    namesFile: true,
    weight: 1,
  },
  {
    name: "safetensors",
    ext: "safetensors",
    generate: generateSafetensors,
    run: async (bytes, file) =>
      await readAllTensors(await openSafetensors(memorySource(file, bytes))),
    typed: isCheckpointError,
    namesFile: true,
    weight: 2,
  },
  {
    name: "checkpoint",
    ext: "safetensors",
    generate: generateVitCheckpoint,
    run: async (bytes, file) => {
      const ck = await openCheckpoint(memorySource(file, bytes));
      ck.file.close();
      property(vitConfigProblems(ck.config).length === 0, `config ${JSON.stringify(ck.config)}`);
    },
    typed: isCheckpointError,
    namesFile: true,
    weight: 2,
  },
  {
    name: "npy",
    ext: "npy",
    generate: generateNpy,
    run: async (bytes, file) => await readAllTensors(await openNpy(memorySource(file, bytes))),
    typed: isCheckpointError,
    namesFile: true,
    weight: 2,
  },
  {
    name: "embeddings",
    // Content tells safetensors; anything else is read as bloom's csv (by this name).
    ext: "csv",
    generate: generateEmbeddings,
    run: async (bytes, file) => {
      const e = await readEmbeddings(memorySource(file, bytes), { patchTokens: true });
      property(
        e.features.length === e.rows * e.dim,
        `${e.features.length} values, ${e.rows}×${e.dim}`,
      );
      property(e.paths.length === e.rows, `${e.paths.length} paths for ${e.rows} rows`);
    },
    typed: isInputError,
    namesFile: true,
    weight: 1,
  },
  {
    name: "tar",
    ext: "tar",
    generate: generateTar,
    run: async (bytes, file) => {
      let total = 0;
      for await (const f of readTar(chunks(bytes, 777), { name: file, size: bytes.length })) {
        total += f.data.length;
      }
      property(total <= bytes.length, `${total} bytes of members from a ${bytes.length}-byte file`);
    },
    typed: isCheckpointError,
    namesFile: true,
    weight: 2,
  },
  {
    name: "manifest",
    ext: "json",
    generate: generateManifest,
    run: async (bytes, _file, tmp) => {
      const dir = `${tmp}/dataset`;
      await Deno.mkdir(dir, { recursive: true });
      await Deno.writeFile(`${dir}/manifest.json`, bytes);
      const m = await readManifest(dir);
      for (const s of m.shards) {
        const p = resolve(dir, s.name);
        property(
          p.startsWith(resolve(dir) + "/"),
          `shard ${JSON.stringify(s.name)} leaves the dataset`,
        );
      }
      // What embed, train and predict read of an accepted manifest besides its shards.
      const origin = await splitOriginOf(dir);
      property(typeof origin[SPLIT_ORIGIN_KEY] === "string", "no split origin for a manifest");
    },
    typed: isInputError,
    namesFile: false,
    weight: 1,
  },
  {
    name: "bmp",
    ext: "bmp",
    generate: generateBmp,
    run: (bytes) => {
      const img = decodeBmp(bytes);
      property(
        img.data.length === img.width * img.height * img.channels,
        `${img.width}×${img.height}×${img.channels} image with ${img.data.length} bytes`,
      );
      return Promise.resolve();
    },
    typed: (e) => e instanceof BmpError,
    namesFile: false,
    weight: 2,
  },
  {
    name: "voc",
    ext: "xml",
    generate: generateVoc,
    run: (bytes) => {
      parseVocXml(dec.decode(bytes));
      return Promise.resolve();
    },
    // enumerateVoc records a VocError's reason per file.
    typed: (e) => e instanceof VocError,
    namesFile: false,
    weight: 2,
  },
  {
    name: "csv",
    ext: "csv",
    generate: generateCsv,
    run: async (bytes, _file, tmp) => {
      const path = `${tmp}/list.csv`;
      await Deno.writeFile(path, bytes);
      await enumerateCsv(path);
    },
    typed: isInputError,
    namesFile: false,
    weight: 1,
  },
  {
    name: "config",
    ext: "json",
    generate: generateConfig,
    run: (bytes, file) => {
      const c = parseConfig(dec.decode(bytes), file);
      const problems = vitConfigProblems(c.vit);
      property(problems.length === 0, `accepted a config with ${problems.join("; ")}`);
      property(c.imageSize >= c.vit.patch, `accepted imageSize ${c.imageSize}`);
      return Promise.resolve();
    },
    typed: isInputError,
    namesFile: true,
    weight: 2,
  },
];

/** The target called `name`; throws naming the known ones. */
export function target(name: string): FuzzTarget {
  const t = TARGETS.find((x) => x.name === name);
  if (!t) {
    throw new Error(`no fuzz target '${name}' (known: ${TARGETS.map((x) => x.name).join(", ")})`);
  }
  return t;
}
