/**
 * Ctrl-C during `embed`: SIGINT at about 10 % of a 96-image run (tiny ViT,
 * small cells, a bad image among them) keeps every batch read back, prints
 * what it kept and the command that resumes it; running that command
 * resumes from there and writes the same bytes, and the same errors file, as
 * a run never interrupted. Also: a run stopped before its first batch, an
 * ingest stopped after its first shard, and the shell quoting of the resume
 * command.
 */
import { dirname, join } from "node:path";
import { readEmbeddings } from "../data/embeddings_file.ts";
import { runEmbed } from "../pipelines/embed_run.ts";
import { runIngest } from "../pipelines/ingest/run.ts";
import { Interrupted } from "../pipelines/interrupt.ts";
import { resumeCommand, shellQuote } from "../cli/interrupt.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { writeTinyCheckpoint } from "./fixtures.ts";
import { gpuTest } from "./helpers.ts";
import { cellFolder, tinyEmbedRun } from "./embed_fixtures.ts";

const CLI = new URL("../cli/embed.ts", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;
const dec = new TextDecoder();

/** 95 small cells in 5 class folders and one file that is not an image: 96 inputs. */
async function inputs(dir: string): Promise<void> {
  await cellFolder(join(dir, "cells"), 19, { classes: 5, sides: [40, 30, 50] });
  await Deno.writeTextFile(join(dir, "cells", "basophil", "basophil_bad.png"), "not a png");
}

function embedArgs(dir: string, out: string): string[] {
  return [
    ...["--weights", join(dir, "tiny.pth"), "--heads", "2", "--input", join(dir, "cells")],
    ...["--out", out, "--size", "28", "--batch", "8", "--quiet", "--no-autotune"],
  ];
}

async function embedCli(args: string[]): Promise<{ code: number; stderr: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: r.code, stderr: dec.decode(r.stderr) };
}

/** Rows the journal has committed, or 0. */
async function committedRows(out: string): Promise<number> {
  try {
    return JSON.parse(await Deno.readTextFile(`${out}.partial/progress.json`)).rows;
  } catch {
    return 0;
  }
}

Deno.test({
  name: "embed: SIGINT at ~10 % keeps the batches read back and says how to resume; the resumed " +
    "output is byte-identical to an uninterrupted run",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-embed-int-" });
    await inputs(dir);
    await writeTinyCheckpoint(join(dir, "tiny.pth"));
    const ref = join(dir, "ref.safetensors");
    const whole = await embedCli(embedArgs(dir, ref));
    assertEquals(whole.code, 0, whole.stderr);

    const out = join(dir, "out.safetensors");
    const args = embedArgs(dir, out);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", CLI, ...args],
      stdout: "piped",
      stderr: "piped",
      env: { BLOOM_CLI: "" },
    }).spawn();
    // The first commit comes after the first batch (8 of 96 rows); freeze the child there so the
    // signal lands at ~10 %, not after the (fast) run has ended.
    for (let i = 0; i < 6000 && (await committedRows(out)) === 0; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill("SIGSTOP");
    const seen = await committedRows(out);
    child.kill("SIGINT");
    child.kill("SIGCONT");
    const res = await child.output();
    const stderr = dec.decode(res.stderr);
    assertEquals(res.code, 130, stderr);
    assert(seen >= 8, `no batch was committed before the signal: ${stderr}`);
    const m = /kept (\d+) of 96 rows in (\S+)\.partial\//.exec(stderr);
    assert(m, stderr);
    const kept = Number(m[1]);
    assert(kept >= seen && kept < 95 && kept % 8 === 0, `kept ${kept} (seen ${seen}): ${stderr}`);
    assertEquals(await committedRows(out), kept);
    await assertRejects(() => Deno.stat(out), Deno.errors.NotFound, undefined);

    // The printed command is the one that resumes: run it as printed, through a shell.
    const cmd = /to resume, run the same command:\n {2}(.+)\n/.exec(stderr)?.[1];
    assert(cmd?.startsWith("deno task embed --weights"), stderr);
    const again = await new Deno.Command("bash", {
      args: ["-c", cmd!],
      cwd: ROOT,
      env: { PATH: `${dirname(Deno.execPath())}:${Deno.env.get("PATH")}` },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr2 = dec.decode(again.stderr);
    assertEquals(again.code, 0, stderr2);
    assert(stderr2.includes(`resuming ${out}: ${kept} rows already embedded`), stderr2);
    assertEquals(await Deno.readFile(out), await Deno.readFile(ref));
    assertEquals(
      await Deno.readTextFile(`${out}.errors.jsonl`),
      await Deno.readTextFile(`${ref}.errors.jsonl`),
    );
    const e = await readEmbeddings(out);
    assertEquals([e.rows, e.meta["bloom.failed"]], [95, "1"]);
    await assertRejects(() => Deno.stat(`${out}.partial`), Deno.errors.NotFound, undefined);
    await Deno.remove(dir, { recursive: true });
  },
});

gpuTest(
  "embed: a run stopped before its first batch keeps nothing and resumes from 0",
  async (gpu) => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-embed-stop-" });
    await cellFolder(join(dir, "cells"), 3, { sides: [30] });
    const { base, dispose } = await tinyEmbedRun(gpu, dir, 4);
    const out = join(dir, "e.safetensors");
    const stop = new AbortController();
    stop.abort();
    await assertRejects(
      () => runEmbed(gpu, { ...base, out, signal: stop.signal }),
      Interrupted,
      `kept 0 of 9 rows in ${out}.partial/`,
    );
    const r = await runEmbed(gpu, { ...base, out });
    assertEquals([r.rows, r.resumedRows], [9, 0]);
    dispose();
    await Deno.remove(dir, { recursive: true });
  },
);

Deno.test("resume command: the arguments quoted for a shell, after the task as it was run", () => {
  assertEquals(shellQuote("--out"), "--out");
  assertEquals(shellQuote("a b"), "'a b'");
  assertEquals(shellQuote("it's"), `'it'\\''s'`);
  assertEquals(shellQuote(""), "''");
  const line = resumeCommand("embed", ["--input", "my cells/", "--out", "x.npy"]);
  assert(/^(deno task|\S+) embed --input 'my cells\/' --out x\.npy$/.test(line), line);
});

Deno.test({
  name: "ingest: a stopped run keeps its finished shards, says so, and the rerun writes the rest " +
    "as an uninterrupted run does",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bloom-ingest-stop-" });
    await cellFolder(join(dir, "cells"), 4, { sides: [30] });
    const opts = (out: string) => ({
      input: join(dir, "cells"),
      layout: "imagefolder" as const,
      out: join(dir, out),
      size: 28,
      shardSize: 4,
      workers: 2,
    });
    const whole = await runIngest(opts("whole"), { progress: false, log: () => {} });
    assertEquals(whole.manifest.shards.length, 3);
    const stop = new AbortController();
    await assertRejects(
      () =>
        runIngest(opts("stopped"), {
          progress: false,
          log: () => {},
          signal: stop.signal,
          onShard: () => stop.abort(), // Ctrl-C once the first shard is on disk
        }),
      Interrupted,
      `kept 1 of 3 shards (4 of 12 images) in ${join(dir, "stopped")}/`,
    );
    const tmp = [...Deno.readDirSync(join(dir, "stopped"))].filter((e) => e.name.endsWith(".tmp"));
    assertEquals(tmp, [], "the shard being written is dropped");
    const again = await runIngest(opts("stopped"), { progress: false, log: () => {} });
    assertEquals([again.shardsSkipped, again.shardsWritten], [1, 2]);
    for (const s of whole.manifest.shards) {
      assertEquals(
        await Deno.readFile(join(dir, "stopped", s.name)),
        await Deno.readFile(join(dir, "whole", s.name)),
      );
    }
    await Deno.remove(dir, { recursive: true });
  },
});
