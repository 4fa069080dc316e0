/**
 * Training configuration: DinoBloom's recipe (RECIPE.md §2) as defaults, the
 * four paper presets (Table 1 batch sizes), a small CPU-friendly demo, and
 * loading a JSON config file with every unknown or mistyped field named.
 */
import { type VitArch, type VitConfig, vitConfig } from "../../graph/vit.ts";
import { type HeadConfig, headConfig } from "../../graph/heads.ts";

/** Everything a run needs besides data and initial weights. */
export interface TrainConfig {
  /** Backbone shapes. */
  vit: VitConfig;
  /** DINO and iBOT head shapes (the same for both). */
  head: HeadConfig;
  /** Images per optimiser step (both crops of each are used). */
  batch: number;
  /** Images per forward/backward pass; the step accumulates batch / microBatch passes. */
  microBatch: number;
  /** Input side in pixels (global crops). */
  imageSize: number;
  /** lr = baseLr · sqrt(batch / 1024). */
  baseLr: number;
  minLr: number;
  epochs: number;
  warmupEpochs: number;
  /** Iterations per "epoch" (500 in the reference config). */
  epochLength: number;
  freezeLastLayerEpochs: number;
  weightDecay: number;
  weightDecayEnd: number;
  momentumTeacher: number;
  finalMomentumTeacher: number;
  teacherTemp: number;
  warmupTeacherTemp: number;
  warmupTeacherTempEpochs: number;
  studentTemp: number;
  /** Gradient-norm clip per student module (backbone, each head). */
  clipGrad: number;
  /** Loss weights: total = dino·DINO + ibot·iBOT + koleo·(KoLeo₁ + KoLeo₂). */
  dinoWeight: number;
  ibotWeight: number;
  koleoWeight: number;
  koleoEps: number;
  /** Fraction of crops that get iBOT masks, and the range of mask ratios. */
  maskProbability: number;
  maskRatio: [number, number];
  layerDecay: number;
  patchEmbedLrMult: number;
  centering: "sinkhorn_knopp" | "centering";
  /**
   * LayerScale γ of freshly initialised blocks (DINOv2: 1e-5). Only matters
   * without --init; larger values let a from-scratch model's tokens differ
   * from the first step (the demo uses 0.1).
   */
  layerScaleInit: number;
  seed: number;
}

/** DinoBloom's recipe around a given backbone. */
export function dinobloomConfig(
  vit: VitConfig,
  batch: number,
  over: Partial<TrainConfig> = {},
): TrainConfig {
  const large = vit.arch === "vit_large" || vit.arch === "vit_giant2";
  return {
    vit,
    head: headConfig(vit.dim, large),
    batch,
    microBatch: batch,
    imageSize: 224,
    baseLr: 2e-4,
    minLr: 1e-6,
    epochs: 20,
    warmupEpochs: 1,
    epochLength: 500,
    freezeLastLayerEpochs: 1,
    weightDecay: 0.04,
    weightDecayEnd: 0.2,
    momentumTeacher: 0.994,
    finalMomentumTeacher: 1,
    teacherTemp: 0.07,
    warmupTeacherTemp: 0.04,
    warmupTeacherTempEpochs: 1,
    studentTemp: 0.1,
    clipGrad: 3,
    // The reference's term counting with local crops removed halves the DINO term (RECIPE.md §2).
    dinoWeight: 0.5,
    ibotWeight: 1,
    koleoWeight: 0.1,
    koleoEps: 1e-4,
    maskProbability: 0.5,
    maskRatio: [0.1, 0.5],
    layerDecay: 1,
    patchEmbedLrMult: 0.2,
    centering: "sinkhorn_knopp",
    layerScaleInit: 1e-5,
    seed: 0,
    ...over,
  };
}

/** The paper's models with Table 1's batch sizes (global, over 8 GPUs in the paper). */
export const PRESETS: Record<string, () => TrainConfig> = {
  "dinobloom-s": () => dinobloomConfig(vitConfig("vit_small"), 1216, { microBatch: 32 }),
  "dinobloom-b": () => dinobloomConfig(vitConfig("vit_base"), 960, { microBatch: 32 }),
  "dinobloom-l": () => dinobloomConfig(vitConfig("vit_large"), 448, { microBatch: 16 }),
  "dinobloom-g": () => dinobloomConfig(vitConfig("vit_giant2"), 208, { microBatch: 8 }),
  /**
   * A small ViT at 84 px with small heads that finetunes on the built-in
   * synthetic cells in a few minutes of CPU time (the no-argument demo). It
   * starts from scratch, so LayerScale starts at 0.1 (not DINOv2's 1e-5) and
   * the teacher follows faster; everything else is the recipe.
   */
  demo: () =>
    dinobloomConfig(
      {
        arch: "custom",
        dim: 64,
        depth: 3,
        heads: 2,
        mlpHidden: 256,
        ffn: "mlp",
        patch: 14,
        registers: 0,
        posGrid: 6,
        eps: 1e-6,
        posInterp: "size",
      },
      32,
      {
        head: { inDim: 64, hidden: 256, bottleneck: 64, prototypes: 64 },
        imageSize: 84,
        microBatch: 32,
        baseLr: 0.01,
        epochs: 4,
        epochLength: 50,
        warmupEpochs: 1,
        freezeLastLayerEpochs: 1,
        momentumTeacher: 0.95,
        finalMomentumTeacher: 0.995,
        layerScaleInit: 0.1,
      },
    ),
};

/** Reads a JSON config: `{"preset": "dinobloom-s", …overrides}` or a full config; names bad fields. */
export function parseConfig(text: string, source: string): TrainConfig {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`${source}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new Error(`${source}: a config is a JSON object`);
  }
  const presetName = (raw.preset as string | undefined) ?? "demo";
  const preset = PRESETS[presetName];
  if (!preset) {
    throw new Error(
      `${source}: unknown preset '${presetName}' (known: ${Object.keys(PRESETS).join(", ")})`,
    );
  }
  const base = preset();
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(raw)) {
    if (k === "preset") continue;
    if (k === "arch") {
      if (
        typeof v !== "string" || !["vit_small", "vit_base", "vit_large", "vit_giant2"].includes(v)
      ) {
        throw new Error(
          `${source}: field 'arch' must be vit_small, vit_base, vit_large or vit_giant2`,
        );
      }
      out.vit = vitConfig(v as VitArch);
      out.head = headConfig((out.vit as VitConfig).dim, v === "vit_large" || v === "vit_giant2");
      continue;
    }
    if (!(k in base)) {
      throw new Error(`${source}: unknown field '${k}' (known: ${Object.keys(base).join(", ")})`);
    }
    const want = base[k as keyof TrainConfig];
    const same = typeof want === "object" ? typeof v === "object" : typeof v === typeof want;
    if (!same) {
      throw new Error(
        `${source}: field '${k}' must be ${Array.isArray(want) ? "an array" : typeof want}, got ${
          JSON.stringify(v)
        }`,
      );
    }
    out[k] = typeof want === "object" && !Array.isArray(want) ? { ...want, ...(v as object) } : v;
  }
  return validateConfig(out as unknown as TrainConfig, source);
}

/** Range checks with messages that name the field. */
export function validateConfig(c: TrainConfig, source = "config"): TrainConfig {
  const bad = (f: string, why: string) => {
    throw new Error(`${source}: ${f} ${why}`);
  };
  if (!Number.isInteger(c.batch) || c.batch < 2) {
    bad("batch", "must be an integer ≥ 2 (KoLeo needs pairs)");
  }
  if (!Number.isInteger(c.microBatch) || c.microBatch < 2 || c.batch % c.microBatch !== 0) {
    bad("microBatch", `must be an integer ≥ 2 that divides batch (${c.batch})`);
  }
  if (c.imageSize % c.vit.patch !== 0) {
    bad("imageSize", `must be a multiple of the patch (${c.vit.patch})`);
  }
  if (!(c.epochs > 0) || !(c.epochLength > 0)) bad("epochs/epochLength", "must be positive");
  if (c.warmupEpochs + 0 > c.epochs) bad("warmupEpochs", "must not exceed epochs");
  if (!(c.studentTemp > 0) || !(c.teacherTemp > 0) || !(c.warmupTeacherTemp > 0)) {
    bad("temperatures", "must be positive");
  }
  if (!(c.maskRatio[0] >= 0 && c.maskRatio[1] <= 1 && c.maskRatio[0] <= c.maskRatio[1])) {
    bad("maskRatio", "must be [lo, hi] with 0 ≤ lo ≤ hi ≤ 1");
  }
  return c;
}
