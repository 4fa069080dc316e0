/**
 * One (and two) full DinoBloom training steps against a PyTorch reference
 * written from docs/recipe.md (scripts/oracles/train_step.py, Debian torch 1.13):
 * the same initial weights, crops and masks; every loss term within 1e-4
 * relative, gradient norms within 1e-4, and the updated student and teacher
 * weights within 1e-4 (norm-relative per tensor; the updates themselves —
 * new − old — within 2e-3, Adam's first steps being sign-like). Also: the
 * schedules against DINOv2's formulas and gradient accumulation.
 */
import { writeNpy } from "../data/npy.ts";
import { openPth } from "../data/pth.ts";
import { writePth } from "../data/pth_writer.ts";
import type { TrainConfig } from "../pipelines/train/config.ts";
import { batchMasks, MaskingGenerator } from "../pipelines/train/masking.ts";
import { buildSchedules, CosineSchedule } from "../pipelines/train/schedule.ts";
import { mulberry32 } from "../graph/random.ts";
import { Trainer } from "../pipelines/train/trainer.ts";
import { getGpu } from "../kernels/runtime.ts";
import { assert, assertEquals } from "./assert.ts";
import { hasPython, Rng } from "./helpers.ts";
import { tinyTrainConfig } from "./fixtures.ts";
import { relErr } from "./vit_oracle.ts";

const torch = await hasPython("torch", "numpy");

function tinyConfig(over: Partial<TrainConfig> = {}): TrainConfig {
  return tinyTrainConfig(4, {
    microBatch: 4,
    epochs: 4,
    epochLength: 1,
    warmupEpochs: 1,
    freezeLastLayerEpochs: 1,
    warmupTeacherTempEpochs: 2,
    baseLr: 0.02,
    seed: 3,
    ...over,
  }, { depth: 2 });
}

/**
 * A trainer whose weights look trained rather than freshly initialised
 * (LayerScale 1e-5 would make every CLS token alike and KoLeo's distances
 * ill-conditioned): the same random values in student and teacher.
 */
async function makeTrainer(cfg: TrainConfig): Promise<Trainer> {
  const t = await Trainer.create(await getGpu(), cfg);
  const rng = new Rng(21);
  for (const p of t.student.order) {
    const v = rng.normals(p.numel, 0.1);
    if (/norm\d?\.weight$|weight_g$/.test(p.name)) v.forEach((x, i) => (v[i] = 1 + x));
    if (p.name.endsWith("gamma")) v.forEach((x, i) => (v[i] = 0.3 + x));
    t.student.set(p.name, v);
    t.teacher.set(p.name, v);
  }
  return t;
}

/** Random crops and masks for `steps` steps. */
function inputs(cfg: TrainConfig, steps: number) {
  const rng = new Rng(11);
  const grid = cfg.imageSize / cfg.vit.patch;
  const gen = new MaskingGenerator(grid);
  const rand = mulberry32(5);
  return Array.from({ length: steps }, () => {
    const n = 2 * cfg.batch * 3 * cfg.imageSize * cfg.imageSize;
    return { crops: rng.normals(n), masks: batchMasks(gen, 2 * cfg.batch, rand) };
  });
}

Deno.test("schedules: cosine with warm-up and freeze as DINOv2's CosineScheduler", () => {
  const s = new CosineSchedule({
    base: 1,
    final: 0.1,
    totalIters: 10,
    warmupIters: 3,
    freezeIters: 2,
  });
  // freeze: 0, 0; warm-up linspace(0, 1, 3): 0, 0.5, 1; cosine over 5 iterations from 1.
  const want = [0, 0, 0, 0.5, 1];
  for (let i = 0; i < 5; i++) assert(Math.abs(s.at(i) - want[i]) < 1e-12, `it ${i}`);
  for (let i = 0; i < 5; i++) {
    const c = 0.1 + 0.45 * (1 + Math.cos((Math.PI * i) / 5));
    assert(Math.abs(s.at(5 + i) - c) < 1e-12, `cosine it ${i}`);
  }
  assertEquals(s.at(10), 0.1);
  assertEquals(s.at(1e6), 0.1);
  const all = buildSchedules({
    lr: 1e-3,
    minLr: 1e-6,
    epochs: 3,
    warmupEpochs: 1,
    freezeLastLayerEpochs: 1,
    weightDecay: 0.04,
    weightDecayEnd: 0.2,
    momentumTeacher: 0.994,
    finalMomentumTeacher: 1,
    teacherTemp: 0.07,
    warmupTeacherTemp: 0.04,
    warmupTeacherTempEpochs: 2,
    epochLength: 10,
  });
  assertEquals(all.lastLayerLr.at(9), 0, "last layer frozen for the first epoch");
  assert(all.lastLayerLr.at(10) === all.lr.at(10));
  assert(Math.abs(all.teacherTemp.at(0) - 0.04) < 1e-12 && all.teacherTemp.at(19) === 0.07);
  assertEquals(all.teacherTemp.at(25), 0.07);
  assert(Math.abs(all.wd.at(0) - 0.04) < 1e-12 && all.wd.at(30) === 0.2);
  assert(Math.abs(all.momentum.at(0) - 0.994) < 1e-12);
});

Deno.test({
  name: "train step: two DinoBloom steps match the PyTorch reference",
  ignore: !torch,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const gpu = await getGpu();
    const dir = await Deno.makeTempDir({ prefix: "bloom-train-oracle-" });
    const cfg = tinyConfig();
    const trainer = await makeTrainer(cfg);
    await writePth(`${dir}/init.pth`, { teacher: await trainer.teacherStateDict() });
    const init = await trainer.student.readAll();
    const steps = inputs(cfg, 2);
    const schedule = [];
    const ours = [];
    for (const [i, st] of steps.entries()) {
      await writeNpy(`${dir}/crops_${i}.npy`, {
        dtype: "f32",
        shape: [2 * cfg.batch, 3, cfg.imageSize, cfg.imageSize],
        data: st.crops,
      });
      await writeNpy(`${dir}/masks_${i}.npy`, {
        dtype: "u8",
        shape: [2 * cfg.batch, st.masks.masks.length / (2 * cfg.batch)],
        data: st.masks.masks,
      });
      const s = trainer.scheduleAt(i);
      schedule.push({
        lr: s.lr,
        wd: s.wd,
        momentum: s.momentum,
        teacher_temp: s.teacherTemp,
        last_layer_lr: s.lastLayerLr,
      });
      const crops = gpu.tensor(st.crops, [2 * cfg.batch, 3, cfg.imageSize, cfg.imageSize]);
      ours.push(await trainer.step(crops, st.masks));
      gpu.release(crops);
    }
    assertEquals(schedule[0].last_layer_lr, 0, "the prototype layer is frozen at step 0");
    await Deno.writeTextFile(
      `${dir}/config.json`,
      JSON.stringify({
        vit: { dim: 32, depth: 2, heads: 2, mlp: 64, pos_grid: 4 },
        head: { hidden: 32, bottleneck: 16, prototypes: 64 },
        patch_embed_lr_mult: cfg.patchEmbedLrMult,
        clip: cfg.clipGrad,
        koleo_eps: cfg.koleoEps,
        centering: cfg.centering,
        steps: 2,
        schedule,
      }),
    );
    const script = new URL("../scripts/oracles/train_step.py", import.meta.url).pathname;
    const out = await new Deno.Command("/usr/bin/python3", { args: [script, dir], stderr: "piped" })
      .output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const ref = JSON.parse(await Deno.readTextFile(`${dir}/losses.json`));
    for (let i = 0; i < 2; i++) {
      for (const k of ["dino", "ibot", "koleo", "total"] as const) {
        const a = ours[i][k];
        const b = ref[i][k];
        assert(Math.abs(a - b) <= 1e-4 * Math.abs(b) + 1e-7, `step ${i} ${k}: ${a} vs torch ${b}`);
      }
      assertEquals(ours[i].maskedPatches, ref[i].masked);
      for (const m of ["backbone", "dino_head", "ibot_head"] as const) {
        const a = ours[i].gradNorm[m];
        const b = ref[i].grad_norms[m];
        assert(Math.abs(a - b) <= 1e-4 * b, `step ${i} grad norm ${m}: ${a} vs torch ${b}`);
      }
    }
    for (
      const [tag, arena] of [["student", trainer.student], ["teacher", trainer.teacher]] as const
    ) {
      const torchState = await openPth(`${dir}/${tag}.pth`);
      const mine = await arena.readAll();
      for (const [name, full] of mine) {
        const key = name.startsWith("dino_head.") || name.startsWith("ibot_head.")
          ? name
          : `backbone.${name}`;
        let t = await torchState.tensor(key).f32();
        let v = full;
        let v0 = init.get(name)!;
        if (name.endsWith("attn.qkv.bias")) {
          // The key bias has an exactly zero gradient (softmax ignores a per-query constant);
          // both sides update it from rounding noise that Adam normalises to ±lr. Compare q and v.
          const D = v.length / 3;
          const qv = (a: Float32Array) =>
            Float32Array.from([...a.subarray(0, D), ...a.subarray(2 * D)]);
          [t, v, v0] = [qv(t), qv(v), qv(v0)];
        }
        const err = relErr(v, t);
        assert(err <= 1e-4, `${tag} ${name} differs from torch by ${err.toExponential(2)}`);
        const d = v.map((x, i) => x - v0[i]);
        const dt = t.map((x, i) => x - v0[i]);
        if (dt.some((x) => x !== 0)) {
          const errD = relErr(d, dt);
          assert(
            errD <= 2e-3,
            `${tag} ${name}: update differs from torch's by ${errD.toExponential(2)}`,
          );
        }
      }
      torchState.close();
    }
    trainer.destroy();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "train step: gradient accumulation over micro-batches gives the full-batch update",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const gpu = await getGpu();
    // KoLeo's neighbours are searched per micro-batch, so it is off for this comparison.
    const full = await makeTrainer(tinyConfig({ koleoWeight: 0 }));
    const acc = await makeTrainer(tinyConfig({ koleoWeight: 0, microBatch: 2 }));
    const [st] = inputs(full.cfg, 1);
    const crops = gpu.tensor(st.crops, [8, 3, 56, 56]);
    const a = await full.step(crops, st.masks);
    const b = await acc.step(crops, st.masks);
    for (const k of ["dino", "ibot"] as const) {
      assert(Math.abs(a[k] - b[k]) <= 1e-5 * Math.abs(a[k]), `${k}: ${a[k]} vs ${b[k]}`);
    }
    const pa = await full.student.readAll();
    const pb = await acc.student.readAll();
    for (const [n, v] of pa) {
      const err = relErr(pb.get(n)!, v);
      assert(err < 1e-5, `${n} differs by ${err}`);
    }
    gpu.release(crops);
    full.destroy();
    acc.destroy();
  },
});
