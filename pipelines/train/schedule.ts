/**
 * DINOv2's schedules: a cosine from a base to a final value after an optional
 * frozen stretch and a linear warm-up (CosineScheduler), evaluated per
 * iteration; past the end it stays at the final value.
 */
import type { TrainConfig } from "./config.ts";

/** One schedule's parameters, in iterations. */
export interface CosineSpec {
  base: number;
  final: number;
  totalIters: number;
  warmupIters?: number;
  startWarmup?: number;
  freezeIters?: number;
}

/** A cosine schedule with freeze and linear warm-up, as DINOv2's CosineScheduler. */
export class CosineSchedule {
  readonly spec: CosineSpec;
  readonly #values: Float64Array;

  constructor(spec: CosineSpec) {
    const warm = spec.warmupIters ?? 0;
    const freeze = spec.freezeIters ?? 0;
    if (warm + freeze > spec.totalIters) {
      throw new RangeError(
        `schedule: warm-up (${warm}) + freeze (${freeze}) exceed total iterations (${spec.totalIters})`,
      );
    }
    this.spec = spec;
    const v = new Float64Array(spec.totalIters);
    const start = spec.startWarmup ?? 0;
    // np.linspace(start, base, warm): both ends included.
    for (let i = 0; i < warm; i++) {
      v[freeze + i] = warm === 1 ? start : start + (spec.base - start) * (i / (warm - 1));
    }
    const n = spec.totalIters - warm - freeze;
    for (let i = 0; i < n; i++) {
      v[freeze + warm + i] = spec.final +
        0.5 * (spec.base - spec.final) * (1 + Math.cos((Math.PI * i) / n));
    }
    this.#values = v;
  }

  /** The value at iteration `it` (final value past the end). */
  at(it: number): number {
    return it >= this.spec.totalIters ? this.spec.final : this.#values[Math.max(0, it)];
  }

  /** Overrides the first `n` values (DINOv2 zeroes the last layer's lr for the first epoch). */
  zeroFirst(n: number): this {
    this.#values.fill(0, 0, Math.min(n, this.#values.length));
    return this;
  }
}

/** The four schedules of a DinoBloom run. */
export interface Schedules {
  lr: CosineSchedule;
  lastLayerLr: CosineSchedule;
  wd: CosineSchedule;
  momentum: CosineSchedule;
  teacherTemp: CosineSchedule;
}

/** Schedule settings: the training config's (epochs are `epochLength` iterations), and the lr. */
export type ScheduleConfig =
  & Pick<
    TrainConfig,
    | "minLr"
    | "epochs"
    | "warmupEpochs"
    | "freezeLastLayerEpochs"
    | "weightDecay"
    | "weightDecayEnd"
    | "momentumTeacher"
    | "finalMomentumTeacher"
    | "teacherTemp"
    | "warmupTeacherTemp"
    | "warmupTeacherTempEpochs"
    | "epochLength"
  >
  & {
    /** Peak learning rate after sqrt batch scaling. */
    lr: number;
  };

/** DINOv2's sqrt scaling rule: lr = base_lr · sqrt(global batch / 1024). */
export function scaledLr(baseLr: number, globalBatch: number): number {
  return baseLr * Math.sqrt(globalBatch / 1024);
}

/** Builds the schedules the way DINOv2's build_schedulers does. */
export function buildSchedules(c: ScheduleConfig): Schedules {
  const total = c.epochs * c.epochLength;
  const lrSpec: CosineSpec = {
    base: c.lr,
    final: c.minLr,
    totalIters: total,
    warmupIters: c.warmupEpochs * c.epochLength,
    startWarmup: 0,
  };
  const tempIters = c.warmupTeacherTempEpochs * c.epochLength;
  return {
    lr: new CosineSchedule(lrSpec),
    lastLayerLr: new CosineSchedule(lrSpec).zeroFirst(c.freezeLastLayerEpochs * c.epochLength),
    wd: new CosineSchedule({ base: c.weightDecay, final: c.weightDecayEnd, totalIters: total }),
    momentum: new CosineSchedule({
      base: c.momentumTeacher,
      final: c.finalMomentumTeacher,
      totalIters: total,
    }),
    teacherTemp: new CosineSchedule({
      base: c.teacherTemp,
      final: c.teacherTemp,
      totalIters: tempIters,
      warmupIters: tempIters,
      startWarmup: c.warmupTeacherTemp,
    }),
  };
}
