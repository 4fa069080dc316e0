/**
 * The command line: flag tables parse to typed values or a UsageError naming
 * the flag (with "did you mean" for misspelt flags and choices); every
 * command's --help lists each flag's type, range, choices and default, under
 * the name the user typed; bad input exits 2 with the message alone, other
 * failures 1; and flags first: a bad --input, --data or --out state fails
 * before any GPU work, with nothing created in --out.
 */
import { join } from "node:path";
import { asTyped, command, type FlagSpec, parseFlags, usage, UsageError } from "../cli/args.ts";
import { APP } from "../cli/app.ts";
import { EMBED } from "../cli/embed.ts";
import { EVAL } from "../cli/eval.ts";
import { INGEST } from "../cli/ingest.ts";
import { PREDICT } from "../cli/predict.ts";
import { TRAIN } from "../cli/train.ts";
import { WEIGHTS_CLI } from "../cli/weights.ts";
import { closest, editDistance } from "../pipelines/suggest.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { noGpuPreload } from "./helpers.ts";

const dec = new TextDecoder();
const root = new URL("..", import.meta.url).pathname;

const DEMO = command({
  name: "demo",
  summary: "A test command.",
  flags: {
    input: { type: "string", value: "PATH", required: true, help: "the input" },
    weights: { type: "string", help: "the weights" },
    batch: { type: "int", min: 1, default: 32, help: "batch" },
    size: { type: "int", min: 14, multipleOf: 14, default: 224, help: "side" },
    split: { type: "number", above: 0, below: 1, help: "fraction" },
    margin: { type: "number", min: 0, max: 2, default: 0.1, help: "margin" },
    pool: { type: "choice", choices: ["cls", "mean", "cls+mean"], default: "cls", help: "pool" },
    protocol: { type: "choice", choices: ["knn", "linear", "mil"], list: true, help: "protocols" },
    tag: { type: "string", multiple: true, help: "tags" },
    quiet: { type: "boolean", help: "quiet" },
  },
});

function parse(args: string[]) {
  const v = parseFlags(DEMO, args);
  if (v === "help") throw new Error("unexpected help");
  return v;
}

/** The UsageError message `args` give. */
function usageError(args: string[]): string {
  return assertThrows(() => parseFlags(DEMO, args), UsageError).message;
}

Deno.test("parseFlags: typed values, defaults, lists and repeats", () => {
  const v = parse(["--input", "x", "--batch", "8", "--split=0.8", "--margin", "0.5", "--quiet"]);
  // Typed without a cast: these lines are checked by deno check.
  const batch: number = v.batch;
  const pool: "cls" | "mean" | "cls+mean" = v.pool;
  const quiet: boolean = v.quiet;
  assertEquals([v.input, batch, v.size, v.split, v.margin, pool, quiet], [
    "x",
    8,
    224,
    0.8,
    0.5,
    "cls",
    true,
  ]);
  assertEquals(v.protocol, undefined);
  assertEquals(v.weights, undefined);
  const w = parse(["--input=a", "--protocol", "mil, knn,mil", "--tag", "a", "--tag", "b"]);
  assertEquals(w.protocol, ["mil", "knn"]);
  assertEquals(w.tag, ["a", "b"]);
  assertEquals(w.quiet, false);
  assertEquals(parseFlags(DEMO, ["--bogus", "-h"]), "help", "--help wins over other errors");
  assertEquals(parseFlags(DEMO, ["--help"]), "help");
});

Deno.test("parseFlags: every bad command line is a UsageError naming the flag and the fix", () => {
  const cases: [string[], RegExp][] = [
    [[], /^--input is required: the input \((?:deno task|\S*bloom) demo --help lists the flags\)$/],
    [["--input", "x", "extra"], /^unexpected argument 'extra'; flags start with --/],
    [["--input", "x", "--", "--batch"], /^unexpected argument '--batch'/],
    [["--input", "x", "--wieghts", "w"], /^unknown flag --wieghts; did you mean --weights\?/],
    [["--input", "x", "--weight=w"], /^unknown flag --weight; did you mean --weights\?/],
    [["--input", "x", "--protcol", "knn"], /did you mean --protocol\?/],
    [["--input", "x", "--zzz"], /^unknown flag --zzz \((?:deno task|\S*bloom) demo --help/],
    [["--input", "x", "-q"], /^unknown flag -q \(/],
    [
      ["--input", "x", "--pool", "maen"],
      /^--pool must be one of cls, mean, cls\+mean, got 'maen'; did you mean 'mean'\?$/,
    ],
    [
      ["--input", "x", "--pool", "zzzz"],
      /^--pool must be one of cls, mean, cls\+mean, got 'zzzz'$/,
    ],
    [
      ["--input", "x", "--protocol", "knn,lineer"],
      /^--protocol must be a comma-separated list of knn, linear, mil, got 'lineer'; did you mean 'linear'\?$/,
    ],
    [["--input", "x", "--protocol", ","], /^--protocol needs at least one of knn, linear, mil/],
    [["--input", "x", "--batch", "0"], /^--batch must be an integer ≥ 1, got '0'$/],
    [["--input", "x", "--batch", "1.5"], /^--batch must be an integer ≥ 1, got '1.5'$/],
    [["--input", "x", "--batch", "abc"], /^--batch must be an integer ≥ 1, got 'abc'$/],
    [
      ["--input", "x", "--size", "100"],
      /^--size must be an integer ≥ 14 and a multiple of 14, got '100'$/,
    ],
    [["--input", "x", "--split", "1"], /^--split must be a number in \(0, 1\), got '1'$/],
    [["--input", "x", "--margin=-1"], /^--margin must be a number in \[0, 2\], got '-1'$/],
    [["--input", "x", "--margin", "1e999"], /^--margin must be a number in \[0, 2\]/],
    [["--input", "x", "--margin", ""], /^--margin must be a number/],
    [["--input"], /^--input needs a value: the input \[text; required\]$/],
    [["--input", "--batch", "3"], /^--input needs a value/],
    [["--input", "x", "--quiet=yes"], /^--quiet is a switch and takes no value, got 'yes'$/],
    [["--input", "x", "--input", "y"], /^--input is given twice \('x' and 'y'\)$/],
  ];
  for (const [args, re] of cases) {
    const msg = usageError(args);
    assert(re.test(msg), `${JSON.stringify(args)}: ${msg}`);
  }
});

Deno.test("closest: typos within a third of the word, swaps count once, prefixes", () => {
  assertEquals(editDistance("wieghts", "weights"), 1);
  assertEquals(editDistance("kitten", "sitting"), 3);
  assertEquals(editDistance("", "abc"), 3);
  const flags = ["weights", "arch", "heads", "input", "out", "format", "batch", "patch-tokens"];
  assertEquals(closest("wieghts", flags), "weights");
  assertEquals(closest("inptu", flags), "input");
  assertEquals(closest("patch", flags), "batch");
  assertEquals(closest("patch-tok", flags), "patch-tokens");
  assertEquals(closest("xyz", flags), undefined);
  assertEquals(closest("outt", flags), "out");
});

/** Every flag's line in `text`: its name, type, range, choices and default. */
function assertHelpListsFlags(name: string, text: string, flags: Record<string, FlagSpec>) {
  const lines = text.split("\n");
  for (const [flag, f] of Object.entries(flags)) {
    const at = lines.findIndex((l) => l.startsWith(`  --${flag} `) || l === `  --${flag}`);
    assert(at >= 0, `${name} --help has no line for --${flag}:\n${text}`);
    // The entry: its line, plus continuation lines indented under the help column.
    let entry = lines[at];
    for (let i = at + 1; i < lines.length && lines[i].startsWith("    "); i++) entry += lines[i];
    const want: string[] = [f.help];
    if (f.type === "boolean") want.push("[switch");
    if (f.type === "string") want.push("[text");
    if (f.type === "int") want.push("[int");
    if (f.type === "number") want.push("[number");
    if (f.type === "int" || f.type === "number") {
      if (f.min !== undefined && f.max !== undefined) want.push(`[${f.min}, ${f.max}]`);
      else if (f.min !== undefined) want.push(`≥ ${f.min}`);
      if (f.above !== undefined) want.push(`(${f.above}`);
      if (f.below !== undefined) want.push(`${f.below})`);
    }
    if (f.type === "choice") want.push(f.choices.join(", "));
    if (f.type !== "boolean" && f.default !== undefined) want.push(`default ${f.default}]`);
    if (f.type !== "boolean" && f.required) want.push("required]");
    for (const w of want) assert(entry.includes(w), `${name} --${flag}: no '${w}' in '${entry}'`);
  }
}

Deno.test("usage: every command's --help lists each flag's type, range, choices and default", () => {
  for (const cmd of [EMBED, EVAL, INGEST, TRAIN, PREDICT, WEIGHTS_CLI, APP, DEMO] as const) {
    assertHelpListsFlags(cmd.name, usage(cmd), cmd.flags);
  }
  const text = usage(DEMO);
  assert(text.includes("[int ≥ 14, multiple of 14; default 224]"), text);
  assert(text.includes("[number in (0, 1)]"), text);
  assert(text.includes("[comma-separated list of knn, linear, mil]"), text);
});

/** Runs `deno run` on a script of the repo with `args`; env added to (not replacing) ours. */
async function run(
  script: string,
  args: string[],
  opts: { env?: Record<string, string>; preload?: string } = {},
) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--no-check",
      ...(opts.preload ? ["--preload", opts.preload] : []),
      script.startsWith("/") ? script : join(root, script),
      ...args,
    ],
    env: { BLOOM_CLI: "", ...opts.env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("every command's --help runs and names the command as the user typed it", async () => {
  const scripts: [string, string][] = [
    ["embed", "cli/embed.ts"],
    ["eval", "cli/eval.ts"],
    ["ingest", "cli/ingest.ts"],
    ["train", "cli/train.ts"],
    ["bench", "bench/main.ts"],
    ["weights", "cli/weights.ts"],
    ["predict", "cli/predict.ts"],
    ["app", "cli/app.ts"],
  ];
  const results = await Promise.all(scripts.map(([, s]) => run(s, ["--help"])));
  results.forEach((r, i) => {
    const [name] = scripts[i];
    assertEquals(r.code, 0, r.stderr);
    assert(r.stdout.startsWith(`usage: deno task ${name} [flags]\n`), r.stdout);
    assert(/\[(switch|text|int|number|one of|comma)/.test(r.stdout), `${name}: no types`);
  });
  const [bloom, typo] = await Promise.all([
    run("cli/ingest.ts", ["--help"], { env: { BLOOM_CLI: "./bloom" } }),
    run("cli/ingest.ts", ["--inptu", "x"], { env: { BLOOM_CLI: "./bloom" } }),
  ]);
  assert(bloom.stdout.startsWith("usage: ./bloom ingest [flags]\n"), bloom.stdout);
  assertEquals(typo.code, 2);
  assertEquals(
    typo.stderr,
    "error: unknown flag --inptu; did you mean --input? (./bloom ingest --help lists the flags)\n",
  );
  // The wrapper exports BLOOM_CLI as it was invoked.
  const wrapper = await Deno.readTextFile(join(root, "bloom"));
  assert(/^export BLOOM_CLI="\$0"$/m.test(wrapper), "./bloom sets BLOOM_CLI");
});

Deno.test("asTyped: a command the layers below name is shown as the user runs it", () => {
  const was = Deno.env.get("BLOOM_CLI");
  try {
    Deno.env.set("BLOOM_CLI", "./bloom");
    assertEquals(
      asTyped("x holds shards but no manifest.json; rerun the same deno task ingest command"),
      "x holds shards but no manifest.json; rerun the same ./bloom ingest command",
    );
    Deno.env.set("BLOOM_CLI", "");
    assertEquals(asTyped("write one with `deno task embed`"), "write one with `deno task embed`");
  } finally {
    if (was === undefined) Deno.env.delete("BLOOM_CLI");
    else Deno.env.set("BLOOM_CLI", was);
  }
});

Deno.test("runMain: bad input exits 2 with the message alone; other errors exit 1", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-args-" });
  const script = join(dir, "main.ts");
  const url = (p: string) => new URL(p, `file://${root}`).href;
  await Deno.writeTextFile(
    script,
    `import { runMain, UsageError } from "${url("cli/args.ts")}";
import { CorruptFileError, InputError } from "${url("data/errors.ts")}";
import { EmbeddingsFileError } from "${url("data/embeddings_file.ts")}";
const kind = Deno.args[0];
runMain(() => {
  if (kind === "input") throw new InputError("--data /x does not exist");
  if (kind === "usage") throw new UsageError("--batch must be an integer");
  if (kind === "file") throw new CorruptFileError("bad CRC", { file: "w.pth", key: "data/0" });
  if (kind === "emb") throw new EmbeddingsFileError("e.npy", "labels", "none");
  if (kind === "code") return Promise.resolve(3);
  throw new Error("kernel exploded");
});
`,
  );
  const go = (kind: string, env: Record<string, string> = {}) => run(script, [kind], { env });
  const [input, usageErr, file, emb, code, other, debug] = await Promise.all([
    go("input"),
    go("usage"),
    go("file"),
    go("emb"),
    go("code"),
    go("other"),
    go("other", { BLOOM_DEBUG: "1" }),
  ]);
  assertEquals([input.code, input.stderr], [2, "error: --data /x does not exist\n"]);
  assertEquals([usageErr.code, usageErr.stderr], [2, "error: --batch must be an integer\n"]);
  assertEquals([file.code, file.stderr], [2, "error: w.pth: data/0: bad CRC\n"]);
  assertEquals([emb.code, emb.stderr], [2, "error: e.npy: labels: none\n"]);
  assertEquals(code.code, 3);
  assertEquals([other.code, other.stderr], [1, "error: kernel exploded\n"]);
  assertEquals(debug.code, 1);
  assert(debug.stderr.includes("at ") && debug.stderr.includes("main.ts"), debug.stderr);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("flags first: bad paths and combinations exit 2 before any GPU work, nothing in --out", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-flags-first-" });
  // Any touch of WebGPU fails the process with exit 1: a pass proves no GPU work started.
  const noGpu = await noGpuPreload(dir);
  const cells = join(dir, "cells");
  await Deno.mkdir(join(cells, "A"), { recursive: true });
  await Deno.writeTextFile(join(dir, "bad.pth"), "not a checkpoint");
  const few = join(dir, "few");
  await writeSyntheticImageFolder(few, {
    perClass: 1,
    size: 28,
    classes: ["basophil", "eosinophil", "monocyte"],
  });
  const out = (name: string) => join(dir, name);
  const cases: [string, string[], RegExp, string | null][] = [
    [
      "cli/embed.ts",
      ["--random-weights", "--out", out("e1/x.safetensors")],
      /--input is required/,
      "e1",
    ],
    [
      "cli/embed.ts",
      ["--random-weights", "--input", out("nope"), "--out", out("e2/x.safetensors")],
      /--input .*nope does not exist/,
      "e2",
    ],
    [
      "cli/embed.ts",
      ["--weights", out("bad.pth"), "--input", cells, "--out", out("e3/x.safetensors")],
      /bad\.pth/,
      "e3",
    ],
    ["cli/embed.ts", ["--input", cells, "--out", out("e4/x.npy")], /--random-weights/, "e4"],
    [
      "cli/embed.ts",
      ["--random-weights", "--input", cells, "--out", out("e5/x.npy"), "--patch-tokens"],
      /--patch-tokens needs the safetensors format/,
      "e5",
    ],
    [
      "cli/embed.ts",
      ["--random-weights", "--input", cells, "--out", out("e6/x.npy"), "--part", "3/3"],
      /--part 3\/3/,
      "e6",
    ],
    [
      "cli/train.ts",
      ["--data", out("nope"), "--out", out("t1")],
      /--data .*nope does not exist/,
      "t1",
    ],
    [
      "cli/train.ts",
      ["--data", cells, "--eval", out("nope"), "--out", out("t2")],
      /--eval .*nope does not exist/,
      "t2",
    ],
    ["cli/train.ts", ["--resume", "--out", out("t3")], /nothing to resume in/, "t3"],
    ["cli/train.ts", ["--init", out("bad.pth"), "--out", out("t4")], /bad\.pth/, "t4"],
    [
      "cli/train.ts",
      ["--batch", "4", "--micro-batch", "3", "--out", out("t5")],
      /training config: microBatch must be an integer ≥ 2 that divides batch \(4\)/,
      "t5",
    ],
    [
      "cli/train.ts",
      ["--config", out("none.json"), "--preset", "demo", "--out", out("t6")],
      /--config and --preset: give one/,
      "t6",
    ],
    [
      "cli/train.ts",
      ["--data", few, "--out", out("t7")],
      /--data .*few: 3 images are fewer than one batch of 32; lower --batch or add data/,
      "t7",
    ],
    ["cli/train.ts", ["--data", cells, "--out", out("t8")], /--data: no images found in/, "t8"],
    ["cli/train.ts", ["--presett", "demo"], /did you mean --preset\?/, null],
    [
      "cli/eval.ts",
      ["--train", out("nope.safetensors")],
      /nope\.safetensors: file: cannot open/,
      null,
    ],
    [
      "cli/eval.ts",
      ["--train", out("nope.safetensors"), "--out", out("no/dir/m.json")],
      /--out .*: the folder .*no\/dir does not exist/,
      null,
    ],
    [
      "cli/ingest.ts",
      ["--input", out("nope"), "--layout", "imagefolder", "--out", out("i1")],
      /--input '.*nope' does not exist/,
      "i1",
    ],
  ];
  const results = await Promise.all(cases.map(([s, args]) => run(s, args, { preload: noGpu })));
  results.forEach((r, i) => {
    const [script, args, re, made] = cases[i];
    const what = `${script} ${args.join(" ")}`;
    assertEquals(r.code, 2, `${what}: ${r.stderr}`);
    assert(re.test(r.stderr), `${what}: ${r.stderr}`);
    assert(!r.stderr.includes("GPU was touched"), `${what}: ${r.stderr}`);
    if (made) {
      let exists = true;
      try {
        Deno.statSync(out(made));
      } catch {
        exists = false;
      }
      assert(!exists, `${what}: created ${out(made)}`);
    }
  });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train: a ViT preset without --init warns that it starts from random weights", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-train-warn-" });
  // The warning comes after the checks and before the GPU, which stops these runs there.
  const noGpu = await noGpuPreload(dir);
  const cells = join(dir, "cells");
  await writeSyntheticImageFolder(cells, {
    perClass: 1,
    size: 28,
    classes: ["basophil", "eosinophil"],
  });
  const opts = { preload: noGpu };
  const [vit, demo, init] = await Promise.all([
    run(
      "cli/train.ts",
      ["--preset", "dinobloom-s", "--data", cells, "--batch", "2", "--out", join(dir, "a")],
      opts,
    ),
    run("cli/train.ts", ["--data", cells, "--batch", "2", "--out", join(dir, "b")], opts),
    run("cli/train.ts", ["--preset", "dinobloom-s", "--init", join(dir, "w.pth")], opts),
  ]);
  assertEquals(vit.code, 1, vit.stderr);
  assert(vit.stderr.includes("the GPU was touched"), vit.stderr);
  assert(
    /warning: no --init: the vit_small backbone starts from random weights/.test(vit.stderr),
    vit.stderr,
  );
  assertEquals(demo.code, 1, demo.stderr);
  assert(
    !demo.stderr.includes("warning"),
    `the demo model is meant to start fresh: ${demo.stderr}`,
  );
  assertEquals(init.code, 2, init.stderr);
  assert(!init.stderr.includes("warning"), init.stderr);
  await Deno.remove(dir, { recursive: true });
});
