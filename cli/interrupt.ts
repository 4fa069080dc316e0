/**
 * Ctrl-C and SIGTERM for the long commands (embed, ingest, train): the first
 * signal asks the run to stop cleanly (it keeps what is finished, drops what
 * is half done), a second one quits at once; either way the command says
 * what it kept and the exact command line that resumes it.
 */
import { STOP_SIGNALS, type StopSignal } from "../pipelines/interrupt.ts";
import { invocation } from "./args.ts";

/** What `stopOnSignals` gives a command. */
export interface SignalStop {
  /** Aborted by the first SIGINT or SIGTERM; pass it to the run. */
  signal: AbortSignal;
  /** The exit code for a run stopped by it: 128 + the signal's number (130 for Ctrl-C). */
  exitCode(): number;
  /** Removes the handlers. */
  close(): void;
}

/**
 * Installs the handlers for a run of `task` that `resume` (the command's
 * arguments) resumes. `keeping` says what the stop keeps, for the notice.
 */
export function stopOnSignals(
  task: string,
  resume: readonly string[],
  keeping = "what is finished",
  print: (line: string) => void = (l) => console.error(l),
): SignalStop {
  const controller = new AbortController();
  let got: StopSignal | null = null;
  const handlers = (Object.keys(STOP_SIGNALS) as StopSignal[]).map((name) => {
    const handler = () => {
      if (got !== null) {
        print(`${name} again: quitting now. To resume, run:\n  ${resumeCommand(task, resume)}`);
        Deno.exit(128 + STOP_SIGNALS[name]);
      }
      got = name;
      print(`\n${name} received: stopping, keeping ${keeping} (${name} again quits at once)`);
      controller.abort();
    };
    Deno.addSignalListener(name, handler);
    return [name, handler] as const;
  });
  return {
    signal: controller.signal,
    exitCode: () => 128 + STOP_SIGNALS[got ?? "SIGINT"],
    close: () => {
      for (const [name, h] of handlers) Deno.removeSignalListener(name, h);
    },
  };
}

/** Prints what an interrupted run kept and the command that resumes it. */
export function reportStopped(
  task: string,
  resume: readonly string[],
  kept: string,
  print: (line: string) => void = (l) => console.error(l),
): void {
  print(`interrupted: ${kept}`);
  print(resumeHint(task, resume));
}

/**
 * "to resume, run …" with the command line; "the same command" when `resume`
 * is the command's own arguments.
 */
export function resumeHint(task: string, resume: readonly string[]): string {
  const same = resume.length === Deno.args.length && resume.every((a, i) => a === Deno.args[i]);
  return `to resume, run${same ? " the same command" : ""}:\n  ${resumeCommand(task, resume)}`;
}

/** The command line that runs `task` with `args`, quoted for a POSIX shell. */
export function resumeCommand(task: string, args: readonly string[]): string {
  return [invocation(task), ...args.map(shellQuote)].join(" ");
}

/** `s` as one shell word: bare when safe, else in single quotes. */
export function shellQuote(s: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replaceAll("'", `'\\''`)}'`;
}
