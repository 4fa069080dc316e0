/**
 * The DinoBloom training step on the GPU (docs/recipe.md): student and EMA
 * teacher ViTs with separate DINO and iBOT heads, two global crops, no local
 * crops; DINO loss on CLS with Sinkhorn-Knopp (or centred softmax) teacher
 * targets swapped between the crops, iBOT loss on masked patch tokens, KoLeo
 * on the student's CLS per crop; AdamW with DINOv2's parameter groups,
 * per-module gradient clipping, and the EMA teacher update — all in the open
 * encoder, with one read-back per step for the metrics.
 *
 * Gradient accumulation (batch > microBatch): the teacher first runs over the
 * whole batch so the Sinkhorn-Knopp targets are those of the full batch, as in
 * the reference's distributed run; DINO and iBOT gradients are then exact.
 * KoLeo's nearest neighbours are found within each micro-batch (documented
 * difference: the reference searches each GPU's share of the batch).
 */
import { InputError } from "../../data/errors.ts";
import { writePth } from "../../data/pth_writer.ts";
import { openSafetensors, writeSafetensors } from "../../data/safetensors.ts";
import type { TensorData } from "../../data/record.ts";
import { openCheckpoint, resamplePosEmbed, trainedCheckpointMeta } from "../../graph/checkpoint.ts";
import { ParamArena, type ParamSpec } from "../../graph/arena.ts";
import { Graph } from "../../graph/graph.ts";
import { initialValue } from "../../graph/init.ts";
import { headForward, headParamSpecs } from "../../graph/heads.ts";
import {
  add,
  affine,
  concat,
  crossEntropySoft,
  gatherRows,
  koleo,
  mul,
  reshape,
  slice,
  sum,
} from "../../graph/ops.ts";
import { Params } from "../../graph/params.ts";
import { mulberry32 } from "../../graph/random.ts";
import type { Tensor } from "../../graph/tensor.ts";
import { vitForward, vitParamSpecs } from "../../graph/vit.ts";
import {
  type AdamwGroupHyper,
  adamwStep,
  segmentTable,
  writeAdamwHyper,
} from "../../kernels/adamw.ts";
import { clipFactors, gradSqNorms } from "../../kernels/clip.ts";
import { emaUpdate, writeMomentum } from "../../kernels/ema.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import {
  centeredSoftmax,
  sinkhornKnopp,
  sinkhornKnoppAcross,
  updateCenter,
  updateCenterAcross,
} from "../../kernels/sinkhorn.ts";
import type { GpuTensor } from "../../kernels/tensor.ts";
import { addInPlace } from "../../kernels/elementwise.ts";
import type { Comm } from "../mpi/comm.ts";
import type { GradientSync, GradientSyncStats } from "../mpi/gradients.ts";
import { TrainingRanks } from "../mpi/ranks.ts";
import type { TrainConfig } from "./config.ts";
import type { BatchMasks } from "./masking.ts";
import { groupKey, type ParamGroup, paramGroup } from "./param_groups.ts";
import { buildSchedules, scaledLr, type Schedules } from "./schedule.ts";

/** The three student modules, in clip-module order. */
export const MODULES = ["backbone", "dino_head", "ibot_head"] as const;
type Module = typeof MODULES[number];

/** What one step reports. */
export interface StepMetrics {
  step: number;
  dino: number;
  ibot: number;
  koleo: number;
  total: number;
  lr: number;
  wd: number;
  momentum: number;
  teacherTemp: number;
  lastLayerLr: number;
  /** Gradient norm per student module before clipping. */
  gradNorm: Record<Module, number>;
  maskedPatches: number;
  /** The gradient reduction across ranks (data-parallel runs only). */
  sync?: GradientSyncStats;
}

/** A non-finite loss: the run stops; the last good checkpoint stays. */
export class NonFiniteLossError extends Error {
  override name = "NonFiniteLossError";
}

/** One micro-batch's tensors (see Trainer.#microBatch). */
interface MicroBatch {
  crops: GpuTensor;
  masks: GpuTensor;
  indices: GpuTensor;
  weights: GpuTensor;
  runs: { global: number; local: number; length: number }[];
  count: number;
  images: number;
  first: number;
}

/** Student and teacher, their optimiser state, and the step. */
export class Trainer {
  readonly gpu: Gpu;
  readonly cfg: TrainConfig;
  readonly student: ParamArena;
  readonly teacher: ParamArena;
  readonly schedules: Schedules;
  /** Optimiser groups (fused like DINOv2's fuse_params_groups). */
  readonly groups: ParamGroup[];
  readonly #m: GpuTensor[];
  readonly #v: GpuTensor[];
  readonly #tables: GpuTensor[];
  readonly #hyper: GpuTensor;
  readonly #sq: GpuTensor;
  readonly #momentum: GpuTensor;
  readonly #temp: GpuTensor;
  readonly #centers: { dino: GpuTensor; ibot: GpuTensor };
  /** Optimiser steps done. */
  iteration = 0;
  /** The other ranks of a data-parallel run (null alone). */
  #ranks: TrainingRanks | null = null;

  private constructor(gpu: Gpu, cfg: TrainConfig, student: ParamArena, teacher: ParamArena) {
    this.gpu = gpu;
    this.cfg = cfg;
    this.student = student;
    this.teacher = teacher;
    const lr = scaledLr(cfg.baseLr, cfg.batch);
    this.schedules = buildSchedules({ ...cfg, lr });
    const keys = new Map<string, number>();
    this.groups = [];
    const segments: { offset: number; length: number; group: number; module: number }[][] = student
      .chunks.map(() => []);
    for (const p of student.order) {
      const mod = moduleOf(p.name);
      const rel = mod === "backbone" ? p.name : p.name.slice(mod.length + 1);
      const grp = paramGroup(rel, {
        numLayers: mod === "backbone" ? cfg.vit.depth : 0,
        layerDecay: cfg.layerDecay,
        patchEmbedLrMult: cfg.patchEmbedLrMult,
      });
      const key = groupKey(grp);
      let gi = keys.get(key);
      if (gi === undefined) {
        gi = this.groups.length;
        keys.set(key, gi);
        this.groups.push(grp);
      }
      segments[p.chunk].push({
        offset: p.offset,
        length: p.numel,
        group: gi,
        module: MODULES.indexOf(mod),
      });
    }
    this.#tables = student.chunks.map((c, i) =>
      gpu.tensor(segmentTable(segments[i], c.elements), undefined, `segments#${i}`)
    );
    this.#m = student.chunks.map((c) => gpu.zeros([c.elements], "f32", "adam-m"));
    this.#v = student.chunks.map((c) => gpu.zeros([c.elements], "f32", "adam-v"));
    this.#hyper = gpu.zeros([this.groups.length * 16]);
    this.#sq = gpu.zeros([MODULES.length]);
    this.#momentum = gpu.zeros([2]);
    this.#temp = gpu.zeros([1]);
    this.#centers = {
      dino: gpu.zeros([cfg.head.prototypes]),
      ibot: gpu.zeros([cfg.head.prototypes]),
    };
  }

  /** Every parameter spec of the student (backbone, then the two heads). */
  static specs(cfg: TrainConfig): ParamSpec[] {
    return [
      ...vitParamSpecs(cfg.vit),
      ...headParamSpecs("dino_head", cfg.head),
      ...headParamSpecs("ibot_head", cfg.head),
    ];
  }

  /**
   * Builds student and teacher (equal at the start), from a DINOv2 or
   * DinoBloom checkpoint when `init` is given (heads from the file when it
   * has them, else fresh), or from DINOv2's initialisation.
   */
  static async create(gpu: Gpu, cfg: TrainConfig, init?: string): Promise<Trainer> {
    const specs = Trainer.specs(cfg);
    const values = new Map<string, Float32Array>();
    const rand = mulberry32(cfg.seed * 7919 + 1);
    if (init) {
      const ck = await openCheckpoint(init, {
        heads: cfg.vit.arch === "custom" ? cfg.vit.heads : undefined,
      });
      try {
        const c = ck.config;
        for (const k of ["dim", "depth", "mlpHidden", "ffn", "patch", "registers"] as const) {
          if (c[k] !== cfg.vit[k]) {
            throw new InputError(
              `${init}: the checkpoint's ${k} is ${c[k]} but the training config has ${
                cfg.vit[k]
              }; ` +
                `choose the preset or --arch that matches the weights`,
            );
          }
        }
        for (const s of vitParamSpecs(cfg.vit)) {
          let v = await ck.backbone.get(s.name)!.f32();
          if (s.name === "pos_embed" && c.posGrid !== cfg.vit.posGrid) {
            v = resamplePosEmbed(v, c.posGrid, cfg.vit.posGrid, cfg.vit.dim);
          }
          values.set(s.name, v);
        }
        for (const h of ["dino_head", "ibot_head"] as const) {
          const m = ck.heads[h];
          if (!m) continue;
          for (const s of headParamSpecs(h, cfg.head)) {
            const t = m.get(s.name.slice(h.length + 1));
            const n = s.shape.reduce((a, b) => a * b, 1);
            if (!t || t.numel !== n) {
              throw new InputError(
                `${init}: ${s.name} is ${
                  t ? `[${t.shape}]` : "missing"
                }, the config's head needs ` +
                  `[${s.shape}]; set the head size in the config or start the heads fresh`,
              );
            }
            values.set(s.name, await t.f32());
          }
        }
      } finally {
        ck.file.close();
      }
    }
    const student = ParamArena.create(gpu, specs, { grads: true });
    const teacher = ParamArena.create(gpu, specs);
    for (const s of specs) {
      const v = values.get(s.name) ?? initialValue(s, rand, cfg.layerScaleInit);
      student.set(s.name, v);
    }
    for (let c = 0; c < student.chunks.length; c++) {
      gpu.copy(student.chunks[c].value, teacher.chunks[c].value);
    }
    return new Trainer(gpu, cfg, student, teacher);
  }

  /**
   * A trainer whose state is about to arrive from rank 0 (`joinRanks`):
   * zeroed, with none of `create`'s reading or initialisation.
   */
  static blank(gpu: Gpu, cfg: TrainConfig): Trainer {
    const specs = Trainer.specs(cfg);
    const student = ParamArena.create(gpu, specs, { grads: true });
    return new Trainer(gpu, cfg, student, ParamArena.create(gpu, specs));
  }

  /**
   * Makes this trainer one rank of a data-parallel run: every rank takes rank
   * 0's student, teacher, AdamW moments, centres and iteration, and from then
   * on each step's batch is this rank's share of the global batch (the
   * Sinkhorn-Knopp and centring sums, the gradients and the reported losses
   * are summed over the ranks). Every rank calls it at the same point.
   */
  async joinRanks(comm: Comm): Promise<void> {
    if (comm.size === 1) return;
    const ranks = new TrainingRanks(this.gpu, comm, this.student);
    const it = await comm.bcast(Float64Array.of(this.iteration));
    this.iteration = it[0];
    const student = this.student.chunks.map((c) => c.value);
    if (this.iteration === 0) {
      // A fresh run: the teacher is the student and the moments and centres are zero everywhere.
      await ranks.broadcast(student);
      this.teacher.chunks.forEach((c, i) => this.gpu.copy(student[i], c.value));
    } else {
      await ranks.broadcast([
        ...student,
        ...this.teacher.chunks.map((c) => c.value),
        ...this.#m,
        ...this.#v,
        this.#centers.dino,
        this.#centers.ibot,
      ]);
    }
    this.#ranks = ranks;
  }

  /** Ranks training together (1 alone). */
  get ranks(): number {
    return this.#ranks?.size ?? 1;
  }

  /** Schedule values at iteration `it`. */
  scheduleAt(it: number) {
    const s = this.schedules;
    return {
      lr: s.lr.at(it),
      lastLayerLr: s.lastLayerLr.at(it),
      wd: s.wd.at(it),
      momentum: s.momentum.at(it),
      teacherTemp: s.teacherTemp.at(it),
    };
  }

  /**
   * One optimiser step on `crops` (f32 [2·B, 3, S, S], crop-major: crop 1 of
   * every image, then crop 2) with iBOT masks for those 2·B crops. In a
   * data-parallel run these are this rank's B images of the global batch.
   */
  async step(crops: GpuTensor, masks: BatchMasks): Promise<StepMetrics> {
    const { gpu, cfg } = this;
    const B2 = crops.shape[0];
    const B = B2 / 2;
    if (!Number.isInteger(B) || B < 1) {
      throw new RangeError(`crops must hold 2·B images, got ${B2}`);
    }
    const micro = Math.min(cfg.microBatch, B);
    if (B % micro !== 0) {
      throw new RangeError(`batch ${B} is not a multiple of microBatch ${micro}`);
    }
    const np = (crops.shape[2] / cfg.vit.patch) * (crops.shape[3] / cfg.vit.patch);
    if (masks.masks.length !== B2 * np) {
      throw new RangeError(`masks cover ${masks.masks.length} patches, crops have ${B2 * np}`);
    }
    const it = this.iteration;
    const s = this.scheduleAt(it);
    // Host writes first: each flushes the encoder if it has work.
    writeAdamwHyper(
      gpu,
      this.#hyper,
      this.groups.map((g): AdamwGroupHyper => ({
        lr: (g.isLastLayer ? s.lastLayerLr : s.lr) * g.lrMultiplier,
        weightDecay: s.wd * g.wdMultiplier,
        step: it + 1,
      })),
    );
    writeMomentum(gpu, this.#momentum, s.momentum);
    gpu.write(this.#temp, new Float32Array([s.teacherTemp]));
    gpu.clear(this.#sq);
    this.student.zeroGrads();

    const parts = B / micro;
    const ranks = this.#ranks;
    const maskedAll = ranks ? await ranks.sumCount(masks.count) : masks.count;
    // Per micro-batch: its crops, masks and masked-token indices in micro-batch order.
    const views = [];
    for (let p = 0; p < parts; p++) views.push(this.#microBatch(crops, masks, p, micro, B, np));
    const { dinoTargets, ibotTargets } = await this.#teacherTargets(
      views,
      B2,
      masks.count,
      maskedAll,
    );
    const losses = { dino: gpu.zeros([1]), ibot: gpu.zeros([1]), koleo: gpu.zeros([1]) };
    // Across ranks, the last micro-batch's backward starts the gradient reduction bucket by bucket.
    const sync = ranks?.gradients();
    views.forEach((v, i) =>
      this.#studentPass(v, dinoTargets, ibotTargets, B2, losses, i === parts - 1 ? sync : undefined)
    );
    const syncStats = sync ? await sync.finish() : undefined;
    gpu.release(dinoTargets, ibotTargets);
    for (const v of views) gpu.release(v.crops, v.masks, v.indices, v.weights);

    // Clip per module, AdamW, EMA: whole arena chunks, one dispatch each.
    const st = this.student;
    for (let c = 0; c < st.chunks.length; c++) {
      gradSqNorms(gpu, st.chunks[c].grad!, this.#tables[c], MODULES.length, this.#sq);
    }
    const clip = clipFactors(gpu, this.#sq, cfg.clipGrad);
    for (let c = 0; c < st.chunks.length; c++) {
      adamwStep(gpu, {
        param: st.chunks[c].value,
        grad: st.chunks[c].grad!,
        m: this.#m[c],
        v: this.#v[c],
        table: this.#tables[c],
        hyper: this.#hyper,
        clip,
      });
      emaUpdate(gpu, this.teacher.chunks[c].value, st.chunks[c].value, this.#momentum);
    }
    gpu.release(clip);
    const [dino, ibot, ko, sq] = await gpu.readMany([
      losses.dino,
      losses.ibot,
      losses.koleo,
      this.#sq,
    ]);
    gpu.release(losses.dino, losses.ibot, losses.koleo);
    // Across ranks each rank's terms are its share of the global means: the loss is their sum.
    const local = [dino[0], ibot[0], ko[0]];
    const { sums: [dinoAll, ibotAll, koAll], nonFinite } = ranks
      ? await ranks.sumLosses(local, 2) // KoLeo: from the rank's own images only
      : { sums: local, nonFinite: [] };
    const total = cfg.dinoWeight * dinoAll + cfg.ibotWeight * ibotAll + cfg.koleoWeight * koAll;
    this.iteration++;
    const metrics: StepMetrics = {
      step: it,
      dino: dinoAll,
      ibot: ibotAll,
      koleo: koAll,
      total,
      ...s,
      gradNorm: {
        backbone: Math.sqrt(sq[0]),
        dino_head: Math.sqrt(sq[1]),
        ibot_head: Math.sqrt(sq[2]),
      },
      maskedPatches: maskedAll,
      ...(syncStats ? { sync: syncStats } : {}),
    };
    if (!Number.isFinite(total)) {
      const where = nonFinite.length ? ` on rank ${nonFinite.join(", ")}` : "";
      throw new NonFiniteLossError(
        `the loss became ${total} at step ${it}${where} (DINO ${dinoAll}, iBOT ${ibotAll}, ` +
          `KoLeo ${koAll}); ` +
          "the run stops here and the last checkpoint is the last good one. Lower the learning " +
          "rate (baseLr) or check the input data for broken images",
      );
    }
    return metrics;
  }

  /**
   * The tensors of micro-batch `p`: both crops of images p·m … p·m+m−1, their
   * masks, and where their masked tokens sit among the batch's (global order
   * is crop-major and ascending, so a micro-batch's tokens are two contiguous
   * runs: its crop-1 tokens, then its crop-2 tokens).
   */
  #microBatch(
    crops: GpuTensor,
    masks: BatchMasks,
    p: number,
    m: number,
    B: number,
    np: number,
  ): MicroBatch {
    const gpu = this.gpu;
    const per = crops.numel / crops.shape[0];
    const sub = gpu.empty([2 * m, ...crops.shape.slice(1)]);
    const mk = new Uint32Array(2 * m * np);
    const idx: number[] = [];
    const w: number[] = [];
    const runs: { global: number; local: number; length: number }[] = [];
    let rank = 0;
    for (let c = 0; c < 2; c++) {
      const src = c * B + p * m;
      gpu.copy(crops.view(src * per, [m * per]), sub.view(c * m * per, [m * per]));
      // Masked tokens of every earlier image come first in the global order.
      while (rank < masks.count && masks.indices[rank] < src * np) rank++;
      const run = { global: rank, local: idx.length, length: 0 };
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < np; j++) {
          if (!masks.masks[(src + i) * np + j]) continue;
          mk[(c * m + i) * np + j] = 1;
          idx.push((c * m + i) * np + j);
          w.push(masks.weights[rank + run.length]);
          run.length++;
        }
      }
      runs.push(run);
    }
    const count = idx.length;
    return {
      crops: sub,
      masks: gpu.tensor(mk, [mk.length]),
      indices: gpu.tensor(Uint32Array.from(count ? idx : [0]), [Math.max(count, 1)]),
      weights: gpu.tensor(Float32Array.from(count ? w : [0]), [Math.max(count, 1)]),
      runs,
      count,
      images: m,
      first: p * m,
    };
  }

  /**
   * Teacher forward over every micro-batch (no gradients), then the targets:
   * Sinkhorn-Knopp (or centred softmax) over the full batch's CLS logits
   * (crop halves swapped so crop 1 learns from crop 2) and masked-patch logits.
   */
  async #teacherTargets(
    views: MicroBatch[],
    B2: number,
    nMasked: number,
    maskedAll: number,
  ): Promise<{ dinoTargets: GpuTensor; ibotTargets: GpuTensor }> {
    const { gpu, cfg } = this;
    const K = cfg.head.prototypes;
    const B = B2 / 2;
    const clsLogits = gpu.empty([B2, K]);
    const patchLogits = gpu.empty([Math.max(nMasked, 1), K]);
    const g = new Graph(gpu, { training: false });
    const ps = new Params(g, this.teacher);
    for (const v of views) {
      g.tidy(() => {
        const out = vitForward(ps, cfg.vit, g.input(v.crops), {
          outputs: ["clsNorm", "patchNorm"],
        });
        const m = v.images;
        const cls = headForward(ps, "dino_head", out.clsNorm!);
        // Crop 1 of image i goes to row B + i (swapped), crop 2 to row i.
        gpu.copy(cls.value.view(0, [m * K]), clsLogits.view((B + v.first) * K, [m * K]));
        gpu.copy(cls.value.view(m * K, [m * K]), clsLogits.view(v.first * K, [m * K]));
        if (v.count > 0) {
          const D = cfg.vit.dim;
          const flat = reshape(g, out.patchNorm!, [out.patchNorm!.numel / D, D]);
          const tok = gatherRows(g, flat, g.input(v.indices.view(0, [v.count])));
          const logits = headForward(ps, "ibot_head", tok);
          for (const r of v.runs) {
            if (r.length === 0) continue;
            gpu.copy(
              logits.value.view(r.local * K, [r.length * K]),
              patchLogits.view(r.global * K, [r.length * K]),
            );
          }
        }
        return null;
      });
    }
    g.dispose();
    let dinoTargets: GpuTensor;
    let ibotTargets: GpuTensor;
    const ranks = this.#ranks;
    if (ranks) {
      // Where DINOv2's distributed code all-reduces: Sinkhorn-Knopp's sums, the centres' means.
      const masked = patchLogits.view(0, [nMasked, K]);
      if (cfg.centering === "sinkhorn_knopp") {
        dinoTargets = await sinkhornKnoppAcross(gpu, clsLogits, this.#temp, ranks.reduce, {
          count: B2 * ranks.size,
        });
        ibotTargets = await sinkhornKnoppAcross(gpu, masked, this.#temp, ranks.reduce, {
          count: maskedAll,
        });
      } else {
        dinoTargets = centeredSoftmax(gpu, clsLogits, this.#centers.dino, this.#temp);
        ibotTargets = centeredSoftmax(gpu, patchLogits, this.#centers.ibot, this.#temp);
        await updateCenterAcross(
          gpu,
          this.#centers.dino,
          clsLogits,
          0.9,
          ranks.reduce,
          B2 * ranks.size,
        );
        await updateCenterAcross(gpu, this.#centers.ibot, masked, 0.9, ranks.reduce, maskedAll);
      }
    } else if (cfg.centering === "sinkhorn_knopp") {
      dinoTargets = sinkhornKnopp(gpu, clsLogits, this.#temp);
      ibotTargets = sinkhornKnopp(gpu, patchLogits, this.#temp, { count: nMasked });
    } else {
      dinoTargets = centeredSoftmax(gpu, clsLogits, this.#centers.dino, this.#temp);
      ibotTargets = centeredSoftmax(gpu, patchLogits, this.#centers.ibot, this.#temp);
      updateCenter(gpu, this.#centers.dino, clsLogits, 0.9);
      if (nMasked > 0) {
        updateCenter(gpu, this.#centers.ibot, patchLogits.view(0, [nMasked, K]), 0.9);
      }
    }
    gpu.release(clsLogits, patchLogits);
    return { dinoTargets, ibotTargets };
  }

  /**
   * Student forward + backward of one micro-batch; adds its loss terms into `losses`. With
   * `sync`, backward starts the cross-rank gradient reduction as gradients become final.
   */
  #studentPass(
    v: MicroBatch,
    dinoTargets: GpuTensor,
    ibotTargets: GpuTensor,
    B2: number,
    losses: { dino: GpuTensor; ibot: GpuTensor; koleo: GpuTensor },
    sync?: GradientSync,
  ): void {
    const { gpu, cfg } = this;
    const K = cfg.head.prototypes;
    const B = B2 / 2;
    // The terms are means over the global batch: every rank's B images.
    const world = this.ranks;
    const m = v.images;
    const D = cfg.vit.dim;
    const g = new Graph(gpu, { training: true });
    const ps = new Params(g, this.student);
    const out = vitForward(ps, cfg.vit, g.input(v.crops), {
      masks: g.input(v.masks),
      outputs: ["clsNorm", "patchNorm"],
    });
    const cls = out.clsNorm!;
    // DINO: −Σ t log p over the 2m rows, divided by all 2B rows of the batch.
    const tDino = concat(g, [
      g.input(dinoTargets.view(v.first * K, [m, K])),
      g.input(dinoTargets.view((B + v.first) * K, [m, K])),
    ], 0);
    const dinoRows = crossEntropySoft(g, headForward(ps, "dino_head", cls), tDino, cfg.studentTemp);
    const dino = affine(g, sum(g, dinoRows, "all"), 1 / (B2 * world));
    // iBOT: per masked token, weighted by 1 / (masked tokens in its image), summed, / images.
    let ibot: Tensor | null = null;
    if (v.count > 0) {
      const flat = reshape(g, out.patchNorm!, [out.patchNorm!.numel / D, D]);
      const tok = gatherRows(g, flat, g.input(v.indices.view(0, [v.count])));
      const logits = headForward(ps, "ibot_head", tok);
      const tIbot = g.adopt(gpu.empty([v.count, K]));
      for (const r of v.runs) {
        if (r.length === 0) continue;
        gpu.copy(
          ibotTargets.view(r.global * K, [r.length * K]),
          tIbot.value.view(r.local * K, [r.length * K]),
        );
      }
      const rows = crossEntropySoft(g, logits, tIbot, cfg.studentTemp);
      ibot = affine(
        g,
        sum(g, mul(g, rows, g.input(v.weights.view(0, [v.count]))), "all"),
        1 / (B2 * world),
      );
    }
    // KoLeo per crop set, on the backbone's CLS (after the final norm).
    const ko = add(
      g,
      koleo(g, slice(g, cls, 0, 0, m), cfg.koleoEps),
      koleo(g, slice(g, cls, 0, m, m), cfg.koleoEps),
    );
    // Each micro-batch's KoLeo is a mean over its crops; average them over micro-batches.
    const koScaled = affine(g, ko, m / (B * world));
    let total = add(g, affine(g, dino, cfg.dinoWeight), affine(g, koScaled, cfg.koleoWeight));
    if (ibot) total = add(g, total, affine(g, ibot, cfg.ibotWeight));
    addInPlace(gpu, losses.dino, dino.value.reshape([1]));
    if (ibot) addInPlace(gpu, losses.ibot, ibot.value.reshape([1]));
    addInPlace(gpu, losses.koleo, koScaled.value.reshape([1]));
    if (sync && !ibot) {
      // No masked token here: the iBOT head's gradient is already final.
      for (const p of this.student.order) {
        if (moduleOf(p.name) === "ibot_head") sync.onParamReady(p);
      }
    }
    g.backward(total, undefined, { onParamReady: sync?.onParamReady });
    g.dispose();
  }

  /** The teacher's state dict in DinoBloom's checkpoint layout ({"teacher": …}). */
  async teacherStateDict(): Promise<Record<string, TensorData>> {
    const values = await this.teacher.readAll();
    const out: Record<string, TensorData> = {};
    for (const p of this.teacher.order) {
      const key = moduleOf(p.name) === "backbone" ? `backbone.${p.name}` : p.name;
      out[key] = { dtype: "f32", shape: p.shape, data: values.get(p.name)! };
    }
    return out;
  }

  /**
   * Writes `{"teacher": state_dict}` as DinoBloom's PyTorch loader expects (atomic), with
   * bloom's heads and image side beside it (trainedCheckpointMeta).
   */
  async saveTeacher(path: string): Promise<void> {
    await writePth(path, {
      teacher: await this.teacherStateDict(),
      ...trainedCheckpointMeta(this.cfg.vit, this.cfg.imageSize),
    });
  }

  /** Optimiser state chunks, for the resume file. */
  get optimizerState(): { m: GpuTensor[]; v: GpuTensor[]; centers: GpuTensor[] } {
    return { m: this.#m, v: this.#v, centers: [this.#centers.dino, this.#centers.ibot] };
  }

  /**
   * Writes everything a resumed run needs — student, teacher, AdamW moments,
   * centres, the iteration and the caller's `extra` (data position, RNG
   * state) — as one safetensors file, atomically.
   */
  async saveState(path: string, extra: Record<string, unknown> = {}): Promise<void> {
    const tensors = new Map<string, TensorData>();
    for (const [tag, arena] of [["student", this.student], ["teacher", this.teacher]] as const) {
      const values = await arena.readAll();
      for (const p of arena.order) {
        tensors.set(`${tag}.${p.name}`, {
          dtype: "f32",
          shape: p.shape,
          data: values.get(p.name)!,
        });
      }
    }
    const chunks = [
      ...this.#m.map((t, i) => [`adam_m.${i}`, t] as const),
      ...this.#v.map((t, i) => [`adam_v.${i}`, t] as const),
      ["center.dino", this.#centers.dino] as const,
      ["center.ibot", this.#centers.ibot] as const,
    ];
    for (const [name, t] of chunks) {
      tensors.set(name, { dtype: "f32", shape: t.shape, data: await this.gpu.readF32(t) });
    }
    const meta = { iteration: this.iteration, config: this.cfg, ...extra };
    await writeSafetensors(path, tensors, { "bloom.resume": JSON.stringify(meta) });
  }

  /**
   * Restores a trainer from `saveState`'s file. The configuration must match
   * the file's (same shapes); returns the caller's `extra` fields.
   */
  static async restore(
    gpu: Gpu,
    path: string,
    cfg?: TrainConfig,
  ): Promise<{ trainer: Trainer; extra: Record<string, unknown> }> {
    const f = await openSafetensors(path);
    try {
      const raw = f.metadata["bloom.resume"];
      if (!raw) {
        throw new InputError(`${path} is not a bloom resume file (no bloom.resume metadata)`);
      }
      const meta = JSON.parse(raw) as
        & { iteration: number; config: TrainConfig }
        & Record<string, unknown>;
      const config = cfg ?? meta.config;
      for (
        const k of ["dim", "depth", "heads", "mlpHidden", "ffn", "posGrid", "registers"] as const
      ) {
        if (config.vit[k] !== meta.config.vit[k]) {
          throw new InputError(
            `${path}: the run was started with vit.${k} = ${
              meta.config.vit[k]
            }, the config now says ` +
              `${config.vit[k]}; resume with the original config`,
          );
        }
      }
      if (JSON.stringify(config.head) !== JSON.stringify(meta.config.head)) {
        throw new InputError(
          `${path}: the heads differ from the run's (${JSON.stringify(meta.config.head)})`,
        );
      }
      const specs = Trainer.specs(config);
      const student = ParamArena.create(gpu, specs, { grads: true });
      const teacher = ParamArena.create(gpu, specs);
      for (const s of specs) {
        student.set(s.name, await f.tensor(`student.${s.name}`).f32());
        teacher.set(s.name, await f.tensor(`teacher.${s.name}`).f32());
      }
      const t = new Trainer(gpu, config, student, teacher);
      const put = async (name: string, dst: GpuTensor) => {
        const rec = f.tensor(name);
        if (rec.numel !== dst.numel) {
          throw new InputError(
            `${path}: ${name} has ${rec.numel} values, the trainer expects ${dst.numel}`,
          );
        }
        gpu.write(dst, await rec.f32());
      };
      for (let i = 0; i < t.#m.length; i++) {
        await put(`adam_m.${i}`, t.#m[i]);
        await put(`adam_v.${i}`, t.#v[i]);
      }
      await put("center.dino", t.#centers.dino);
      await put("center.ibot", t.#centers.ibot);
      t.iteration = meta.iteration;
      const { iteration: _i, config: _c, ...extra } = meta;
      return { trainer: t, extra };
    } finally {
      f.close();
    }
  }

  /** Frees everything on the GPU. */
  destroy(): void {
    this.student.destroy();
    this.teacher.destroy();
    this.gpu.release(
      ...this.#m,
      ...this.#v,
      ...this.#tables,
      this.#hyper,
      this.#sq,
      this.#momentum,
      this.#temp,
      this.#centers.dino,
      this.#centers.ibot,
    );
  }
}

function moduleOf(name: string): Module {
  if (name.startsWith("dino_head.")) return "dino_head";
  if (name.startsWith("ibot_head.")) return "ibot_head";
  return "backbone";
}
