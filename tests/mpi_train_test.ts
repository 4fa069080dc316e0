/**
 * Data-parallel training under a real launcher: two ranks under
 * `mpirun --oversubscribe -np 2` on one adapter (llvmpipe here), micro-batch 4
 * each, against one process with batch 8 by accumulation (two micro-batches
 * of 4). After 2 steps the losses, gradient norms, and student and teacher
 * weights agree within 1e-5 relative, with Sinkhorn-Knopp and with centring;
 * `--resume` continues a 2-rank run on 1 rank and a 1-rank run on 2 ranks
 * along the uninterrupted trajectory; accumulation composes with ranks (2 ranks
 * × 2 micro-batches of 2 = 1 rank × 4 of 2); every rank's skipped images reach
 * rank 0's errors.jsonl; and `train --init FILE` needs the file on rank 0 only. The remaining differences are summation
 * order (MPI's sum of the ranks' partial sums against one sum over the
 * batch): a few f32 ulps, measured ≤ 1.3e-6 per tensor. Weights compare
 * norm-relative per tensor, except the key bias (see sameWeights).
 */
import { join } from "node:path";
import { openSafetensors } from "../data/safetensors.ts";
import { assert, assertEquals } from "./assert.ts";
import {
  HAVE_HYDRA,
  HAVE_MPIRUN,
  hydraArgs,
  mpirunArgs,
  mpiTest,
  run,
  synthesize,
  tinyConfig,
  workerCommand,
  writeJobs,
} from "./mpi_launch.ts";
import { readEmbeddings } from "../data/embeddings_file.ts";
import type { RunOptions } from "../pipelines/train/run.ts";

/** Relative tolerance of the comparisons (norm-relative for weight tensors). */
const TOL = 1e-5;

type Step = Record<string, number> & { grad_norm: Record<string, number> };

async function steps(out: string): Promise<Step[]> {
  const text = await Deno.readTextFile(join(out, "metrics.jsonl"));
  return text.trim().split("\n").map((l) => JSON.parse(l)).filter((o) => o.kind === "step");
}

function close(a: number, b: number, what: string) {
  assert(Math.abs(a - b) <= TOL * Math.abs(b) + 1e-9, `${what}: ${a} vs ${b}`);
}

/** Every step's losses and gradient norms agree. */
async function sameMetrics(got: string, want: string, label: string) {
  const [g, w] = [await steps(got), await steps(want)];
  assertEquals(g.map((s) => s.step), w.map((s) => s.step), `${label}: one line per step`);
  for (const [i, s] of w.entries()) {
    for (const k of ["dino", "ibot", "koleo", "total"]) {
      close(g[i][k], s[k], `${label} step ${i} ${k}`);
    }
    for (const m of ["backbone", "dino_head", "ibot_head"]) {
      close(g[i].grad_norm[m], s.grad_norm[m], `${label} step ${i} grad norm ${m}`);
    }
  }
}

/** Student and teacher weights in the resume files agree, tensor by tensor (norm-relative). */
async function sameWeights(got: string, want: string, label: string) {
  const [a, b] = await Promise.all(
    [got, want].map((d) => openSafetensors(join(d, "resume.safetensors"))),
  );
  try {
    const names = [...b.tensors.keys()].filter((n) => /^(student|teacher)\./.test(n));
    assert(names.length > 20, `${label}: ${names.length} weight tensors`);
    for (const name of names) {
      const [x, y] = [await a.tensor(name).f32(), await b.tensor(name).f32()];
      // The key bias's third of qkv.bias has a zero gradient (softmax ignores a constant added
      // to a row's logits): what it gets is rounding noise, which Adam scales to ±lr steps in
      // either run, so it is left out (it does not reach anything else).
      const keys = /attn\.qkv\.bias$/.test(name) ? [y.length / 3, (2 * y.length) / 3] : [0, 0];
      let d = 0, n = 0;
      for (let i = 0; i < y.length; i++) {
        if (i >= keys[0] && i < keys[1]) continue;
        d += (x[i] - y[i]) ** 2;
        n += y[i] ** 2;
      }
      assert(
        Math.sqrt(d) <= TOL * Math.sqrt(n) + 1e-12,
        `${label} ${name}: ${Math.sqrt(d / (n || 1))}`,
      );
    }
  } finally {
    a.close();
    b.close();
  }
}

/** The runs the tests compare, launched once. */
let shared: Promise<{ dir: string; data: string; bad: string[] }> | null = null;

function job(dir: string, data: string, name: string, over: Partial<RunOptions> = {}): RunOptions {
  const centering = name.startsWith("ce") ? "centering" : "sinkhorn_knopp";
  return {
    config: tinyConfig({ centering }),
    data,
    out: join(dir, name),
    steps: 2,
    saveEvery: 1,
    ...over,
  };
}

/** The synthetic cells plus 8 files that do not decode, spread over the class folders. */
async function withBadImages(dir: string): Promise<{ data: string; bad: string[] }> {
  const data = await synthesize(dir);
  const classes = [...Deno.readDirSync(dir)].filter((e) => e.isDirectory).map((e) => e.name);
  const bad: string[] = [];
  for (let i = 0; i < 8; i++) {
    const path = join(dir, classes[i % classes.length], `broken-${i}.png`);
    await Deno.writeTextFile(path, `not a png ${i}`);
    bad.push(path);
  }
  return { data, bad: bad.sort() };
}

function launchAll(): Promise<{ dir: string; data: string; bad: string[] }> {
  shared ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-mpi-train-" });
    const data = await synthesize(join(dir, "data"));
    const withBad = await withBadImages(join(dir, "with-bad"));
    const m2 = { config: tinyConfig({ microBatch: 2 }) };
    // One process: batch 8 in two micro-batches of 4 (and four of 2); a 4-step run for resuming.
    const one = await writeJobs(dir, "one", [
      job(dir, data, "sk-1"),
      job(dir, data, "ce-1"),
      job(dir, data, "sk-1-m2", m2),
      job(dir, data, "sk-1-long", { steps: 4 }),
    ]);
    let r = await run(workerCommand(1, one));
    assertEquals(r.code, 0, r.output);
    // Two ranks of 4 (and of two micro-batches of 2); the 1-rank 2-step run resumed to 4 steps on
    // 2 ranks; 3 steps (a whole data pass and more) over data with images that do not decode.
    await copyDir(join(dir, "sk-1"), join(dir, "sk-1-then-2"));
    const two = await writeJobs(dir, "two", [
      job(dir, data, "sk-2"),
      job(dir, data, "ce-2"),
      job(dir, data, "sk-2-m2", m2),
      job(dir, data, "sk-1-then-2", { steps: 4, resume: true }),
      job(dir, withBad.data, "sk-2-bad", { steps: 3 }),
    ]);
    r = await run(workerCommand(2, two));
    assertEquals(r.code, 0, r.output);
    assert(r.output.includes("2 ranks, 4 images each per step"), r.output);
    await Deno.writeTextFile(join(dir, "two.log"), r.output);
    return { dir, data, bad: withBad.bad };
  })();
  return shared;
}

async function copyDir(from: string, to: string) {
  const r = await run(["cp", "-a", from, to]);
  assertEquals(r.code, 0, r.output);
}

mpiTest("mpi train: 2 ranks × 4 equal 1 rank × 8 by accumulation (Sinkhorn-Knopp)", async () => {
  const { dir } = await launchAll();
  await sameMetrics(join(dir, "sk-2"), join(dir, "sk-1"), "sinkhorn");
  await sameWeights(join(dir, "sk-2"), join(dir, "sk-1"), "sinkhorn");
  // Only rank 0 wrote: one metrics line per step, one checkpoint per save.
  const ck = [...Deno.readDirSync(join(dir, "sk-2", "checkpoints"))].map((e) => e.name).sort();
  assertEquals(ck, ["teacher_0000001.pth"]);
});

mpiTest("mpi train: 2 ranks × 4 equal 1 rank × 8 by accumulation (centring)", async () => {
  const { dir } = await launchAll();
  await sameMetrics(join(dir, "ce-2"), join(dir, "ce-1"), "centering");
  await sameWeights(join(dir, "ce-2"), join(dir, "ce-1"), "centering");
});

mpiTest(
  "mpi train: accumulation composes with ranks (2 ranks × 2 × 2 = 1 rank × 4 × 2)",
  async () => {
    const { dir } = await launchAll();
    // KoLeo is a per-micro-batch term, so both sides use micro-batches of 2.
    await sameMetrics(join(dir, "sk-2-m2"), join(dir, "sk-1-m2"), "accumulation × ranks");
    await sameWeights(join(dir, "sk-2-m2"), join(dir, "sk-1-m2"), "accumulation × ranks");
  },
);

mpiTest("mpi train: images any rank skipped are in rank 0's errors.jsonl, once each", async () => {
  const { dir, bad } = await launchAll();
  const lines = (await Deno.readTextFile(join(dir, "sk-2-bad", "errors.jsonl"))).trim().split("\n");
  const paths = lines.map((l) => JSON.parse(l).path as string);
  // 3 steps read the whole first pass: every broken file was met by one rank or the other.
  assertEquals([...paths].sort(), bad, "each broken file once");
  const log = await Deno.readTextFile(join(dir, "two.log"));
  assert(/skipped \S+broken-\d\.png \(rank 1\): /.test(log), "rank 1 met some: " + log);
});

mpiTest(
  "mpi train: under MPICH's Hydra (integer-handle ABI) too",
  async () => {
    const { dir, data } = await launchAll();
    const jobs = await writeJobs(dir, "hydra", [job(dir, data, "sk-hydra")]);
    const worker = workerCommand(1, jobs);
    const r = await run(hydraArgs(2, worker));
    assertEquals(r.code, 0, r.output);
    assert(r.output.includes("MPICH ABI"), r.output);
    await sameMetrics(join(dir, "sk-hydra"), join(dir, "sk-1"), "hydra");
    await sameWeights(join(dir, "sk-hydra"), join(dir, "sk-1"), "hydra");
  },
  !HAVE_MPIRUN || !HAVE_HYDRA,
);

mpiTest("mpi embed: 2 ranks embed a part each, rank 0 merges: the one-process file", async () => {
  const { dir, data } = await launchAll();
  const embed = (ranks: number, out: string) => {
    const cli = new URL("../cli/embed.ts", import.meta.url).pathname;
    const cmd = [
      Deno.execPath(),
      "run",
      "-A",
      cli,
      "--weights",
      join(dir, "sk-1", "teacher_final.pth"),
    ];
    cmd.push("--heads", "2", "--input", data, "--out", out, "--size", "56", "--no-autotune");
    return run(ranks === 1 ? cmd : mpirunArgs(ranks, cmd));
  };
  const [one, two] = [join(dir, "one.safetensors"), join(dir, "two.safetensors")];
  for (const [ranks, out] of [[1, one], [2, two]] as const) {
    const r = await embed(ranks, out);
    assertEquals(r.code, 0, r.output);
    // Each rank names its adapter and place (here both share llvmpipe).
    if (ranks === 2) {
      for (const rank of [0, 1]) assert(r.output.includes(`(rank ${rank}/2 on `));
    }
  }
  const [a, b] = await Promise.all([one, two].map((p) => readEmbeddings(p)));
  assertEquals(b.rows, 20);
  assertEquals(b.paths, a.paths, "input order");
  assertEquals(b.features, a.features, "the same numbers");
});

mpiTest("mpi train: the train command needs --init on rank 0 only", async () => {
  const { dir, data } = await launchAll();
  const config = join(dir, "tiny.json");
  await Deno.writeTextFile(config, JSON.stringify(tinyConfig()));
  const cli = new URL("../cli/train.ts", import.meta.url).pathname;
  const out = join(dir, "init-on-rank-0");
  const train = (init: string) => [
    Deno.execPath(),
    "run",
    "-A",
    cli,
    ...["--config", config, "--init", init, "--data", data, "--out", out],
    ...["--steps", "1", "--no-autotune", "--quiet"],
  ];
  // MPMD: rank 1's --init names a file its machine does not have (only rank 0 reads it).
  const argv = [
    ...mpirunArgs(1, train(join(dir, "sk-1", "teacher_final.pth"))),
    ":",
    ...["-np", "1", ...train(join(dir, "not-on-this-node", "teacher_final.pth"))],
  ];
  const r = await run(argv);
  assertEquals(r.code, 0, r.output);
  assert(r.output.includes("2 ranks, 4 images each per step"), r.output);
  await Deno.stat(join(out, "teacher_final.pth"));
});

mpiTest("mpi train: --resume continues on another number of ranks (1 → 2, 2 → 1)", async () => {
  const { dir, data } = await launchAll();
  // 1 → 2: the one-rank run resumed at step 2 on two ranks.
  await sameMetrics(join(dir, "sk-1-then-2"), join(dir, "sk-1-long"), "resumed 1 → 2");
  await sameWeights(join(dir, "sk-1-then-2"), join(dir, "sk-1-long"), "resumed 1 → 2");
  // 2 → 1: the two-rank run resumed on one.
  await copyDir(join(dir, "sk-2"), join(dir, "sk-2-then-1"));
  const back = await writeJobs(dir, "back", [
    job(dir, data, "sk-2-then-1", { steps: 4, resume: true }),
  ]);
  const r = await run(workerCommand(1, back));
  assertEquals(r.code, 0, r.output);
  await sameMetrics(join(dir, "sk-2-then-1"), join(dir, "sk-1-long"), "resumed 2 → 1");
  await sameWeights(join(dir, "sk-2-then-1"), join(dir, "sk-1-long"), "resumed 2 → 1");
  await Deno.remove(dir, { recursive: true });
});
