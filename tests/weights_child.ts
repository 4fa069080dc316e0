/**
 * A separate process for the weights tests (two processes fetching one name;
 * proxy settings, which Deno's fetch reads at start). Argument: JSON
 * `{ name, table, cacheDir }`. Prints one JSON line: `{ path, sha256, waited }`
 * (waited: it waited on another process's lock) or `{ kind, message }`.
 */
import { fetchWeights, WeightsError } from "../pipelines/weights/download.ts";
import type { WeightsTable } from "../pipelines/weights/registry.ts";

const { name, table, cacheDir } = JSON.parse(Deno.args[0]) as {
  name: string;
  table: WeightsTable;
  cacheDir: string;
};
let waited = false;
try {
  const got = await fetchWeights(name, {
    table,
    cacheDir,
    retryDelayMs: 0,
    lockPollMs: 20,
    log: (l) => {
      if (l.includes("waiting for process")) waited = true;
      console.error(l);
    },
    progress: { silent: true },
  });
  console.log(JSON.stringify({ path: got.path, sha256: got.record.sha256, waited }));
} catch (e) {
  const kind = e instanceof WeightsError ? e.kind : "other";
  console.log(JSON.stringify({ kind, message: (e as Error).message }));
}
