/**
 * `deno task fuzz`: the in-suite fuzzer (tests/fuzz_test.ts), run longer.
 *
 *   deno task fuzz --minutes 30                 all targets for 30 minutes
 *   deno task fuzz --target pth,tar --cases 5000
 *   deno task fuzz --target pth --seed 7 --case 1141   one case, printed
 *   deno task fuzz --replay fuzz-findings/pth-memory-1a2b3c4d.pth --target pth
 *
 * Cases run in a child process, so a hang or a crash (out of memory) is a
 * finding rather than the end of the run: a watchdog kills a child that
 * stops answering, records the case it was on, and starts a new child after
 * it. Each new kind of failure (by signature, against what `--out` already
 * holds) is minimized in a child of its own and saved to `--out` with its
 * seed and case number; the summary lists the new ones.
 */
import { parseArgs } from "node:util";
import {
  caseInput,
  type CaseResult,
  count,
  formatTally,
  judge,
  knownSignatures,
  minimize,
  newTally,
  runCase,
  saveFinding,
  signature,
  type Tally,
} from "./runner.ts";
import { target, TARGETS } from "./targets.ts";

const HELP = `deno task fuzz [--minutes N | --cases N] [--target a,b] [--seed S] [--out DIR]
                [--case I] [--replay FILE] [--hang-seconds N] [--no-save] [--json]
targets: ${TARGETS.map((t) => t.name).join(", ")}`;

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    minutes: { type: "string" },
    cases: { type: "string" },
    target: { type: "string" },
    seed: { type: "string" },
    out: { type: "string", default: "fuzz-findings" },
    case: { type: "string" },
    replay: { type: "string" },
    "hang-seconds": { type: "string", default: "60" },
    "no-save": { type: "boolean" },
    json: { type: "boolean" },
    help: { type: "boolean" },
    // Internal: the child process that runs cases, and the one that minimizes a finding.
    child: { type: "string" },
    minimize: { type: "string" },
  },
});

function num(name: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) {
    console.error(`--${name}: expected a non-negative number, found '${v}'\n${HELP}`);
    Deno.exit(2);
  }
  return n;
}

const targets = flags.target ? flags.target.split(",").map((n) => target(n.trim())) : [...TARGETS];
const seed = num("seed", flags.seed, Date.now() % 1_000_000);
const tmp = await Deno.makeTempDir({ prefix: "bloom-fuzz-" });
const cleanup = () => Deno.remove(tmp, { recursive: true }).catch(() => {});

/** Per target, the next case index to run. */
type Progress = Record<string, number>;

/** Child: runs cases round-robin (by weight) from `progress` until `untilMs`, reporting on stdout. */
async function child(progress: Progress, untilMs: number, maxCases: number): Promise<void> {
  const enc = new TextEncoder();
  const out = (line: string) => Deno.stdout.writeSync(enc.encode(line + "\n"));
  let done = 0;
  while (Date.now() < untilMs && done < maxCases) {
    for (const t of targets) {
      for (let k = 0; k < t.weight && done < maxCases; k++) {
        const index = progress[t.name] ?? 0;
        progress[t.name] = index + 1;
        out(`S ${t.name} ${index}`);
        const r = await runCase(t, seed, index, tmp);
        out(`R ${JSON.stringify(r)}`);
        done++;
      }
    }
  }
}

/** Child: minimizes case `index` of `name` and saves it; prints the reproducer's path. */
async function minimizeChild(name: string, index: number, outDir: string): Promise<void> {
  const t = target(name);
  const input = caseInput(t, seed, index);
  const r = await runCase(t, seed, index, tmp);
  if (!r.failure) {
    console.log("no failure on rerun (flaky timing or memory?)");
    await saveFinding(outDir, t, r, input, null);
    return;
  }
  const sig = signature(t.name, r.failure);
  const resource = r.failure.kind === "slow" || r.failure.kind === "memory";
  const m = await minimize(t, input, sig, tmp, {
    maxAttempts: resource ? 60 : 3000,
    maxMs: resource ? 90_000 : 60_000,
  });
  console.log(await saveFinding(outDir, t, r, input, m.bytes));
}

/** Spawns this file as a child with `args`; resolves with its exit status and stdout lines. */
function spawn(args: string[]) {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--v8-flags=--max-old-space-size=3072",
      new URL(import.meta.url).pathname,
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Reads a child's stdout line by line, with a watchdog; returns why it stopped. */
async function drive(
  proc: Deno.ChildProcess,
  onLine: (line: string) => void,
  hangMs: number,
): Promise<{ code: number; hung: boolean; stderr: string }> {
  let hung = false;
  // Starting a child (loading and compiling the modules) gets 30 s on top.
  let timer = setTimeout(() => (hung = true, proc.kill("SIGKILL")), hangMs + 30_000);
  const stderrP = new Response(proc.stderr).text();
  const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    clearTimeout(timer);
    timer = setTimeout(() => (hung = true, proc.kill("SIGKILL")), hangMs);
    buf += value;
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  }
  clearTimeout(timer);
  const status = await proc.status;
  return { code: status.code, hung, stderr: (await stderrP).slice(-2000) };
}

/** Parent: runs children until the time or case budget is spent; minimizes and saves new findings. */
async function parent(minutes: number, maxCases: number, outDir: string, hangMs: number) {
  const started = Date.now();
  const until = started + minutes * 60_000;
  const known = await knownSignatures(outDir);
  const progress: Progress = {};
  const tally: Tally = newTally();
  const firstOf = new Map<string, CaseResult>();
  let last: [string, number] | null = null;
  let lastReport = Date.now();
  console.error(
    `fuzzing ${targets.map((t) => t.name).join(", ")} with seed ${seed} ` +
      (maxCases < Infinity ? `for ${maxCases} cases` : `for ${minutes} min`) +
      `; findings → ${outDir}`,
  );
  const note = (r: CaseResult) => {
    count(tally, r);
    if (!r.failure) return;
    const sig = signature(r.target, r.failure);
    if (!firstOf.has(sig)) {
      firstOf.set(sig, r);
      console.error(
        `${known.has(sig) ? "known" : "NEW"} ${r.failure.kind} in ${r.target} ` +
          `(seed ${seed}, case ${r.index}): ${r.failure.detail.slice(0, 200)}`,
      );
    }
  };
  while (Date.now() < until && tally.cases < maxCases) {
    const proc = spawn([
      "--child",
      JSON.stringify({ progress, until, maxCases: maxCases - tally.cases }),
      "--seed",
      String(seed),
      ...(flags.target ? ["--target", flags.target] : []),
    ]);
    const res = await drive(proc, (line) => {
      if (line.startsWith("S ")) {
        const [, name, index] = line.split(" ");
        last = [name, Number(index)];
        progress[name] = Number(index) + 1;
      } else if (line.startsWith("R ")) {
        note(JSON.parse(line.slice(2)));
        last = null;
      }
      if (Date.now() - lastReport > 60_000) {
        lastReport = Date.now();
        const s = (Date.now() - started) / 1000;
        console.error(
          `${tally.cases} cases in ${s.toFixed(0)} s (${(tally.cases / s).toFixed(0)}/s), ` +
            `${firstOf.size} kinds of failure`,
        );
      }
    }, hangMs);
    if (last !== null) {
      // The child died or hung inside a case: that case is the finding.
      const [name, index] = last as [string, number];
      const kind = res.hung ? "hang" : "crash";
      note({
        target: name,
        seed,
        index,
        inputBytes: caseInput(target(name), seed, index).length,
        ms: res.hung ? hangMs : 0,
        peakBytes: 0,
        outcome: kind,
        failure: {
          kind,
          detail: res.hung
            ? `no answer for ${hangMs / 1000} s`
            : `exit code ${res.code}: ${
              res.stderr.split("\n").filter(Boolean).slice(-3).join(" | ")
            }`,
        },
      });
      last = null;
    } else if (res.code !== 0) {
      console.error(`fuzz child failed outside a case (exit ${res.code}):\n${res.stderr}`);
      break;
    }
  }
  const secs = (Date.now() - started) / 1000;
  // Minimize and save each new kind of failure, each in a child of its own.
  const saved: string[] = [];
  for (const [sig, r] of firstOf) {
    if (known.has(sig) || flags["no-save"]) continue;
    const t = target(r.target);
    if (r.failure!.kind === "hang" || r.failure!.kind === "crash") {
      saved.push(await saveFinding(outDir, t, r, caseInput(t, seed, r.index), null));
      continue;
    }
    const proc = spawn([
      "--minimize",
      `${r.target}:${r.index}`,
      "--seed",
      String(seed),
      "--out",
      outDir,
    ]);
    const lines: string[] = [];
    const res = await drive(proc, (l) => lines.push(l), 180_000);
    if (res.code !== 0 || res.hung) {
      saved.push(await saveFinding(outDir, t, r, caseInput(t, seed, r.index), null));
    } else saved.push(lines[lines.length - 1]);
  }
  console.log(formatTally(tally));
  console.log(
    `${tally.cases} cases in ${secs.toFixed(0)} s (${(tally.cases / secs).toFixed(0)} cases/s), ` +
      `seed ${seed}: ${tally.failures.length} failing cases, ${firstOf.size} kinds, ` +
      `${saved.length} new`,
  );
  for (const [sig, r] of firstOf) {
    console.log(
      `${known.has(sig) ? "known" : "NEW  "} ${sig}\n      case ${r.index}: ${
        r.failure!.detail.slice(0, 300)
      }`,
    );
  }
  for (const p of saved) console.log(`saved ${p}`);
  if (flags.json) {
    // One line for tests/fuzz_test.ts: the tally per target and the first case of each failure.
    const targetsOut = Object.fromEntries(
      [...tally.targets].map(([k, v]) => [k, { ...v, errors: Object.fromEntries(v.errors) }]),
    );
    console.log(
      JSON.stringify({
        seed,
        cases: tally.cases,
        seconds: secs,
        targets: targetsOut,
        failures: [...firstOf.values()],
      }),
    );
  }
  return firstOf.size - [...firstOf.keys()].filter((s) => known.has(s)).length;
}

try {
  if (flags.help) {
    console.log(HELP);
  } else if (flags.child !== undefined) {
    const { progress, until, maxCases } = JSON.parse(flags.child);
    await child(progress, until ?? Infinity, maxCases ?? Infinity);
  } else if (flags.minimize !== undefined) {
    const [name, index] = flags.minimize.split(":");
    await minimizeChild(name, Number(index), flags.out!);
  } else if (flags.replay !== undefined) {
    if (targets.length !== 1) throw new Error("--replay needs one --target");
    const r = await judge(targets[0], await Deno.readFile(flags.replay), tmp);
    console.log(JSON.stringify(r, null, 2));
  } else if (flags.case !== undefined) {
    if (targets.length !== 1) throw new Error("--case needs one --target");
    console.log(
      JSON.stringify(await runCase(targets[0], seed, num("case", flags.case, 0), tmp), null, 2),
    );
  } else {
    const minutes = num("minutes", flags.minutes, flags.cases ? Infinity : 1);
    const cases = num("cases", flags.cases, Infinity);
    const fresh = await parent(
      minutes,
      cases,
      flags.out!,
      1000 * num("hang-seconds", flags["hang-seconds"], 60),
    );
    await cleanup();
    Deno.exit(fresh > 0 ? 1 : 0);
  }
} finally {
  await cleanup();
}
