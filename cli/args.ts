/**
 * The one module command-line entry points parse flags with. A command
 * declares its flags in a table (kind, range, choices, default, help line);
 * `parseFlags` turns the arguments into typed values or a UsageError naming
 * the flag, and `usage` renders `--help` from the same table. It wraps
 * `node:util` `parseArgs` (JSR's @std/cli is out of reach from our
 * machines); swapping later means changing this file only.
 *
 * Exit codes (`runMain`): 0 done; 2 bad input (UsageError for the command
 * line, InputError for paths, files and configs), printed as the message
 * alone; 1 anything else (BLOOM_DEBUG=1 prints the stack).
 */
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { InputError } from "../data/errors.ts";
import { parseSha256 } from "../data/hash.ts";
import { closest } from "../pipelines/suggest.ts";

interface FlagBase {
  /** One line for the usage text. */
  help: string;
  short?: string;
}

/** A free-form value (path, name, list). */
export interface StringFlag extends FlagBase {
  type: "string";
  default?: string;
  required?: boolean;
  /** May be given several times; the value is then a list. */
  multiple?: boolean;
  /** What the value is, in the usage line (default VALUE): FILE, DIR, PATH… */
  value?: string;
}

/** A switch: present or not. */
export interface BooleanFlag extends FlagBase {
  type: "boolean";
}

/** Bounds of a numeric flag: `min`/`max` inclusive, `above`/`below` exclusive. */
export interface Range {
  min?: number;
  max?: number;
  above?: number;
  below?: number;
}

/** A whole number within a range. */
export interface IntFlag extends FlagBase, Range {
  type: "int";
  default?: number;
  required?: boolean;
  multipleOf?: number;
}

/** A finite number within a range. */
export interface NumberFlag extends FlagBase, Range {
  type: "number";
  default?: number;
  required?: boolean;
}

/** One of a fixed set of names; with `list`, a comma-separated subset. */
export interface ChoiceFlag extends FlagBase {
  type: "choice";
  choices: readonly string[];
  list?: boolean;
  default?: string;
  required?: boolean;
}

/** One flag of a command. */
export type FlagSpec = StringFlag | BooleanFlag | IntFlag | NumberFlag | ChoiceFlag;

/** A command's flags, by name (without the leading --). */
export type FlagTable = Record<string, FlagSpec>;

/** The value a flag parses to. */
export type FlagValue<S extends FlagSpec> = S extends BooleanFlag ? boolean
  : S extends IntFlag | NumberFlag ? number
  : S extends { type: "choice"; choices: readonly (infer C)[]; list: true } ? C[]
  : S extends { type: "choice"; choices: readonly (infer C)[] } ? C
  : S extends { multiple: true } ? string[]
  : string;

/** Whether a flag always has a value: a switch, or one with a default or required. */
type AlwaysSet<S> = S extends BooleanFlag ? true
  : S extends { default: unknown } ? true
  : S extends { required: true } ? true
  : false;

/** What `parseFlags` returns for a table: typed, optional where absent is possible. */
export type FlagValues<F extends FlagTable> =
  & { -readonly [K in keyof F as AlwaysSet<F[K]> extends true ? K : never]: FlagValue<F[K]> }
  & { -readonly [K in keyof F as AlwaysSet<F[K]> extends true ? never : K]?: FlagValue<F[K]> };

/** A command: its name (the task), what it does, its flags. */
export interface Command<F extends FlagTable = FlagTable> {
  name: string;
  summary: string;
  flags: F;
  /** Text after the flag list in `--help`. */
  epilog?: string;
  /** Appended to "unexpected argument 'x'": where such a value goes instead. */
  positionalHint?: string;
}

/** The flags of every command that decodes images and runs a model: embed, train. */
export const RUN_FLAGS = {
  workers: { type: "int", min: 1, help: "image decoding threads (default: cores)" },
  quiet: { type: "boolean", help: "no progress line" },
  "follow-links": {
    type: "boolean",
    help: "folder inputs: follow symbolic links out of the folder (default: skipped, reported)",
  },
  "no-autotune": {
    type: "boolean",
    help: "skip measuring kernel variants for this model (done once per adapter, then cached)",
  },
} as const satisfies FlagTable;

/** The flag of every command that reads a checkpoint file: embed, train, predict. */
export const VERIFY_FLAGS = {
  "verify-sha256": {
    type: "string",
    value: "HEX",
    help: "refuse the checkpoint unless its SHA-256 is HEX (64 hex digits, as sha256sum prints)",
  },
} as const satisfies FlagTable;

/** The flag of every command that holds a lock on its output: ingest, embed, train, predict. */
export const WAIT_FLAGS = {
  wait: {
    type: "boolean",
    help: "if another run is writing the same output, wait for it to finish (default: stop, " +
      "naming that run)",
  },
} as const satisfies FlagTable;

/**
 * `--verify-sha256`'s hash (VERIFY_FLAGS), checked while the flags are:
 * 64 hex digits, and `flag` (`--weights`, `--init`), whose `file` it
 * verifies, given. Undefined without it.
 */
export function verifyHash(
  sha: string | undefined,
  file: string | undefined,
  flag: string,
): string | undefined {
  if (sha === undefined) return undefined;
  if (file === undefined) throw new UsageError(`--verify-sha256 checks ${flag} FILE: give ${flag}`);
  return parseSha256(sha, "--verify-sha256");
}

/** Declares a command; keeps the flag table's literal types for `parseFlags`. */
export function command<const F extends FlagTable>(c: Command<F>): Command<F> {
  return c;
}

/**
 * An error in the user's command line: an unknown flag, a missing or bad
 * value, a bad combination. Part of the InputError family (exit code 2).
 */
export class UsageError extends InputError {
  override name = "UsageError";
}

/**
 * How the user runs a task, for help and error texts: `./bloom embed` when
 * run through the ./bloom wrapper (which sets BLOOM_CLI), else
 * `deno task embed`.
 */
export function invocation(task: string): string {
  let cli: string | undefined;
  try {
    cli = Deno.env.get("BLOOM_CLI");
  } catch { /* no env permission: the plain form */ }
  return cli ? `${cli} ${task}` : `deno task ${task}`;
}

/** A range in words: "≥ 1", "in [1, 100]", "in (0, 1)". */
export function describeRange(r: Range): string {
  const lo = r.min !== undefined ? `[${r.min}` : r.above !== undefined ? `(${r.above}` : null;
  const hi = r.max !== undefined ? `${r.max}]` : r.below !== undefined ? `${r.below})` : null;
  if (lo && hi) return `in ${lo}, ${hi}`;
  if (r.min !== undefined) return `≥ ${r.min}`;
  if (r.above !== undefined) return `> ${r.above}`;
  if (r.max !== undefined) return `≤ ${r.max}`;
  if (r.below !== undefined) return `< ${r.below}`;
  return "";
}

/** What a flag accepts, in words: "int ≥ 1", "one of cls, mean", "a path". */
function describeKind(f: FlagSpec): string {
  switch (f.type) {
    case "boolean":
      return "switch";
    case "string":
      return f.multiple ? "text, repeatable" : "text";
    case "int":
    case "number": {
      const parts = [f.type, describeRange(f)];
      const kind = parts.filter(Boolean).join(" ");
      return f.type === "int" && f.multipleOf ? `${kind}, multiple of ${f.multipleOf}` : kind;
    }
    case "choice":
      return `${f.list ? "comma-separated list of" : "one of"} ${f.choices.join(", ")}`;
  }
}

/** The bracket after a flag's help: type, range or choices, default, required. */
function describeFlag(f: FlagSpec): string {
  const parts = [describeKind(f)];
  if (f.type !== "boolean" && f.default !== undefined) parts.push(`default ${f.default}`);
  if (f.type !== "boolean" && f.required) parts.push("required");
  return `[${parts.join("; ")}]`;
}

function metavar(f: FlagSpec): string {
  switch (f.type) {
    case "boolean":
      return "";
    case "string":
      return ` ${f.value ?? "VALUE"}`;
    case "int":
      return " N";
    case "number":
      return " X";
    case "choice":
      return f.list ? " NAME,…" : " NAME";
  }
}

/** Renders the usage text (`--help`) of a command from its flag table. */
export function usage(cmd: Command): string {
  const lines = [`usage: ${invocation(cmd.name)} [flags]`, "", cmd.summary, "", "flags:"];
  const width = 26;
  for (const [name, f] of Object.entries(cmd.flags)) {
    const left = `  --${name}${metavar(f)}${f.short ? `, -${f.short}` : ""}`;
    const pad = left.length < width ? left.padEnd(width) : `${left}\n${"".padEnd(width)}`;
    const line = `${pad} ${f.help} ${describeFlag(f)}`;
    // Past 100 columns the bracket goes on its own line under the help text.
    lines.push(
      line.length - line.lastIndexOf("\n") - 1 <= 100
        ? line
        : `${pad} ${f.help}\n${"".padEnd(width)} ${describeFlag(f)}`,
    );
  }
  lines.push(`${"  --help, -h".padEnd(width)} show this text`);
  if (cmd.epilog) lines.push("", cmd.epilog);
  return lines.join("\n");
}

/** Where to read about the flags, for the end of a usage error. */
function seeHelp(cmd: Command): string {
  return `(${invocation(cmd.name)} --help lists the flags)`;
}

/** Parses one raw value of flag `name` against its spec. */
function convert(name: string, f: FlagSpec, raw: string): unknown {
  const flag = `--${name}`;
  switch (f.type) {
    case "string":
    case "boolean":
      return raw;
    case "int":
    case "number": {
      const n = Number(raw);
      const ok = raw.trim() !== "" && Number.isFinite(n) &&
        (f.type === "number" || /^\s*[+-]?\d+\s*$/.test(raw)) &&
        (f.min === undefined || n >= f.min) && (f.max === undefined || n <= f.max) &&
        (f.above === undefined || n > f.above) && (f.below === undefined || n < f.below) &&
        (f.type !== "int" || !f.multipleOf || n % f.multipleOf === 0);
      if (!ok) {
        const what = f.type === "int" ? "an integer" : "a number";
        const tail = [
          describeRange(f),
          f.type === "int" && f.multipleOf ? `and a multiple of ${f.multipleOf}` : "",
        ]
          .filter(Boolean).join(" ");
        throw new UsageError(`${flag} must be ${what}${tail ? ` ${tail}` : ""}, got '${raw}'`);
      }
      return n;
    }
    case "choice": {
      const one = (v: string) => {
        if (f.choices.includes(v)) return v;
        const guess = closest(v, f.choices);
        throw new UsageError(
          `${flag} must be ${f.list ? "a comma-separated list of" : "one of"} ` +
            `${f.choices.join(", ")}, got '${v}'` + (guess ? `; did you mean '${guess}'?` : ""),
        );
      };
      if (!f.list) return one(raw);
      const names = raw.split(",").map((s) => s.trim()).filter(Boolean);
      if (names.length === 0) {
        throw new UsageError(`${flag} needs at least one of ${f.choices.join(", ")}`);
      }
      return [...new Set(names.map(one))];
    }
  }
}

/**
 * Parses `args` against the command's flags into typed values, or "help" for
 * `--help`/`-h`. Throws UsageError naming the flag: an unknown flag (with the
 * closest known one), a missing or malformed value, a value out of range or
 * not among the choices (with the closest choice), a flag given twice, a
 * missing required flag, or a positional argument.
 */
export function parseFlags<F extends FlagTable>(
  cmd: Command<F>,
  args: string[],
): FlagValues<F> | "help" {
  // deno-lint-ignore no-explicit-any
  const options: Record<string, any> = { help: { type: "boolean", short: "h" } };
  for (const [name, f] of Object.entries(cmd.flags)) {
    options[name] = { type: f.type === "boolean" ? "boolean" : "string" };
    if (f.short !== undefined) options[name].short = f.short;
  }
  // Non-strict: every token comes back, and the checks below word the errors.
  const { tokens } = parseArgs({
    args,
    options,
    allowPositionals: true,
    strict: false,
    tokens: true,
  });
  if (tokens.some((t) => t.kind === "option" && t.name === "help")) return "help";
  const raw = new Map<string, string[]>();
  for (const t of tokens) {
    if (t.kind === "option-terminator") continue;
    if (t.kind === "positional") {
      throw new UsageError(
        `unexpected argument '${t.value}'; ${cmd.positionalHint ?? "flags start with --"} ` +
          seeHelp(cmd),
      );
    }
    const f = cmd.flags[t.name];
    if (f === undefined) {
      const guess = t.rawName.startsWith("--")
        ? closest(t.name, [...Object.keys(cmd.flags), "help"])
        : undefined;
      throw new UsageError(
        `unknown flag ${t.rawName}${guess ? `; did you mean --${guess}?` : ""} ${seeHelp(cmd)}`,
      );
    }
    const flag = `--${t.name}`;
    if (f.type === "boolean") {
      if (t.value !== undefined) {
        throw new UsageError(`${flag} is a switch and takes no value, got '${t.value}'`);
      }
    } else if (t.value === undefined || (!t.inlineValue && t.value.startsWith("--"))) {
      throw new UsageError(`${flag} needs a value: ${f.help} ${describeFlag(f)}`);
    }
    const seen = raw.get(t.name) ?? [];
    if (seen.length > 0 && !(f.type === "string" && f.multiple)) {
      throw new UsageError(`${flag} is given twice ('${seen[0]}' and '${t.value ?? ""}')`);
    }
    seen.push(t.value ?? "");
    raw.set(t.name, seen);
  }
  const values: Record<string, unknown> = {};
  for (const [name, f] of Object.entries(cmd.flags)) {
    const given = raw.get(name);
    if (f.type === "boolean") values[name] = given !== undefined;
    else if (given !== undefined) {
      values[name] = f.type === "string" && f.multiple ? given : convert(name, f, given[0]);
    } else if (f.default !== undefined) {
      values[name] = f.type === "choice" && f.list ? convert(name, f, f.default) : f.default;
    } else if (f.required) {
      const choices = f.type === "choice" ? `; one of ${f.choices.join(", ")}` : "";
      throw new UsageError(`--${name} is required: ${f.help}${choices} ${seeHelp(cmd)}`);
    }
  }
  return values as FlagValues<F>;
}

/**
 * Throws UsageError unless the folder an output file goes to exists, so a
 * long run does not end in an unwritable path.
 */
export async function requireOutputDir(flag: string, path: string): Promise<void> {
  const dir = dirname(path) || ".";
  let isDir = false;
  try {
    isDir = (await Deno.stat(dir)).isDirectory;
  } catch { /* absent */ }
  if (!isDir) throw new UsageError(`${flag} ${path}: the folder ${dir} does not exist`);
}

/**
 * `message` with each "deno task NAME" (how the layers below cli/ name a
 * command: they cannot know the wrapper) as the user runs it: `./bloom NAME`
 * under the wrapper.
 */
export function asTyped(message: string): string {
  return message.replace(/\bdeno task ([a-z][\w:-]*)/g, (_, task: string) => invocation(task));
}

/**
 * `./bloom` runs a task from the checkout (`deno task` needs its config) and
 * passes the folder it was called from as BLOOM_CWD: the command moves there,
 * so its relative paths are the caller's. The variable is then dropped, so
 * the processes it starts do not move too.
 */
function enterCallersFolder(): void {
  let dir: string | undefined;
  try {
    dir = Deno.env.get("BLOOM_CWD");
    if (dir) Deno.env.delete("BLOOM_CWD");
  } catch { /* no env permission: stay */ }
  if (!dir) return;
  try {
    Deno.chdir(dir);
  } catch (e) {
    throw new InputError(`cannot enter the folder ./bloom was run from, ${dir}: ${e}`);
  }
}

/**
 * Runs a CLI main. Bad input (InputError, UsageError included) prints the
 * message alone and exits 2; any other error prints its message and exits 1,
 * with the stack when BLOOM_DEBUG is set.
 */
export async function runMain(main: () => Promise<void | number>): Promise<never> {
  try {
    enterCallersFolder();
    const code = await main();
    Deno.exit(typeof code === "number" ? code : 0);
  } catch (e) {
    console.error(`error: ${asTyped(e instanceof Error ? e.message : String(e))}`);
    let debug: string | undefined;
    try {
      debug = Deno.env.get("BLOOM_DEBUG");
    } catch { /* no env permission */ }
    if (debug) console.error(e);
    Deno.exit(e instanceof InputError ? 2 : 1);
  }
}

/**
 * The whole life of a command: parses the flags (printing `--help` and
 * exiting 0 when asked), runs `main` with the typed values, maps errors to
 * exit codes as `runMain` does.
 */
export function runCommand<F extends FlagTable>(
  cmd: Command<F>,
  main: (flags: FlagValues<F>) => Promise<void | number>,
  args: string[] = Deno.args,
): Promise<never> {
  return runMain(async () => {
    const flags = parseFlags(cmd, args);
    if (flags === "help") {
      console.log(usage(cmd));
      return 0;
    }
    return await main(flags);
  });
}
