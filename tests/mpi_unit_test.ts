/**
 * The MPI layer's parts that need no launcher: reading the launcher from the
 * environment, choosing the library and its ABI, splitting a global batch,
 * comparing ranks' facts, and — on n in-process "ranks" that meet in memory
 * (tests/mpi_loopback.ts) — the cross-rank Sinkhorn-Knopp and centring
 * against the one-process references over all rows, and the bucketed gradient
 * sum; rank 0's merge of the ranks' embedding parts with their failures; and
 * the deployment examples (deploy/) against the command line they drive.
 * tests/mpi_train_test.ts runs the real thing under mpirun.
 */
import { join } from "node:path";
import { ParamArena } from "../graph/arena.ts";
import { mulberry32 } from "../graph/random.ts";
import {
  sinkhornKnoppAcross,
  sinkhornKnoppRef,
  updateCenterAcross,
  updateCenterRef,
} from "../kernels/sinkhorn.ts";
import { abiFromStatics, MPICH_HANDLES, OPENMPI_SYMBOLS } from "../pipelines/mpi/abi.ts";
import { compareFacts, dataFingerprint, describeDifference } from "../pipelines/mpi/agree.ts";
import { GradientSync, planBuckets } from "../pipelines/mpi/gradients.ts";
import { detectLauncher } from "../pipelines/mpi/launcher.ts";
import {
  installAdvice,
  libraryCandidates,
  MissingMpiError,
  openLibMpi,
} from "../pipelines/mpi/libmpi.ts";
import { localMasks, rankBatch } from "../pipelines/mpi/shard.ts";
import { RunGuard } from "../pipelines/mpi/stop.ts";
import { crossReduce } from "../pipelines/mpi/tensors.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import { mergeParts, partPath } from "../pipelines/embed_run.ts";
import { readEmbeddings, writeEmbeddings } from "../data/embeddings_file.ts";
import { parseFlags } from "../cli/args.ts";
import { TRAIN } from "../cli/train.ts";
import { PRESETS } from "../pipelines/train/config.ts";
import { batchMasks, MaskingGenerator, masksFrom } from "../pipelines/train/masking.ts";
import { openLoader } from "../pipelines/loader.ts";
import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest, Rng } from "./helpers.ts";
import { loopback } from "./mpi_loopback.ts";

const env = (vars: Record<string, string>) => (n: string) => vars[n];

Deno.test("mpi launcher: Open MPI, Hydra, srun, PMIx and none, from the environment", () => {
  assertEquals(detectLauncher(env({})), null);
  assertEquals(
    detectLauncher(env({
      OMPI_COMM_WORLD_RANK: "1",
      OMPI_COMM_WORLD_SIZE: "4",
      OMPI_COMM_WORLD_LOCAL_RANK: "1",
      OMPI_COMM_WORLD_LOCAL_SIZE: "2",
      PMIX_RANK: "1",
    })),
    { kind: "openmpi", rank: 1, size: 4, localRank: 1, localSize: 2, name: "Open MPI's mpirun" },
  );
  const hydra = detectLauncher(env({ PMI_RANK: "2", PMI_SIZE: "3", MPI_LOCALRANKID: "0" }))!;
  assertEquals([hydra.kind, hydra.rank, hydra.size, hydra.localRank], ["hydra", 2, 3, 0]);
  // An sbatch script has SLURM_PROCID and SLURM_NTASKS but no job step: not a rank.
  assertEquals(detectLauncher(env({ SLURM_PROCID: "0", SLURM_NTASKS: "8" })), null);
  const srun = detectLauncher(env({
    SLURM_STEP_ID: "0",
    SLURM_PROCID: "5",
    SLURM_STEP_NUM_TASKS: "8",
    SLURM_LOCALID: "1",
    SLURM_NODEID: "2",
    SLURM_STEP_TASKS_PER_NODE: "2(x2),4",
  }))!;
  assertEquals([srun.kind, srun.rank, srun.size, srun.localRank, srun.localSize], [
    "slurm",
    5,
    8,
    1,
    4,
  ]);
  const pmix = detectLauncher(env({ PMIX_RANK: "3" }))!;
  assertEquals([pmix.kind, pmix.rank, pmix.size], ["pmix", 3, null]);
  assertThrows(
    () => detectLauncher(env({ OMPI_COMM_WORLD_RANK: "4", OMPI_COMM_WORLD_SIZE: "4" })),
    Error,
    "rank past the end",
  );
  assertThrows(() => detectLauncher(env({ PMI_RANK: "x" })), Error, "PMI_RANK=x");
});

Deno.test("mpi library: the launcher's own MPI first; advice names the Debian package", () => {
  assertEquals(libraryCandidates("openmpi")[0], "libmpi.so.40");
  assertEquals(libraryCandidates("hydra").slice(0, 2), ["libmpich.so.12", "libmpi.so.12"]);
  assert(installAdvice("openmpi").includes("apt-get install openmpi-bin"));
  assert(installAdvice("hydra").includes("apt-get install mpich"));
  const err = assertThrows(
    () => openLibMpi({ kind: "openmpi", name: "Open MPI's mpirun" }, "libbloom-no-such-mpi.so"),
    MissingMpiError,
  );
  for (
    const part of [
      "Open MPI's mpirun started this process",
      "libbloom-no-such-mpi.so",
      "openmpi-bin",
    ]
  ) {
    assert(err.message.includes(part), err.message);
  }
});

Deno.test("mpi ABI: MPICH's integer handles, Open MPI's symbol addresses", () => {
  const mpich = abiFromStatics({});
  assertEquals([mpich.name, mpich.handle, mpich.commWorld], ["mpich", "i32", 0x44000000]);
  assertEquals(mpich.types.f32, MPICH_HANDLES.types.f32);
  assertEquals(Deno.UnsafePointer.value(mpich.inPlace), 0xffffffffffffffffn);
  const names = [
    OPENMPI_SYMBOLS.commWorld,
    ...Object.values(OPENMPI_SYMBOLS.types),
    ...Object.values(OPENMPI_SYMBOLS.ops),
  ];
  const fake = Object.fromEntries(
    names.map((n, i) => [n, Deno.UnsafePointer.create(BigInt(0x1000 + 8 * i))]),
  );
  const ompi = abiFromStatics(fake);
  assertEquals([ompi.name, ompi.handle], ["openmpi", "pointer"]);
  assertEquals(Deno.UnsafePointer.value(ompi.commWorld as Deno.PointerValue), 0x1000n);
  assertEquals(Deno.UnsafePointer.value(ompi.inPlace), 1n);
  const { ompi_mpi_op_sum: _, ...partial } = fake;
  assertThrows(() => abiFromStatics(partial), Error, "ompi_mpi_op_sum");
});

Deno.test("mpi ABI: the installed libraries are read as what they are", () => {
  for (const [path, abi] of [["libmpi.so.40", "openmpi"], ["libmpich.so.12", "mpich"]]) {
    let lib;
    try {
      lib = openLibMpi(null, path);
    } catch {
      console.log(`  (${path} is not installed here: skipped)`);
      continue;
    }
    assertEquals(lib.abi.name, abi, path);
    lib.close();
  }
});

Deno.test("mpi batch: the global batch splits over ranks, or the error names the fix", () => {
  assertEquals(rankBatch({ batch: 8, microBatch: 4 }, { rank: 1, size: 2 }), {
    ranks: 2,
    rank: 1,
    global: 8,
    local: 4,
    first: 4,
    micro: 4,
    accumulation: 1,
  });
  assertEquals(rankBatch({ batch: 32, microBatch: 4 }, { rank: 0, size: 2 }).accumulation, 4);
  // A share smaller than the micro-batch runs as one pass.
  assertEquals(rankBatch({ batch: 8, microBatch: 8 }, { rank: 3, size: 4 }).micro, 2);
  const e = assertThrows(() => rankBatch({ batch: 12, microBatch: 4 }, { rank: 0, size: 8 }));
  assert(e.message.includes("--batch 12 does not split over 8 ranks"), e.message);
});

Deno.test("mpi batch: a rank's iBOT masks are its images' masks of the global batch", () => {
  const B = 6;
  const all = batchMasks(new MaskingGenerator(4), 2 * B, mulberry32(3));
  const n = 16;
  for (const [first, local] of [[0, 3], [3, 3], [2, 2]]) {
    const mine = localMasks(all, B, first, local);
    const want = new Uint8Array(2 * local * n);
    for (let c = 0; c < 2; c++) {
      for (let i = 0; i < local; i++) {
        const src = (c * B + first + i) * n;
        want.set(all.masks.subarray(src, src + n), (c * local + i) * n);
      }
    }
    assertEquals(mine, masksFrom(want, 2 * local));
  }
});

Deno.test("mpi data: rank shards are the one-rank batches' parts; every sample once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-mpi-shard-" });
  await writeSyntheticImageFolder(dir, { perClass: 4, size: 28, seed: 2 });
  const keys = async (batchSize: number, shard?: { index: number; count: number }) => {
    const loader = await openLoader(dir, { batchSize, seed: 9, shard, workers: 1 });
    const out: string[][] = [];
    for await (const b of loader.batches(1)) out.push(b.keys);
    return { out, length: loader.length };
  };
  const one = await keys(8);
  const ranks = [await keys(4, { index: 0, count: 2 }), await keys(4, { index: 1, count: 2 })];
  // 20 samples in runs of 4: rank 0 gets runs 0, 2, 4 (12), rank 1 runs 1, 3 (8).
  assertEquals(ranks.map((r) => r.length), [12, 8]);
  for (const [k, batch] of one.out.entries()) {
    if (batch.length < 8) continue;
    assertEquals(batch, [...ranks[0].out[k], ...ranks[1].out[k]], `global batch ${k}`);
  }
  const seen = ranks.flatMap((r) => r.out.flat()).sort();
  assertEquals(seen, one.out.flat().sort(), "every sample exactly once");
  assertEquals(new Set(seen).size, 20);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("mpi agreement: differences name the fact, the field and the ranks", () => {
  const a = { config: JSON.stringify({ batch: 8, vit: { dim: 32 } }), data: "20 entries" };
  const b = { config: JSON.stringify({ batch: 16, vit: { dim: 32 } }), data: "20 entries" };
  const c = { config: a.config, data: "19 entries" };
  assertEquals(compareFacts([a, a]), []);
  const d = compareFacts([a, b, c, b]);
  assertEquals(d.map((x) => x.fact), ["config", "data"]);
  assertEquals(describeDifference(d[0]), ["config.batch: 8 on rank 0, 16 on ranks 1, 3"]);
  assertEquals(describeDifference(d[1]), ["data: 20 entries on rank 0, 19 entries on rank 2"]);
});

Deno.test("mpi agreement: a data fingerprint changes with the files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-mpi-fp-" });
  await writeSyntheticImageFolder(dir, { perClass: 1, size: 28, seed: 1 });
  const before = await dataFingerprint(dir);
  assertEquals(await dataFingerprint(dir), before);
  const f = [...Deno.readDirSync(dir)].find((e) => e.isDirectory)!.name;
  const img = [...Deno.readDirSync(`${dir}/${f}`)][0].name;
  await Deno.writeFile(`${dir}/${f}/${img}`, new Uint8Array(10), { append: true });
  assert((await dataFingerprint(dir)) !== before, "appending to an image changes it");
  await Deno.remove(dir, { recursive: true });
});

gpuTest("mpi Sinkhorn-Knopp across 3 ranks = one process over all rows", async (gpu) => {
  const rng = new Rng(31);
  const K = 300;
  // Uneven shares, one of them empty (a rank without masked tokens).
  const shares = [5, 0, 9];
  const B = shares.reduce((a, b) => a + b);
  const all = rng.normals(B * K, 2);
  const temp = gpu.tensor(new Float32Array([0.05]));
  const comms = loopback(shares.length);
  let at = 0;
  const outs = await Promise.all(shares.map((rows, r) => {
    const x = gpu.tensor(all.slice(at * K, (at + rows) * K), [rows, K]);
    at += rows;
    return sinkhornKnoppAcross(gpu, x, temp, crossReduce(gpu, comms[r]), { count: B });
  }));
  const got = new Float32Array(B * K);
  at = 0;
  for (const q of outs) {
    got.set(await gpu.readF32(q), at * K);
    at += q.shape[0];
  }
  assertClose(got, sinkhornKnoppRef(all, B, K, 0.05), { rtol: 3e-5, atol: 1e-9 });
});

gpuTest("mpi centring across 2 ranks = one process's mean over all rows", async (gpu) => {
  const rng = new Rng(32);
  const K = 70;
  const shares = [4, 7];
  const B = 11;
  const all = rng.normals(B * K);
  const center0 = rng.normals(K);
  const comms = loopback(2);
  const centers = shares.map(() => gpu.tensor(center0.slice()));
  let at = 0;
  await Promise.all(shares.map((rows, r) => {
    const x = gpu.tensor(all.slice(at * K, (at + rows) * K), [rows, K]);
    at += rows;
    return updateCenterAcross(gpu, centers[r], x, 0.9, crossReduce(gpu, comms[r]), B);
  }));
  const want = updateCenterRef(center0, all, B, K, 0.9);
  for (const c of centers) assertClose(await gpu.readF32(c), want, { rtol: 1e-5, atol: 1e-6 });
});

gpuTest(
  "mpi gradients: buckets cover the arena; the sum over ranks is written back",
  async (gpu) => {
    const specs = [
      { name: "a", shape: [300] },
      { name: "b", shape: [10, 20] },
      { name: "c", shape: [5000] },
      { name: "d", shape: [7] },
    ];
    const arenas = [0, 1].map(() => ParamArena.create(gpu, specs, { grads: true }));
    const buckets = planBuckets(arenas[0], 4096);
    // Backward order (last parameter first), a bucket closing at 4 KiB unless one parameter is larger.
    assertEquals(buckets.map((b) => b.params.map((p) => p.name)), [["d"], ["c"], ["b", "a"]]);
    const rng = new Rng(33);
    const grads = arenas.map((a) => specs.map((s) => rng.normals(a.get(s.name).numel)));
    arenas.forEach((a, r) => specs.forEach((s, i) => gpu.write(a.get(s.name).grad, grads[r][i])));
    const comms = loopback(2);
    const stats = await Promise.all(arenas.map(async (a, r) => {
      const sync = new GradientSync(gpu, comms[r], a, buckets);
      // Ready out of order: the chain still reduces bucket 0 first (as every rank must).
      for (const name of ["a", "b", "d"]) sync.onParamReady(a.get(name));
      return await sync.finish();
    }));
    assertEquals(stats.map((s) => [s.buckets, s.early]), [[3, 2], [3, 2]]);
    for (const a of arenas) {
      for (const [i, s] of specs.entries()) {
        const want = grads[0][i].map((v, j) => v + grads[1][i][j]);
        assertClose(await a.readGrad(s.name), want, { rtol: 1e-6, atol: 1e-7 }, s.name);
      }
      a.destroy();
    }
  },
);

Deno.test("mpi stop: a write renamed whole just before the signal is named as the last good one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-guard-" });
  try {
    const guard = new RunGuard();
    const done = join(dir, "resume.safetensors");
    const partial = join(dir, "teacher_0000002.pth");
    let release = () => {};
    const gate = new Promise<void>((r) => release = r);
    // One write renamed into place whose await has not returned; one still at its .tmp.
    const a = guard.writing([done], async () => {
      await Deno.writeTextFile(done, "whole");
      await gate;
    }, () => guard.resumeStep = 2);
    const b = guard.writing([partial], async () => {
      await Deno.writeTextFile(`${partial}.tmp`, "half");
      await gate;
    }, () => guard.lastCheckpoint = { path: partial, step: 2 });
    await new Promise((r) => setTimeout(r, 20));
    guard.lastCheckpoint = { path: join(dir, "teacher_0000001.pth"), step: 1 };
    assertEquals(guard.removePartial(), [`${partial}.tmp`]);
    assertEquals(guard.resumeStep, 2);
    assert(
      guard.describe().includes("teacher_0000001.pth (step 1); --resume continues from step 2"),
    );
    release();
    await Promise.all([a, b]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mpi embed merge: the parts' failures go beside the merged file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-mpi-merge-" });
  try {
    const out = join(dir, "cells.safetensors");
    const meta = { arch: "vit_small", weights: "w.pth", pool: "cls" as const };
    // Rank r's part: rows of its images; ranks 0 and 2 also had images that did not decode.
    const failures = [
      `{"path":"a/bad.png","reason":"x"}\n`,
      "",
      `{"path":"c/bad.png","reason":"y"}\n`,
    ];
    for (let r = 0; r < 3; r++) {
      const part = partPath(out, r, 3);
      const features = Float32Array.from([r, r + 0.5]);
      await writeEmbeddings(part, { dim: 2, features, paths: [`img-${r}.png`], meta });
      if (failures[r]) await Deno.writeTextFile(`${part}.errors.jsonl`, failures[r]);
    }
    await Deno.writeTextFile(`${out}.errors.jsonl`, "a stale list from an earlier merge\n");
    assertEquals(await mergeParts(out), { rows: 3, parts: 3 });
    assertEquals(await Deno.readTextFile(`${out}.errors.jsonl`), failures.join(""));
    const merged = await readEmbeddings(out);
    assertEquals(merged.paths, ["img-0.png", "img-1.png", "img-2.png"]);
    assertEquals(merged.meta["bloom.failed"], "2");
    // No failures anywhere: no errors file beside the merge (a stale one goes).
    for (const r of [0, 2]) await Deno.remove(`${partPath(out, r, 3)}.errors.jsonl`);
    await mergeParts(out);
    await assertRejects(() => Deno.stat(`${out}.errors.jsonl`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The launched `./bloom train …` of a deployment file: its flags, shell variables left out. */
function trainArgs(text: string): string[] {
  const joined = text.replace(/\\\n\s*/g, " ");
  const line = joined.split("\n").find((l) => /(srun|mpirun) .*\.\/bloom train\s+--/.test(l));
  assert(line, "a launched ./bloom train command");
  return line.slice(line.indexOf("./bloom train") + "./bloom train".length).trim().split(/\s+/)
    .filter((t) => !t.startsWith('"${') && !t.startsWith("$resume"))
    .map((t) => t.replace(/^"(.*)"$/, "$1"));
}

/** The flags parsed, and the global batch split over `ranks` as the run will split it. */
function checkTrain(args: string[], ranks: number, where: string) {
  const f = parseFlags(TRAIN, args);
  assert(f !== "help", where);
  assert(f.preset && f.init && f.batch && f["micro-batch"], `${where}: ${args.join(" ")}`);
  const cfg = { ...PRESETS[f.preset](), batch: f.batch, microBatch: f["micro-batch"] };
  const share = rankBatch(cfg, { rank: ranks - 1, size: ranks });
  assertEquals(share.global, ranks * share.micro * share.accumulation, where);
  return { f, share };
}

Deno.test("mpi deploy: the sbatch script and the MPIJob run train commands that parse and split", async () => {
  const root = new URL("../deploy/", import.meta.url).pathname;
  const sbatch = await Deno.readTextFile(join(root, "slurm/train.sbatch"));
  const bash = await new Deno.Command("bash", { args: ["-n", join(root, "slurm/train.sbatch")] })
    .output();
  assert(bash.success, new TextDecoder().decode(bash.stderr));
  const directive = (name: string) =>
    Number(new RegExp(`#SBATCH --${name}=(\\d+)`).exec(sbatch)![1]);
  const slurmRanks = directive("nodes") * directive("ntasks-per-node");
  assertEquals(directive("gpus-per-task"), 1, "one GPU per rank");
  assert(/srun [^\n]*--kill-on-bad-exit=1/.test(sbatch), "a dead rank ends the step");
  const s = checkTrain(trainArgs(sbatch), slurmRanks, "train.sbatch");
  assertEquals([slurmRanks, s.share.local, s.share.accumulation], [32, 38, 1]);

  const job = await Deno.readTextFile(join(root, "kubernetes/mpijob.yaml"));
  const workers = Number(/Worker:\s*\n\s*replicas: (\d+)/.exec(job)![1]);
  assertEquals(Number(/mpirun [^\n]*-np (\d+)/.exec(job)![1]), workers, "one rank per worker");
  assert(/slotsPerWorker: 1\b/.test(job) && /nvidia\.com\/gpu: 1\b/.test(job), "one GPU per rank");
  assert(/NVIDIA_DRIVER_CAPABILITIES[\s\S]*?graphics/.test(job), "Vulkan in the container");
  const k = checkTrain(trainArgs(job), workers, "mpijob.yaml");
  assertEquals([workers, k.share.local, k.share.accumulation], [8, 152, 4]);

  // The image carries the library bloom opens first under Open MPI's mpirun.
  const docker = await Deno.readTextFile(join(root, "Dockerfile"));
  assert(/openmpi-bin/.test(docker) && /libopenmpi3/.test(docker), "Open MPI in the image");
  assertEquals(libraryCandidates("openmpi")[0], "libmpi.so.40");
});
