/**
 * What tests compare against and build from, shared by every test file: the
 * golden fixtures the Python scripts write (tests/fixtures/, arrays as
 * base64 little-endian bytes, special floats as strings, bytes as hex) and
 * the tiny ViT the GPU tests run. How tests run (the GPU wrapper, the seeded
 * Rng, finite differences, the Python oracles) is in helpers.ts. The tiny
 * ViT's checkpoints and training configs are here too.
 */
import { writePth } from "../data/pth_writer.ts";
import { randomVitWeights } from "../graph/init.ts";
import type { VitConfig } from "../graph/vit.ts";
import { dinobloomConfig, type TrainConfig } from "../pipelines/train/config.ts";

/** Parses `tests/fixtures/NAME` (a path under it, e.g. "eval/knn.json") as JSON. */
// deno-lint-ignore no-explicit-any
export async function readFixture(name: string): Promise<any> {
  return JSON.parse(await Deno.readTextFile(new URL(`./fixtures/${name}`, import.meta.url)));
}

/** The checkpoint and array fixtures (`scripts/fixtures/checkpoints.py`), a folder path ending in "/". */
export const CHECKPOINT_FIXTURES = new URL("./fixtures/checkpoints/", import.meta.url).pathname;

/** `CHECKPOINT_FIXTURES`'s `expected.json`: what each fixture file holds. */
// deno-lint-ignore no-explicit-any
export function checkpointFixturesExpected(): any {
  return JSON.parse(Deno.readTextFileSync(CHECKPOINT_FIXTURES + "expected.json"));
}

/** Decodes a base64 fixture array to bytes. */
export function bytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const u = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
  return u;
}

/** Decodes a base64 fixture array of little-endian f32. */
export function f32(b64: string): Float32Array {
  return new Float32Array(bytes(b64).buffer);
}

/** Bytes as lowercase hex, as the fixtures spell raw tensor bytes. */
export function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** A fixture number: JSON has no NaN or infinities, so they are written "nan", "inf", "-inf". */
export function num(v: number | string): number {
  return v === "nan" ? NaN : v === "inf" ? Infinity : v === "-inf" ? -Infinity : (v as number);
}

/**
 * A tiny ViT for GPU tests (llvmpipe is slow): width 32, one block of two
 * heads, 14 px patches, a 2×2 position grid, no registers. `over` changes
 * any field.
 */
export function tinyVit(over: Partial<VitConfig> = {}): VitConfig {
  return {
    arch: "custom",
    dim: 32,
    depth: 1,
    heads: 2,
    mlpHidden: 64,
    ffn: "mlp",
    patch: 14,
    registers: 0,
    posGrid: 2,
    eps: 1e-6,
    posInterp: "runtime",
    ...over,
  };
}

/** The tiny ViT of the embedding tests' checkpoints: width 16 (load with `heads: 2`). */
export const TINY_EMBED_VIT: VitConfig = tinyVit({ dim: 16, mlpHidden: 32 });

/**
 * Writes a tiny random DINOv2-hub-layout `.pth`: `vit`'s parameters (default
 * `TINY_EMBED_VIT`) freshly initialised from `seed` (default 3), with
 * ±`jitter`/2 of noise (default 0.1) so every cell gets its own embedding
 * (graph/init.ts `randomVitWeights`).
 */
export async function writeTinyCheckpoint(
  path: string,
  opts: { vit?: VitConfig; seed?: number; jitter?: number } = {},
): Promise<void> {
  await writePth(
    path,
    randomVitWeights(opts.vit ?? TINY_EMBED_VIT, opts.seed ?? 3, opts.jitter ?? 0.1),
  );
}

/**
 * A training config that steps in a fraction of a second on llvmpipe: the
 * tiny ViT (position grid 4, resized to the crop) with 64 prototypes, 56 px
 * crops, `batch` images per step; `over` changes any field, `vit` the ViT's.
 */
export function tinyTrainConfig(
  batch: number,
  over: Partial<TrainConfig> = {},
  vit: Partial<VitConfig> = {},
): TrainConfig {
  return dinobloomConfig(tinyVit({ posGrid: 4, posInterp: "size", ...vit }), batch, {
    head: { inDim: 32, hidden: 32, bottleneck: 16, prototypes: 64 },
    imageSize: 56,
    ...over,
  });
}
