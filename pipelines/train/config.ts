/**
 * Training configuration: DinoBloom's recipe (docs/recipe.md) as defaults, the
 * four paper presets (Table 1 batch sizes), a small CPU-friendly demo, and
 * loading a JSON config file with every unknown, mistyped or out-of-range
 * field named (`CONFIG_LIMITS`).
 */
import { InputError } from "../../data/errors.ts";
import {
  ARCHS,
  type VitArch,
  type VitConfig,
  vitConfig,
  vitConfigProblems,
} from "../../graph/vit.ts";
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
    // The reference's term counting with local crops removed halves the DINO term (docs/recipe.md).
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

/** A field's allowed values: a range (integers or reals, ends open or closed) or choices. */
type Rule =
  | { int: boolean; min: number; max: number; minOpen?: boolean }
  | { choices: readonly string[] }
  | { pair: { min: number; max: number } }
  | { nested: "vit" | "head" };

/**
 * The allowed values of every field, the one table `validateConfig` checks
 * (the type checker proves it lists every field). Ranges hold the recipe's
 * values with wide margins; they exist so that a typo (imageSize 0, batch
 * 1e9, a negative temperature) is named before anything is built. Fields
 * that depend on others are checked after the table: microBatch divides
 * batch, imageSize is a multiple of the patch, warm-ups fit in the epochs,
 * head.inDim is the backbone's width.
 */
export const CONFIG_LIMITS: { readonly [K in keyof TrainConfig]: Rule } = {
  vit: { nested: "vit" },
  head: { nested: "head" },
  batch: { int: true, min: 2, max: 65536 },
  microBatch: { int: true, min: 2, max: 65536 },
  imageSize: { int: true, min: 1, max: 2048 },
  baseLr: { int: false, min: 0, max: 1, minOpen: true },
  minLr: { int: false, min: 0, max: 1 },
  epochs: { int: true, min: 1, max: 1e6 },
  warmupEpochs: { int: false, min: 0, max: 1e6 },
  epochLength: { int: true, min: 1, max: 1e7 },
  freezeLastLayerEpochs: { int: false, min: 0, max: 1e6 },
  weightDecay: { int: false, min: 0, max: 10 },
  weightDecayEnd: { int: false, min: 0, max: 10 },
  momentumTeacher: { int: false, min: 0, max: 1 },
  finalMomentumTeacher: { int: false, min: 0, max: 1 },
  teacherTemp: { int: false, min: 0, max: 10, minOpen: true },
  warmupTeacherTemp: { int: false, min: 0, max: 10, minOpen: true },
  warmupTeacherTempEpochs: { int: false, min: 0, max: 1e6 },
  studentTemp: { int: false, min: 0, max: 10, minOpen: true },
  clipGrad: { int: false, min: 0, max: 1e6, minOpen: true },
  dinoWeight: { int: false, min: 0, max: 1000 },
  ibotWeight: { int: false, min: 0, max: 1000 },
  koleoWeight: { int: false, min: 0, max: 1000 },
  koleoEps: { int: false, min: 0, max: 1, minOpen: true },
  maskProbability: { int: false, min: 0, max: 1 },
  maskRatio: { pair: { min: 0, max: 1 } },
  layerDecay: { int: false, min: 0, max: 1, minOpen: true },
  patchEmbedLrMult: { int: false, min: 0, max: 100 },
  centering: { choices: ["sinkhorn_knopp", "centering"] },
  layerScaleInit: { int: false, min: 0, max: 10 },
  seed: { int: true, min: 0, max: 0xffffffff },
};

/** The backbone's fields that are not shapes (shapes: `vitConfigProblems`). */
const VIT_CHOICES = {
  arch: ["custom", ...Object.keys(ARCHS)],
  ffn: ["mlp", "swiglu"],
  posInterp: ["runtime", "size"],
} as const;

/** Head widths: DINOv2's 65,536 prototypes (DinoBloom large: 131,072) with margin. */
const HEAD_LIMITS = { hidden: 65536, bottleneck: 65536, prototypes: 1 << 18 } as const;

/** "an integer in [2, 65536]", "a number in (0, 10]", … */
function describeRange(r: { int: boolean; min: number; max: number; minOpen?: boolean }): string {
  return `${r.int ? "an integer" : "a number"} in ${r.minOpen ? "(" : "["}${r.min}, ${r.max}]`;
}

function inRange(v: unknown, r: { int: boolean; min: number; max: number; minOpen?: boolean }) {
  return typeof v === "number" && Number.isFinite(v) && (!r.int || Number.isInteger(v)) &&
    (r.minOpen ? v > r.min : v >= r.min) && v <= r.max;
}

const show = (v: unknown) => JSON.stringify(v) ?? String(v);

/**
 * Reads a JSON config: `{"preset": "dinobloom-s", …overrides}` or a full
 * config; names unknown, mistyped and out-of-range fields (`CONFIG_LIMITS`).
 */
export function parseConfig(text: string, source: string): TrainConfig {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${source}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new InputError(`${source}: a config is a JSON object`);
  }
  const presetName = raw.preset ?? "demo";
  if (typeof presetName !== "string" || !Object.hasOwn(PRESETS, presetName)) {
    throw new InputError(
      `${source}: unknown preset ${show(presetName)} (known: ${Object.keys(PRESETS).join(", ")})`,
    );
  }
  const base = PRESETS[presetName]();
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(raw)) {
    if (k === "preset") continue;
    if (k === "arch") {
      if (typeof v !== "string" || !Object.hasOwn(ARCHS, v)) {
        throw new InputError(
          `${source}: field 'arch' must be vit_small, vit_base, vit_large or vit_giant2, ` +
            `got ${show(v)}`,
        );
      }
      out.vit = vitConfig(v as VitArch);
      out.head = headConfig((out.vit as VitConfig).dim, v === "vit_large" || v === "vit_giant2");
      continue;
    }
    if (!Object.hasOwn(base, k)) {
      throw new InputError(
        `${source}: unknown field '${k}' (known: ${Object.keys(base).join(", ")})`,
      );
    }
    const want = base[k as keyof TrainConfig];
    if (Array.isArray(want)) {
      if (!Array.isArray(v)) throw new InputError(`${source}: field '${k}' must be an array`);
      out[k] = v;
    } else if (typeof want === "object") {
      // A partial override of the backbone or heads: known keys only.
      if (typeof v !== "object" || v === null || Array.isArray(v)) {
        throw new InputError(`${source}: field '${k}' must be an object, got ${show(v)}`);
      }
      for (const sub of Object.keys(v)) {
        if (!Object.hasOwn(want, sub)) {
          throw new InputError(
            `${source}: unknown field '${k}.${sub}' (known: ${Object.keys(want).join(", ")})`,
          );
        }
      }
      out[k] = { ...want, ...v };
    } else if (typeof v !== typeof want) {
      throw new InputError(`${source}: field '${k}' must be a ${typeof want}, got ${show(v)}`);
    } else out[k] = v;
  }
  return validateConfig(out as unknown as TrainConfig, source);
}

/**
 * Checks every field against `CONFIG_LIMITS` and the fields that depend on
 * each other; each error names the field, the allowed values and what it got.
 */
export function validateConfig(c: TrainConfig, source = "config"): TrainConfig {
  const bad = (f: string, why: string): never => {
    throw new InputError(`${source}: ${f} ${why}`);
  };
  const cfg = c as unknown as Record<string, unknown>;
  for (const k of Object.keys(CONFIG_LIMITS) as (keyof TrainConfig)[]) {
    const rule: Rule = CONFIG_LIMITS[k];
    const v = cfg[k];
    if ("choices" in rule) {
      if (typeof v !== "string" || !rule.choices.includes(v)) {
        bad(k, `must be one of ${rule.choices.join(", ")}, got ${show(v)}`);
      }
    } else if ("pair" in rule) {
      const { min, max } = rule.pair;
      if (
        !Array.isArray(v) || v.length !== 2 ||
        !v.every((x) => inRange(x, { int: false, min, max })) || v[0] > v[1]
      ) {
        bad(k, `must be [lo, hi] with ${min} ≤ lo ≤ hi ≤ ${max}, got ${show(v)}`);
      }
    } else if ("nested" in rule) {
      if (typeof v !== "object" || v === null || Array.isArray(v)) {
        bad(k, `must be an object, got ${show(v)}`);
      }
    } else if (!inRange(v, rule)) {
      bad(k, `must be ${describeRange(rule)}, got ${show(v)}`);
    }
  }
  const vit = c.vit as unknown as Record<string, unknown>;
  for (const [f, choices] of Object.entries(VIT_CHOICES)) {
    if (!(choices as readonly unknown[]).includes(vit[f])) {
      bad(`vit.${f}`, `must be one of ${choices.join(", ")}, got ${show(vit[f])}`);
    }
  }
  if (!inRange(vit.eps, { int: false, min: 0, max: 0.1, minOpen: true })) {
    bad("vit.eps", `must be a number in (0, 0.1], got ${show(vit.eps)}`);
  }
  const problems = vitConfigProblems(c.vit);
  if (problems.length > 0) bad("vit", `shapes: ${problems.join("; ")}`);
  const head = c.head as unknown as Record<string, unknown>;
  if (head.inDim !== c.vit.dim) {
    bad(
      "head.inDim",
      `must equal the backbone width vit.dim ${c.vit.dim}, got ${show(head.inDim)}`,
    );
  }
  for (const [f, max] of Object.entries(HEAD_LIMITS)) {
    const r = { int: true, min: 1, max };
    if (!inRange(head[f], r)) bad(`head.${f}`, `must be ${describeRange(r)}, got ${show(head[f])}`);
  }
  if (c.batch % c.microBatch !== 0 || c.microBatch > c.batch) {
    bad(
      "microBatch",
      `must be an integer ≥ 2 that divides batch (${c.batch}), got ${c.microBatch}`,
    );
  }
  if (c.imageSize % c.vit.patch !== 0 || c.imageSize < c.vit.patch) {
    bad(
      "imageSize",
      `must be a positive multiple of the patch (${c.vit.patch}), got ${c.imageSize}`,
    );
  }
  for (const f of ["warmupEpochs", "freezeLastLayerEpochs", "warmupTeacherTempEpochs"] as const) {
    if (c[f] > c.epochs) bad(f, `must not exceed epochs (${c.epochs}), got ${c[f]}`);
  }
  return c;
}
