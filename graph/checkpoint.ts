/**
 * Checkpoint key layouts: turns what users download (DINOv2 hub `.pth`,
 * DinoBloom `{"teacher": …}` `.pth`, timm-style safetensors, bloom's own
 * checkpoints) into DINOv2 parameter names, infers the architecture from the
 * tensors, checks every key and shape, and loads the weights into an arena.
 * The file formats themselves live in data/.
 */
import { CheckpointError, LimitError, MissingKeyError } from "../data/errors.ts";
import type { FileSource } from "../data/file.ts";
import { openTensorFile } from "../data/open.ts";
import { PthCheckpoint, PthDict } from "../data/pth.ts";
import type { TensorFile, TensorRecord } from "../data/record.ts";
import { bicubicResampleRef } from "../kernels/resample.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { ParamArena } from "./arena.ts";
import { type HeadConfig, headParamSpecs } from "./heads.ts";
import {
  ARCHS,
  VIT_LIMITS,
  type VitArch,
  type VitConfig,
  vitConfigProblems,
  vitParamSpecs,
} from "./vit.ts";

/** Where the weights came from. */
export type CheckpointLayout = "dinov2-hub" | "dinobloom" | "timm" | "bloom";

/** A checkpoint, read as DINOv2-named tensors. */
export interface CheckpointContents {
  path: string;
  layout: CheckpointLayout;
  /** Backbone tensors under DINOv2 names ("blocks.0.attn.qkv.weight"). */
  backbone: Map<string, TensorRecord>;
  /** DINO / iBOT head tensors under head-relative names ("mlp.0.weight"), when present. */
  heads: { dino_head?: Map<string, TensorRecord>; ibot_head?: Map<string, TensorRecord> };
  /** The architecture the tensors describe. */
  config: VitConfig;
  /** bloom's metadata, when bloom wrote the file. */
  meta: Record<string, string>;
  file: TensorFile;
}

/**
 * What bloom records in the checkpoints it trains, beside the tensors: the
 * attention heads (the tensors cannot tell 2 heads of 32 from 1 of 64) and
 * the image side it trained at (embed's default input side for it). A
 * safetensors file keeps them in its metadata, a `.pth` as top-level string
 * entries beside `teacher` (DinoBloom's `torch.load(f)["teacher"]` ignores them).
 */
export function trainedCheckpointMeta(
  vit: Pick<VitConfig, "heads">,
  imageSize: number,
): Record<string, string> {
  return { "bloom.heads": String(vit.heads), "bloom.image_size": String(imageSize) };
}

/** Thrown when a checkpoint's keys or shapes do not fit the architecture. */
export class CheckpointMismatchError extends CheckpointError {
  override name = "CheckpointMismatchError";
}

const HEAD_NAMES = ["dino_head", "ibot_head"] as const;

/**
 * Normalises key prefixes: strips `module.` (DDP), picks the teacher of a
 * DinoBloom/bloom checkpoint, splits `backbone.` from the heads and renumbers
 * chunked blocks (`blocks.<chunk>.<i>.` → `blocks.<i>.`).
 */
export function splitKeys(
  path: string,
  tensors: ReadonlyMap<string, TensorRecord>,
): Pick<CheckpointContents, "layout" | "backbone" | "heads"> {
  let names = [...tensors.keys()];
  const strip = (p: string) => names.every((n) => n.startsWith(p));
  let prefix = "";
  for (const p of ["module.", "model."]) if (strip(p)) prefix = p;
  const rel = new Map<string, TensorRecord>();
  for (const [n, t] of tensors) rel.set(n.slice(prefix.length), t);
  names = [...rel.keys()];
  let layout: CheckpointLayout;
  let root = "";
  if (names.some((n) => n.startsWith("teacher.backbone."))) {
    layout = "dinobloom";
    root = "teacher.";
  } else if (names.some((n) => n.startsWith("backbone."))) {
    layout = "bloom";
  } else if (names.some((n) => n.startsWith("student.backbone."))) {
    throw new CheckpointMismatchError("this checkpoint holds only a student", {
      file: path,
      key: "student.backbone.*",
      expected: "teacher.backbone.* (DinoBloom) or plain DINOv2 keys",
      found: "student.* keys only",
      fix: "DinoBloom's evaluation uses the teacher; save the teacher's state dict",
    });
  } else {
    layout = path.endsWith(".safetensors") ? "timm" : "dinov2-hub";
  }
  const backbone = new Map<string, TensorRecord>();
  const heads: CheckpointContents["heads"] = {};
  for (const [n, t] of rel) {
    if (root && !n.startsWith(root)) continue;
    let k = n.slice(root.length);
    if (layout === "dinobloom" || layout === "bloom") {
      const head = HEAD_NAMES.find((h) => k.startsWith(h + "."));
      if (head) {
        (heads[head] ??= new Map()).set(k.slice(head.length + 1), t);
        continue;
      }
      if (!k.startsWith("backbone.")) continue;
      k = k.slice("backbone.".length);
    }
    const chunked = /^blocks\.(\d+)\.(\d+)\.(.*)$/.exec(k);
    if (chunked) k = `blocks.${chunked[2]}.${chunked[3]}`;
    backbone.set(k, t);
  }
  return { layout, backbone, heads };
}

function need(path: string, m: Map<string, TensorRecord>, key: string, prefix = ""): TensorRecord {
  const t = m.get(key);
  if (!t) {
    throw new MissingKeyError("missing key", {
      file: path,
      key: prefix + key,
      expected: "a DINOv2 backbone tensor",
      found: "no such key",
      fix: "is this a DINOv2, DinoBloom or bloom checkpoint?",
    });
  }
  return t;
}

/**
 * The number of transformer blocks: every `blocks.i` for i < depth present,
 * and no block past them. Counted from the keys that are there, before
 * anything is built, so a stray `blocks.99999999.x` is a missing-block
 * error, not a request for a hundred million blocks.
 */
function blockDepth(path: string, bb: Map<string, TensorRecord>): number {
  const present = new Set<number>();
  for (const k of bb.keys()) {
    const m = /^blocks\.(\d+)\./.exec(k);
    if (m) present.add(Number(m[1]));
  }
  let depth = 0;
  while (present.has(depth)) depth++;
  // A loop, not Math.max(...): a file may hold more block numbers than a call takes arguments.
  let last = -1;
  for (const i of present) if (i > last) last = i;
  if (last > depth) {
    throw new MissingKeyError("transformer blocks are missing before a later block", {
      file: path,
      key: `blocks.${depth}.*`,
      expected: `every block 0..${last} (the file has blocks.${last}.*)`,
      found: `blocks 0..${depth - 1} only, then a gap`,
      fix: "the checkpoint is incomplete or damaged",
    });
  }
  return depth;
}

/** Infers the ViT configuration from the backbone tensors' shapes, within VIT_LIMITS. */
export function inferConfig(path: string, bb: Map<string, TensorRecord>): VitConfig {
  const mismatch = (key: string, expected: string, t: TensorRecord) =>
    new CheckpointMismatchError("tensor does not have a ViT's shape", {
      file: path,
      key,
      expected,
      found: `[${t.shape}]`,
    });
  const pe = need(path, bb, "patch_embed.proj.weight");
  if (pe.shape.length !== 4 || pe.shape[1] !== 3 || pe.shape[2] !== pe.shape[3]) {
    throw mismatch("patch_embed.proj.weight", "[D, 3, P, P]", pe);
  }
  const [dim, , patch] = pe.shape;
  const pos = need(path, bb, "pos_embed");
  if (pos.shape.length < 2) throw mismatch("pos_embed", "[1, 1 + g², D]", pos);
  const posTokens = pos.shape[pos.shape.length - 2];
  const regs = bb.get("register_tokens");
  if (regs && regs.shape.length !== 3) throw mismatch("register_tokens", "[1, R, D]", regs);
  const registers = regs ? regs.shape[1] : 0;
  const posGrid = Math.round(Math.sqrt(posTokens - 1));
  if (!(posGrid * posGrid === posTokens - 1)) {
    throw new CheckpointMismatchError("pos_embed is not a square grid plus CLS", {
      file: path,
      key: "pos_embed",
      expected: "[1, 1 + g², D]",
      found: `[${pos.shape}]`,
    });
  }
  const depth = blockDepth(path, bb);
  const swiglu = bb.has("blocks.0.mlp.w12.weight");
  const fc = need(path, bb, swiglu ? "blocks.0.mlp.w12.weight" : "blocks.0.mlp.fc1.weight");
  if (fc.shape.length !== 2) throw mismatch(fc.name, "[H, D]", fc);
  const hidden = swiglu ? fc.shape[0] / 2 : fc.shape[0];
  const heads = dim / 64;
  const base = {
    dim,
    depth,
    heads: Number.isInteger(heads) ? heads : 1,
    mlpHidden: hidden,
    ffn: (swiglu ? "swiglu" : "mlp") as VitConfig["ffn"],
  };
  checkLimits(path, { ...base, patch, registers, posGrid });
  const arch = (Object.keys(ARCHS) as VitArch[]).find((a) =>
    ARCHS[a].dim === base.dim && ARCHS[a].depth === base.depth &&
    ARCHS[a].mlpHidden === base.mlpHidden && ARCHS[a].ffn === base.ffn
  );
  return {
    arch: arch ?? "custom",
    ...base,
    patch,
    registers,
    posGrid,
    eps: 1e-6,
    posInterp: "runtime",
  };
}

/** LimitError unless the shapes are within VIT_LIMITS (and heads divide dim). */
function checkLimits(path: string, cfg: Parameters<typeof vitConfigProblems>[0]): void {
  const problems = vitConfigProblems(cfg);
  if (problems.length > 0) {
    throw new LimitError("the checkpoint's architecture is outside bloom's limits", {
      file: path,
      key: problems.map((p) => p.split(":")[0]).join(", "),
      found: problems.join("; "),
      fix: "bloom builds ViTs up to " +
        Object.entries(VIT_LIMITS).map(([k, v]) => `${k} ${v}`).join(", "),
    });
  }
}

/** Infers a head's shapes from its tensors. */
export function inferHead(path: string, prefix: string, m: Map<string, TensorRecord>): HeadConfig {
  const w0 = need(path, m, "mlp.0.weight", prefix + ".");
  const w4 = need(path, m, "mlp.4.weight", prefix + ".");
  const v = need(path, m, "last_layer.weight_v", prefix + ".");
  return {
    inDim: w0.shape[1],
    hidden: w0.shape[0],
    bottleneck: w4.shape[0],
    prototypes: v.shape[0],
  };
}

/**
 * Opens a checkpoint (a path, or a ByteSource such as a dropped browser
 * File) and reads its layout and architecture. `arch`, when given, must
 * agree with the tensors (a mismatch names the key). `heads` (from a model's
 * own config) may override head count for custom sizes.
 */
export async function openCheckpoint(
  source: FileSource,
  opts: { arch?: VitArch | "custom"; heads?: number } = {},
): Promise<CheckpointContents> {
  const file = await openTensorFile(source);
  const path = file.path;
  try {
    const { layout, backbone, heads } = splitKeys(path, file.tensors);
    if (backbone.size === 0) {
      throw new CheckpointMismatchError("no backbone tensors found", {
        file: path,
        key: "(all keys)",
        expected: "DINOv2 keys (cls_token, blocks.0.…) or {teacher: {backbone.…}}",
        found: [...file.tensors.keys()].slice(0, 5).join(", ") || "no tensors",
      });
    }
    const config = inferConfig(path, backbone);
    const meta: Record<string, string> = {};
    const m = (file as { metadata?: Record<string, string> }).metadata;
    if (m) Object.assign(meta, m);
    if (file instanceof PthCheckpoint && file.root instanceof PthDict) {
      // A .pth bloom trained: its `bloom.*` strings sit beside `teacher` (trainedCheckpointMeta).
      for (const [k, v] of file.root) {
        if (typeof k === "string" && k.startsWith("bloom.") && typeof v === "string") meta[k] = v;
      }
    }
    if (meta["bloom.heads"]) config.heads = Number(meta["bloom.heads"]);
    if (opts.heads) config.heads = opts.heads;
    checkLimits(path, config);
    if (opts.arch && opts.arch !== "custom" && opts.arch !== config.arch) {
      const want = ARCHS[opts.arch];
      throw new CheckpointMismatchError(`the weights are not ${opts.arch}`, {
        file: path,
        key: "patch_embed.proj.weight / blocks.*",
        expected: `${opts.arch}: dim ${want.dim}, depth ${want.depth}, ${want.ffn}`,
        found: `dim ${config.dim}, depth ${config.depth}, ${config.ffn} (${config.arch})`,
        fix: "drop --arch to use what the file holds, or pick the matching file",
      });
    }
    checkBackbone(path, backbone, config);
    return { path, layout, backbone, heads, config, meta, file };
  } catch (e) {
    file.close();
    throw e;
  }
}

/** Every expected key present with its expected shape, and no unexpected key. */
export function checkBackbone(
  path: string,
  bb: Map<string, TensorRecord>,
  cfg: VitConfig,
): void {
  const specs = vitParamSpecs(cfg);
  const expected = new Set(specs.map((s) => s.name));
  for (const s of specs) {
    const t = bb.get(s.name);
    if (!t) {
      throw new MissingKeyError("missing key", {
        file: path,
        key: s.name,
        expected: `[${s.shape}]`,
        found: "no such key",
      });
    }
    const same = t.shape.length === s.shape.length && t.shape.every((d, i) => d === s.shape[i]);
    // The DinoBloom checkpoints store mask_token as [1, D] like DINOv2; some exports as [D].
    const flat = t.numel === s.shape.reduce((a, b) => a * b, 1) &&
      (s.name === "mask_token" || s.name.endsWith("gamma"));
    if (!same && !flat) {
      throw new CheckpointMismatchError("shape does not match the architecture", {
        file: path,
        key: s.name,
        expected: `[${s.shape}] for ${cfg.arch} (dim ${cfg.dim})`,
        found: `[${t.shape}]`,
      });
    }
  }
  for (const k of bb.keys()) {
    if (!expected.has(k)) {
      throw new CheckpointMismatchError("unexpected key", {
        file: path,
        key: k,
        expected: `only ${cfg.arch} backbone keys`,
        found: "a key the architecture does not have",
        fix: "is the file from another model family, or a different DINOv2 variant?",
      });
    }
  }
}

/** Reads a tensor as f32, naming the file and key if the read fails. */
async function readF32(path: string, name: string, t: TensorRecord): Promise<Float32Array> {
  try {
    return await t.f32();
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    throw new CheckpointError("could not read tensor", { file: path, key: name, cause: e });
  }
}

/**
 * Resamples pos_embed [1, 1+G², D] to a g×g grid with bicubic interpolation
 * (PyTorch F.interpolate, align_corners=False, no antialias), keeping the CLS
 * row: what DinoBloom did once to turn DINOv2's 37×37 grid into 16×16.
 */
export function resamplePosEmbed(pos: Float32Array, G: number, g: number, D: number): Float32Array {
  const grid = pos.subarray(D, D + G * G * D);
  const out = bicubicResampleRef(grid, [G, G, D], { outH: g, outW: g });
  const res = new Float32Array((1 + g * g) * D);
  res.set(pos.subarray(0, D), 0);
  res.set(out, D);
  return res;
}

/** Options of loadBackbone. */
export interface LoadOptions {
  arch?: VitArch | "custom";
  /** Head count, for custom sizes (named sizes use head dim 64). */
  heads?: number;
  /**
   * Resample the stored position grid once to this side at load (DinoBloom's
   * way, for training at 224 px: 16). Default: keep it, interpolate at run
   * time like DINOv2.
   */
  posGrid?: number;
  /** Allocate gradients (training). */
  grads?: boolean;
  /** Also load the DINO/iBOT heads when the file has them. */
  withHeads?: boolean;
}

/** A model loaded into an arena. */
export interface LoadedModel {
  arena: ParamArena;
  config: VitConfig;
  layout: CheckpointLayout;
  heads: { dino_head?: HeadConfig; ibot_head?: HeadConfig };
  meta: Record<string, string>;
}

/** Loads a checkpoint's backbone (and heads, if asked) into a new arena. */
export async function loadCheckpoint(
  gpu: Gpu,
  source: FileSource,
  opts: LoadOptions = {},
): Promise<LoadedModel> {
  const ck = await openCheckpoint(source, { arch: opts.arch, heads: opts.heads });
  const path = ck.path;
  try {
    const config = { ...ck.config };
    const resample = opts.posGrid !== undefined && opts.posGrid !== ck.config.posGrid;
    if (resample) {
      config.posGrid = opts.posGrid!;
      config.posInterp = "size";
    }
    const specs = vitParamSpecs(config);
    const headCfgs: LoadedModel["heads"] = {};
    if (opts.withHeads) {
      for (const h of HEAD_NAMES) {
        const m = ck.heads[h];
        if (!m) continue;
        headCfgs[h] = inferHead(path, h, m);
        specs.push(...headParamSpecs(h, headCfgs[h]!));
      }
    }
    const arena = ParamArena.create(gpu, specs, { grads: opts.grads });
    try {
      for (const s of vitParamSpecs(config)) {
        let data = await readF32(path, s.name, ck.backbone.get(s.name)!);
        if (s.name === "pos_embed" && resample) {
          data = resamplePosEmbed(data, ck.config.posGrid, config.posGrid, config.dim);
        }
        arena.set(s.name, data);
      }
      for (const h of HEAD_NAMES) {
        const c = headCfgs[h];
        if (!c) continue;
        for (const s of headParamSpecs(h, c)) {
          const rel = s.name.slice(h.length + 1);
          const t = ck.heads[h]!.get(rel);
          if (!t) {
            throw new MissingKeyError("missing head key", {
              file: path,
              key: `${h}.${rel}`,
              expected: `[${s.shape}]`,
              found: "no such key",
            });
          }
          arena.set(s.name, await readF32(path, s.name, t));
        }
      }
    } catch (e) {
      arena.destroy();
      throw e;
    }
    return { arena, config, layout: ck.layout, heads: headCfgs, meta: ck.meta };
  } finally {
    ck.file.close();
  }
}
