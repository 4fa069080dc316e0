/**
 * Tuning never holds an embedding run's first results back (pipelines/embed_run.ts): the first
 * batch's rows are written before the kernels are tuned, tuning is skipped when no batch
 * follows, and the run's rate leaves the tuning out.
 */
import { join } from "node:path";
import { readEmbeddings } from "../data/embeddings_file.ts";
import { getGpu } from "../kernels/runtime.ts";
import { runEmbed, tuneBudgetMs } from "../pipelines/embed_run.ts";
import { DEFAULT_TUNE_BUDGET_MS } from "../graph/tune.ts";
import { assert, assertEquals } from "./assert.ts";
import { cellFolder, tinyEmbedRun } from "./embed_fixtures.ts";

Deno.test({
  name: "embed: the first batch's rows are written before tuning, which is left out of the rate",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const gpu = await getGpu();
    const dir = await Deno.makeTempDir({ prefix: "bloom-embed-tune-" });
    try {
      await cellFolder(join(dir, "cells"), 2); // 6 cells
      const { base, dispose } = await tinyEmbedRun(gpu, dir, 4);
      const events: string[] = [];
      const budgets: number[] = [];
      const tuner = async (_log: unknown, budgetMs: number) => {
        budgets.push(budgetMs);
        events.push("tune");
        await new Promise((r) => setTimeout(r, 300));
        return { matmulClasses: 1, measured: 1, deferred: 0, seconds: 0.3 };
      };
      const onRows = (n: number) => events.push(`rows ${n}`);
      const out = join(dir, "tuned.safetensors");
      const t0 = performance.now();
      const r = await runEmbed(gpu, { ...base, out, autotune: true, tuner, onRows });
      const wallS = (performance.now() - t0) / 1000;
      // The first batch (4 rows) is on disk before tuning starts; the second follows it.
      assertEquals(events, ["rows 4", "tune", "rows 6"]);
      assertEquals([r.tuning?.measured, budgets], [1, [DEFAULT_TUNE_BUDGET_MS]]);
      // The ≥ 300 ms of tuning are not in the rate's seconds.
      assert(6 / r.imagesPerSecond <= wallS - 0.3, `${r.imagesPerSecond} images/s, ${wallS} s`);
      // Same rows as a run without tuning (the stand-in tuner changes no kernel).
      const plain = join(dir, "plain.safetensors");
      await runEmbed(gpu, { ...base, out: plain, autotune: false });
      const [a, b] = [await readEmbeddings(out), await readEmbeddings(plain)];
      assertEquals([...a.features], [...b.features]);
      // One batch and nothing after it: nothing to tune for.
      events.length = 0;
      const one = await runEmbed(gpu, {
        ...base,
        batch: 8,
        out: join(dir, "one.safetensors"),
        autotune: true,
        tuner,
        onRows,
      });
      assertEquals([events, one.tuning], [["rows 6"], undefined]);
      // autotune off: never called.
      events.length = 0;
      await runEmbed(gpu, { ...base, out: join(dir, "off.safetensors"), tuner, onRows });
      assertEquals(events, ["rows 4", "rows 6"]);
      dispose();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("embed: the tuning budget is a twentieth of the work left, within [default, 1 min]", () => {
  assertEquals(tuneBudgetMs(1000), DEFAULT_TUNE_BUDGET_MS);
  assertEquals(tuneBudgetMs(20 * 30_000), 30_000);
  assertEquals(tuneBudgetMs(3600_000), 60_000);
  assertEquals(tuneBudgetMs(Infinity), DEFAULT_TUNE_BUDGET_MS); // tar shards: count unknown
});
