/**
 * One writer per output (pipelines/output_lock.ts), through the ingest
 * command as users run it:
 * - while another process holds `--out`, a second ingest stops at once
 *   (exit 1), naming that process and since when, and writes nothing; with
 *   `--wait` it waits, says whom for, and finishes once the lock is free;
 * - two ingests of 80 cells started together into one `--out` (both `--wait`) both
 *   succeed and leave the output complete and byte-identical to a single
 *   ingest's (before the lock, the second died renaming a `.tar.tmp` the
 *   first had removed);
 * - a rerun with nothing left says so instead of printing a rate; a rerun
 *   with another `--split` warns which finished shards it replaces;
 * - embed's and predict's file outputs lock `FILE.lock` beside them;
 * - embed and train stop at once when their output is being written, before
 *   any weights load or GPU work, naming the holder (with `--wait` they go on).
 */
import { hostname } from "node:os";
import { join } from "node:path";
import { readManifest } from "../pipelines/dataset/manifest.ts";
import { lockOutput, OutputLockedError, outputLockPath } from "../pipelines/output_lock.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { noGpuPreload } from "./helpers.ts";

const root = new URL("..", import.meta.url).pathname;
const dec = new TextDecoder();

function ingest(input: string, out: string, extra: string[] = [], split = "0.75") {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      join(root, "cli/ingest.ts"),
      "--input",
      input,
      "--layout",
      "imagefolder",
      "--out",
      out,
      "--split",
      split,
      "--size",
      "24",
      "--quiet",
      ...extra,
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function finish(p: Deno.ChildProcess) {
  const o = await p.output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** The shards' bytes (name → SHA-256 as the manifest records it, checked against the files). */
async function shardHashes(dir: string): Promise<Record<string, string>> {
  const m = await readManifest(dir);
  const out: Record<string, string> = {};
  for (const s of m.shards) {
    const bytes = await Deno.readFile(join(dir, s.name));
    const sha = [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    assertEquals(sha, s.sha256, `${s.name} is not what the manifest says`);
    out[s.name] = sha;
  }
  return out;
}

async function withCells(fn: (dir: string, cells: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "bloom-lock-out-" });
  try {
    const cells = join(dir, "cells");
    await writeSyntheticImageFolder(cells, { perClass: 16, size: 24, seed: 4 });
    await fn(dir, cells);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("ingest: a second run into a locked --out stops naming the holder, or waits with --wait", async () => {
  await withCells(async (dir, cells) => {
    const out = join(dir, "out");
    // This process plays the first ingest: it holds out/.lock as runIngest does.
    const held = await lockOutput(out, "directory");
    const refused = await finish(ingest(cells, out));
    assertEquals(refused.code, 1, refused.stderr);
    assert(
      refused.stderr.includes(
        `output directory ${out} is being written by process ${Deno.pid} on ${hostname()} ` +
          `since ${held.holder.started}`,
      ),
      refused.stderr,
    );
    assert(refused.stderr.includes("--wait"), refused.stderr);
    assertEquals([...Deno.readDirSync(out)].map((e) => e.name), [".lock"], "it wrote nothing");

    // With --wait it says whom it waits for, writes nothing meanwhile, and runs once released.
    const waiting = ingest(cells, out, ["--wait"]);
    const stdout = new Response(waiting.stdout).text();
    const reader = waiting.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let stderr = "";
    while (!stderr.includes("waiting:")) {
      const { value, done } = await reader.read();
      if (done) break;
      stderr += value;
    }
    assert(
      stderr.includes(`waiting: output directory ${out} is being written by process ${Deno.pid}`),
      stderr,
    );
    assertEquals([...Deno.readDirSync(out)].map((e) => e.name), [".lock"], "it wrote nothing");
    await held.release();
    for (let r = await reader.read(); !r.done; r = await reader.read()) stderr += r.value;
    assertEquals((await waiting.status).code, 0, stderr);
    assert((await stdout).includes("ingest: 80 samples"), await stdout);
    assertEquals((await readManifest(out)).samples, 80);
    assertEquals(await Deno.stat(outputLockPath(out, "directory")).catch(() => null), null);
  });
});

Deno.test("ingest: two runs started together into one --out leave it complete and correct", async () => {
  await withCells(async (dir, cells) => {
    const reference = join(dir, "reference");
    const ref = await finish(ingest(cells, reference));
    assertEquals(ref.code, 0, ref.stderr);
    const out = join(dir, "out");
    const [a, b] = await Promise.all([
      finish(ingest(cells, out, ["--wait", "--workers", "1"])),
      finish(ingest(cells, out, ["--wait", "--workers", "1"])),
    ]);
    assertEquals([a.code, b.code], [0, 0], a.stderr + b.stderr);
    assertEquals(await shardHashes(out), await shardHashes(reference));
    const m = await readManifest(out);
    assertEquals([m.samples, m.split?.sha256], [80, (await readManifest(reference)).split?.sha256]);
  });
});

Deno.test("ingest reruns: nothing left says so; another --split warns which shards it replaces", async () => {
  await withCells(async (dir, cells) => {
    const out = join(dir, "out");
    assertEquals((await finish(ingest(cells, out))).code, 0);
    const again = await finish(ingest(cells, out));
    assertEquals(again.code, 0, again.stderr);
    assert(
      again.stdout.includes("ingest: nothing left to do: 80 images already ingested"),
      again.stdout,
    );
    assert(!again.stdout.includes("images/s"), again.stdout);
    assert(!again.stderr.includes("warning"), again.stderr);

    const resplit = await finish(ingest(cells, out, [], "0.5"));
    assertEquals(resplit.code, 0, resplit.stderr);
    assert(
      resplit.stderr.includes(
        `warning: ${out} holds an earlier ingest: it was ingested with --split 0.75 --seed 42, ` +
          "this run has --split 0.5 --seed 42, so its split changes; replacing 2 finished shards " +
          "(test-000000.tar, train-000000.tar)",
      ),
      resplit.stderr,
    );
    assertEquals((await readManifest(out)).split?.origin, "stratified 50/50, seed 42");
  });
});

Deno.test("file outputs lock FILE.lock beside them; a holder elsewhere is named", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-lock-out-" });
  try {
    const out = join(dir, "cells.safetensors");
    assertEquals(outputLockPath(out, "file"), `${out}.lock`);
    const a = await lockOutput(out, "file");
    const e = await assertRejects(() => lockOutput(out, "file"), OutputLockedError);
    assert(e.message.startsWith(`output file ${out} is being written by process ${Deno.pid}`));
    await a.release();
    // A lock file whose holder is gone is taken over (data/lock.ts), not reported.
    const p = new Deno.Command(Deno.execPath(), { args: ["--version"], stdout: "null" }).spawn();
    await p.status;
    const gone = { pid: p.pid, host: hostname(), started: "2026-01-01T00:00:00.000Z", token: "t" };
    await Deno.writeTextFile(`${out}.lock`, JSON.stringify({ ...gone, what: out }));
    const b = await lockOutput(out, "file");
    assertEquals(b.holder.pid, Deno.pid);
    await b.release();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embed and train: a locked output stops them before any GPU work, naming the holder", async () => {
  await withCells(async (dir, cells) => {
    // Any touch of WebGPU fails the process: a refusal under it came before any GPU work.
    const noGpu = await noGpuPreload(dir);
    const run = async (script: string, args: string[]) => {
      const o = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--no-check", "--preload", noGpu, join(root, script), ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: o.code, stderr: dec.decode(o.stderr) };
    };
    const file = join(dir, "cells.safetensors");
    const runDir = join(dir, "run");
    const held = [await lockOutput(file, "file"), await lockOutput(runDir, "directory")];
    try {
      const embedArgs = ["--random-weights", "--input", cells, "--out", file, "--quiet"];
      const trainArgs = ["--data", cells, "--batch", "2", "--out", runDir, "--quiet"];
      const [embed, train, embedWait] = await Promise.all([
        run("cli/embed.ts", embedArgs),
        run("cli/train.ts", trainArgs),
        // With --wait the check is left to the lock: this run goes on (here, to the GPU).
        run("cli/embed.ts", [...embedArgs, "--wait"]),
      ]);
      for (const [r, what] of [[embed, `file ${file}`], [train, `directory ${runDir}`]] as const) {
        assertEquals(r.code, 1, r.stderr);
        assert(
          r.stderr.includes(`output ${what} is being written by process ${Deno.pid}`),
          r.stderr,
        );
        assert(r.stderr.includes("--wait"), r.stderr);
        assert(!r.stderr.includes("GPU was touched"), r.stderr);
      }
      assert(embedWait.stderr.includes("GPU was touched"), embedWait.stderr);
    } finally {
      for (const h of held) await h.release();
    }
  });
});
