/**
 * The fuzzer in the suite: about 3,000 seeded, structure-aware cases across
 * every reader of user files (.pth pickles and zips, safetensors, ViT
 * checkpoints, npy, tar shards, manifests, BMP, VOC, CSV, embeddings files,
 * training configs; tests/fuzz/targets.ts). Every case must end in success
 * or one of the reader's typed errors (naming the file where the reader
 * knows it), within a per-case time and peak-memory budget
 * (tests/fuzz/runner.ts: 3 s and 128 MiB, plus a part per input byte).
 *
 * The cases run in a process of their own (`deno task fuzz`'s runner), so a
 * case's peak memory is measured alone (test files share a process under
 * `deno test --parallel`), and a hang or a crash is reported, not inherited.
 * `BLOOM_FUZZ_SCALE=20 BLOOM_FUZZ_SEED=5 deno test -A tests/fuzz_test.ts`
 * runs 20× the cases from another seed; `deno task fuzz --minutes N` runs
 * longer and saves minimized reproducers of new failures.
 */
import { assert } from "./assert.ts";
import type { CaseResult } from "./fuzz/runner.ts";
import { TARGETS } from "./fuzz/targets.ts";

const SCALE = Math.max(1, Number(Deno.env.get("BLOOM_FUZZ_SCALE") ?? 1) || 1);
const SEED = Number(Deno.env.get("BLOOM_FUZZ_SEED") ?? 0) || 0;
/** Cases per unit of a target's weight (the weights sum to 25: ~3,100 cases in all). */
const PER_WEIGHT = 125;
const CASES = PER_WEIGHT * SCALE * TARGETS.reduce((n, t) => n + t.weight, 0);
const MAIN = new URL("./fuzz/main.ts", import.meta.url).pathname;

interface Summary {
  seed: number;
  cases: number;
  seconds: number;
  targets: Record<
    string,
    { cases: number; ok: number; errors: Record<string, number>; maxMs: number; maxPeak: number }
  >;
  failures: CaseResult[];
}

Deno.test(`fuzz: ${CASES} cases across every reader end in success or a typed error, within budget`, async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      MAIN,
      "--cases",
      String(CASES),
      "--seed",
      String(SEED),
      "--no-save",
      "--json",
      "--hang-seconds",
      "30",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim().split("\n");
  const stderr = new TextDecoder().decode(out.stderr);
  let summary: Summary;
  try {
    summary = JSON.parse(stdout[stdout.length - 1]);
  } catch {
    throw new Error(
      `the fuzz runner gave no summary (exit ${out.code}):\n${stderr}\n${stdout.join("\n")}`,
    );
  }
  if (Deno.env.get("BLOOM_FUZZ_VERBOSE")) {
    console.log(stdout.slice(0, -1).join("\n"));
  }
  assert(summary.cases === CASES, `${summary.cases} of ${CASES} cases ran:\n${stderr}`);
  const failures = summary.failures.map((r) =>
    `${r.target} ${r.failure!.kind}: ${
      r.failure!.detail.slice(0, 300)
    }\n    (deno task fuzz --target ${r.target} --seed ${r.seed} --case ${r.index})`
  );
  assert(failures.length === 0, `fuzz failures (first case of each kind):\n${failures.join("\n")}`);
  for (const t of TARGETS) {
    // Not vacuous: every generator reaches both sides, files read and files refused.
    const s = summary.targets[t.name];
    assert(s && s.ok > 0, `${t.name}: no generated file was read successfully`);
    assert(Object.keys(s.errors).length > 0, `${t.name}: no generated file was refused`);
  }
});
