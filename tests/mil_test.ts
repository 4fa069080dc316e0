/**
 * MIL heads and their training against the PyTorch reference
 * (tests/fixtures/eval/mil.json, written by scripts/oracles/mil_reference.py
 * with torch 1.13), plus the training loop's own logic.
 *
 * Tolerances: forward, backward and the optimiser run in f32 on both sides
 * with values of order 0.1–1 and short reductions (≤ 6 terms), so logits,
 * losses and gradients agree to ~1e-6; we allow atol 2e-5 + rtol 1e-4.
 * Eight SGD steps compound rounding a little: weights within atol 5e-5.
 */
import { ParamArena } from "../graph/arena.ts";
import { Graph } from "../graph/graph.ts";
import { crossEntropySoft } from "../graph/ops.ts";
import { Params } from "../graph/params.ts";
import type { Gpu } from "../kernels/runtime.ts";
import {
  BagStore,
  cosineLr,
  crossValidateMil,
  EarlyStopping,
  evaluateMil,
  type MilData,
  milForward,
  type MilHeadKind,
  type MilHeadShape,
  milLogits,
  milParamSpecs,
  NesterovSgd,
  patientBags,
  trainMil,
  validationSplit,
} from "../eval/mil.ts";
import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest, Rng } from "./helpers.ts";
import { readFixture } from "./fixtures.ts";

interface HeadCase {
  init: Record<string, number[]>;
  logits: number[][];
  losses: number[];
  grads: Record<string, number[]>;
  sgd: { lrs: number[]; after: Record<string, number[]> };
}
const fx = await readFixture("eval/mil.json") as {
  dim: number;
  classes: number;
  attentionHidden: number;
  classifierHidden: number;
  bags: number[][];
  codes: number[];
  lr: number;
  momentum: number;
  epochs: number;
  heads: Record<MilHeadKind, HeadCase>;
  cosine: number[];
};

const TOL = { atol: 2e-5, rtol: 1e-4 };

function shapeOf(kind: MilHeadKind): MilHeadShape {
  return {
    kind,
    dim: fx.dim,
    classes: fx.classes,
    attentionHidden: fx.attentionHidden,
    classifierHidden: fx.classifierHidden,
  };
}

/** An arena holding the fixture's initial weights, plus the bags and one-hot targets. */
function setup(gpu: Gpu, kind: MilHeadKind) {
  const shape = shapeOf(kind);
  const arena = ParamArena.create(gpu, milParamSpecs(shape), { grads: true });
  for (const [n, v] of Object.entries(fx.heads[kind].init)) arena.set(n, Float32Array.from(v));
  const bags = fx.bags.map((b) => gpu.tensor(Float32Array.from(b), [b.length / fx.dim, fx.dim]));
  const targets = fx.codes.map((c) => {
    const t = new Float32Array(fx.classes);
    t[c] = 1;
    return gpu.tensor(t, [1, fx.classes]);
  });
  const free = () => {
    arena.destroy();
    gpu.release(...bags, ...targets);
  };
  return { shape, arena, bags, targets, free };
}

for (const kind of ["multicolumn", "gated"] as const) {
  gpuTest(`mil ${kind}: forward and gradients match PyTorch`, async (gpu) => {
    const { shape, arena, bags, targets, free } = setup(gpu, kind);
    const ref = fx.heads[kind];
    try {
      for (let b = 0; b < bags.length; b++) {
        const g = new Graph(gpu);
        const ps = new Params(g, arena);
        const logits = milForward(ps, shape, g.input(bags[b]));
        const loss = crossEntropySoft(g, logits, g.input(targets[b]));
        const [z, l] = await gpu.readMany([logits.value, loss.value]);
        assertClose(z, ref.logits[b], TOL, `${kind} logits of bag ${b}`);
        assertClose(l, [ref.losses[b]], TOL, `${kind} loss of bag ${b}`);
        g.backward(loss); // gradients add up over the bags, as the summed loss's
        g.dispose();
      }
      for (const [name, want] of Object.entries(ref.grads)) {
        assertClose(await arena.readGrad(name), want, TOL, `${kind} d loss / d ${name}`);
      }
    } finally {
      free();
    }
  });

  gpuTest(
    `mil ${kind}: two epochs of Nesterov SGD with the cosine schedule match torch`,
    async (gpu) => {
      const { shape, arena, bags, targets, free } = setup(gpu, kind);
      const ref = fx.heads[kind];
      const sgd = new NesterovSgd(arena, { momentum: fx.momentum });
      try {
        for (let epoch = 0; epoch < fx.epochs; epoch++) {
          const lr = cosineLr(epoch, fx.lr, fx.epochs);
          assertClose([lr], [ref.sgd.lrs[epoch]], { rtol: 1e-12, atol: 0 }, "lr");
          for (let b = 0; b < bags.length; b++) {
            const g = new Graph(gpu);
            const ps = new Params(g, arena);
            g.backward(
              crossEntropySoft(g, milForward(ps, shape, g.input(bags[b])), g.input(targets[b])),
            );
            g.dispose();
            sgd.step(lr);
            arena.zeroGrads();
          }
        }
        for (const [name, want] of Object.entries(ref.sgd.after)) {
          assertClose(await arena.read(name), want, { atol: 5e-5, rtol: 1e-4 }, `${kind} ${name}`);
        }
      } finally {
        sgd.destroy();
        free();
      }
    },
  );
}

Deno.test("mil: cosine schedule equals torch's CosineAnnealingLR over 150 epochs", () => {
  const ours = fx.cosine.map((_, e) => cosineLr(e, 1e-3, 150));
  // torch steps the schedule recursively in float64; closed form agrees to rounding.
  assertClose(ours, fx.cosine, { rtol: 1e-9, atol: 0 });
});

Deno.test("mil: early stopping waits `patience` epochs without strict improvement", () => {
  const s = new EarlyStopping(3);
  const losses = [1.0, 0.8, 0.8, 0.9, 0.7, 0.75, NaN, 0.7];
  const got = losses.map((l, e) => s.update(e, l));
  assertEquals(got, ["improved", "improved", "wait", "wait", "improved", "wait", "wait", "stop"]);
  assertEquals([s.best, s.bestEpoch], [0.7, 4]);
  assertThrows(() => new EarlyStopping(0), RangeError, "patience=0");
});

Deno.test("mil: bags are patients; one label per patient", () => {
  const bags = patientBags(["a", "b", "a", "b"], ["p2", "p1", "p2", "p1"]);
  assertEquals(bags, [
    { patient: "p1", label: "b", rows: [1, 3] },
    { patient: "p2", label: "a", rows: [0, 2] },
  ]);
  assertThrows(
    () => patientBags(["a", "b"], ["p1", "p1"], "x.safetensors"),
    RangeError,
    "x.safetensors: patient 'p1' has cells labelled 'a' (row 0) and 'b' (row 1)",
  );
});

/**
 * Synthetic patients: every cell is N(0, I); a patient of class c1 or c2
 * also has two distinctive cells shifted by +4 along four dims of its own
 * (c1: dims 0–3, c2: dims 4–7); c0 patients have none. Only the presence of
 * those few cells tells the classes apart.
 */
function synthPatients(rng: Rng, patients: number, dim: number, prefix: string): MilData {
  const feats: number[] = [];
  const labels: string[] = [];
  const ids: string[] = [];
  for (let p = 0; p < patients; p++) {
    const cls = p % 3;
    const n = 8 + rng.int(8);
    for (let i = 0; i < n; i++) {
      const v = Array.from({ length: dim }, () => rng.normal());
      if (cls > 0 && i < 2) { for (let j = 0; j < 4; j++) v[(cls - 1) * 4 + j] += 4; }
      feats.push(...v);
      labels.push(`c${cls}`);
      ids.push(`${prefix}${String(p).padStart(2, "0")}`);
    }
  }
  return { features: Float32Array.from(feats), dim, labels, patients: ids, what: prefix };
}

gpuTest("mil end to end: both heads learn classes set by a few distinctive cells", async (gpu) => {
  const rng = new Rng(3);
  const train = synthPatients(rng, 12, 8, "train-");
  const test = synthPatients(rng, 12, 8, "test-");
  // A larger lr than the reference's 1e-3 so a few epochs suffice on 12 patients.
  const { results, rows } = await evaluateMil(gpu, train, test, {
    method: "synthetic",
    epochs: 5,
    lr: 0.05,
    valFraction: 0,
    attentionHidden: 16,
    classifierHidden: 8,
  });
  assertEquals(rows.map((r) => r.protocol), ["ABMIL (multi-column)", "ABMIL (gated)"]);
  for (const r of results) {
    const m = r.runs[0].metrics;
    assertEquals(m.n, 12, "one prediction per test patient");
    // Chance is 1/3 (untrained heads score 0.17–0.58 here); a head that found the
    // distinctive cells gets (nearly) every patient right.
    assert(m.accuracy >= 0.9, `${r.protocol}: accuracy ${m.accuracy}`);
  }
});

gpuTest("mil training: early stopping keeps the best validation epoch's weights", async (gpu) => {
  // Labels unrelated to the cells: a large lr overfits, validation loss turns up.
  const rng = new Rng(8);
  const n = 16;
  const data = synthPatients(rng, n, 8, "p");
  const bags = patientBags(
    data.labels.map((_, i) => `k${data.patients[i].charCodeAt(2) % 2}`),
    data.patients,
  );
  const classes = ["k0", "k1"];
  const codes = Int32Array.from(bags, (b) => classes.indexOf(b.label));
  const store = BagStore.upload(gpu, data.features, data.dim, bags);
  try {
    const task = { store, codes, classes };
    const all = bags.map((_, i) => i);
    const opts = {
      epochs: 60,
      lr: 0.5,
      patience: 3,
      valFraction: 0.25,
      seed: 5,
      attentionHidden: 16,
    };
    const model = await trainMil(gpu, task, "gated", all, opts);
    try {
      const h = model.history;
      assert(model.stoppedEarly, `ran all ${h.length} epochs`);
      assertEquals(
        h.length,
        model.bestEpoch + opts.patience + 1,
        "stops `patience` epochs after the best",
      );
      const best = Math.min(...h.map((e) => e.valLoss));
      assertEquals(h[model.bestEpoch].valLoss, best);
      // The restored weights give the best epoch's validation loss again.
      const { val } = validationSplit(all, codes, opts.valFraction, opts.seed);
      const z = await milLogits(gpu, task, model, val);
      let ce = 0;
      val.forEach((b, i) => {
        const row = z.subarray(2 * i, 2 * i + 2);
        const m = Math.max(row[0], row[1]);
        ce += m + Math.log(Math.exp(row[0] - m) + Math.exp(row[1] - m)) - row[codes[b]];
      });
      // f32 losses summed on the GPU vs float64 here: 1e-5.
      assertClose([ce / val.length], [best], { atol: 1e-5, rtol: 1e-5 }, "restored val loss");
    } finally {
      model.arena.destroy();
    }
  } finally {
    store.destroy();
  }
});

gpuTest(
  "mil cross-validation: patient-level folds, mean ± std rows; divergence is an error",
  async (gpu) => {
    const data = synthPatients(new Rng(4), 9, 8, "q");
    const stages: string[] = [];
    const { results, rows } = await crossValidateMil(gpu, data, {
      method: "cv",
      folds: 3,
      heads: ["gated"],
      epochs: 2,
      valFraction: 0,
      attentionHidden: 16,
      onStage: (s) => stages.push(s),
    });
    assertEquals(stages.length, 3);
    const runs = results[0].runs;
    const tested = runs.flatMap((r) => r.patients).sort();
    assertEquals(tested, [...new Set(data.patients)].sort(), "every patient tested exactly once");
    assertEquals(rows[0].accuracy.n, 3, "mean ± std over 3 folds");
    await assertRejects(
      () =>
        crossValidateMil(gpu, data, {
          method: "cv",
          folds: 3,
          heads: ["gated"],
          epochs: 3,
          lr: 1e30,
          valFraction: 0,
          attentionHidden: 16,
        }),
      RangeError,
      /training diverged \(mean loss (NaN|-?Infinity) in epoch \d\); lower the learning rate/,
    );
    assertThrows(
      () => patientBags(["a"], ["p", "q"], "f.st"),
      RangeError,
      "f.st: 1 labels but 2 patient ids",
    );
  },
);
