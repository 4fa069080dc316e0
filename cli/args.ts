/**
 * The one module command-line entry points parse flags with. It wraps
 * `node:util` `parseArgs` (JSR's @std/cli is out of reach from our machines);
 * swapping later means changing this file only. Unknown flags and bad values
 * exit with a message that names the flag and the task's usage.
 */
import { parseArgs } from "node:util";

/** One flag of a command. */
export interface FlagSpec {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
  default?: string | boolean;
  /** One line for the usage text. */
  help: string;
}

/** An error in the user's command line; CLIs print its message and exit 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Parsed flags plus positionals. */
export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** Renders a usage text for `command` from its flag table. */
export function usage(command: string, summary: string, flags: Record<string, FlagSpec>): string {
  const lines = [`usage: deno task ${command} [flags]`, "", summary, "", "flags:"];
  for (const [name, f] of Object.entries(flags)) {
    const left = `  --${name}${f.type === "string" ? " VALUE" : ""}${
      f.short ? `, -${f.short}` : ""
    }`;
    const def = f.default !== undefined && f.default !== false ? ` (default ${f.default})` : "";
    lines.push(`${left.padEnd(28)} ${f.help}${def}`);
  }
  lines.push(`${"  --help, -h".padEnd(28)} show this text`);
  return lines.join("\n");
}

/**
 * Parses `args` against `flags`. Throws UsageError naming the offending flag
 * (unknown flag, missing value) with the usage text attached.
 */
export function parseFlags(
  command: string,
  summary: string,
  flags: Record<string, FlagSpec>,
  args: string[],
): Parsed | "help" {
  // deno-lint-ignore no-explicit-any
  const options: Record<string, any> = { help: { type: "boolean", short: "h" } };
  for (const [name, f] of Object.entries(flags)) {
    // node:util rejects keys present with an undefined value.
    const o: Record<string, unknown> = { type: f.type };
    if (f.short !== undefined) o.short = f.short;
    if (f.multiple !== undefined) o.multiple = f.multiple;
    if (f.default !== undefined) o.default = f.default;
    options[name] = o;
  }
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    const msg = (e as Error).message.replace(/\. To specify a positional.*$/s, "");
    throw new UsageError(`${msg}\n\n${usage(command, summary, flags)}`);
  }
  if (parsed.values.help) return "help";
  return { values: parsed.values as Parsed["values"], positionals: parsed.positionals };
}

/** Reads a numeric flag, with a clear error naming it when it is not a number in range. */
export function numberFlag(
  values: Parsed["values"],
  name: string,
  opts: { min?: number; max?: number; integer?: boolean } = {},
): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  const bad = typeof raw !== "string" || raw.trim() === "" || !Number.isFinite(n) ||
    (opts.integer && !Number.isInteger(n)) || (opts.min !== undefined && n < opts.min) ||
    (opts.max !== undefined && n > opts.max);
  if (bad) {
    const range = [
      opts.integer ? "an integer" : "a number",
      opts.min !== undefined ? `≥ ${opts.min}` : "",
      opts.max !== undefined ? `≤ ${opts.max}` : "",
    ].filter(Boolean).join(" ");
    throw new UsageError(`--${name} must be ${range}, got '${raw}'`);
  }
  return n;
}

/** Runs a CLI main, turning UsageError into exit code 2 and other errors into 1. */
export async function runMain(main: () => Promise<void | number>): Promise<never> {
  try {
    const code = await main();
    Deno.exit(typeof code === "number" ? code : 0);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    if (Deno.env.get("BLOOM_DEBUG")) console.error(e);
    Deno.exit(1);
  }
}
