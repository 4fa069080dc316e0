/**
 * `deno task weights list|fetch NAME…|verify [NAME…]|path NAME`: the named
 * checkpoints bloom knows (pipelines/weights/registry.ts), what is in the
 * cache, downloads, and re-hashing cached files. docs/weights.md has the
 * sources, hashes and environment variables.
 * Exit codes: 0 done; 1 a download or verification failed, or a name is not
 * cached; 2 a bad subcommand or name.
 */
import { fmtBytes } from "../kernels/pool.ts";
import {
  defaultCacheDir,
  findCached,
  readRecord,
  verifyCached,
} from "../pipelines/weights/cache.ts";
import { fetchWeights, WeightsNameError } from "../pipelines/weights/download.ts";
import {
  lookupWeights,
  nearestNames,
  UNPUBLISHED,
  WEIGHTS,
  type WeightsEntry,
} from "../pipelines/weights/registry.ts";
import { command, invocation, parseFlags, runMain, usage, UsageError } from "./args.ts";
import { join } from "node:path";

const SUBCOMMANDS = ["list", "fetch", "verify", "path"] as const;

/** `deno task weights`: its flags and help. */
export const WEIGHTS_CLI = command({
  name: "weights",
  summary: `Named model weights: list | fetch NAME… | verify [NAME…] | path NAME
  list     the names bloom knows, their architecture, size, hash and whether they are cached
  fetch    download, verify and cache (what --weights NAME does on first use)
  verify   re-hash cached files against their recorded SHA-256; a bad file is removed
  path     print the cached file's path (for scripts)`,
  flags: {
    quiet: { type: "boolean", help: "no progress line" },
  },
  epilog: `The cache is $BLOOM_CACHE_DIR, else ~/.cache/bloom/weights. BLOOM_OFFLINE=1 uses the
cache only; BLOOM_WEIGHTS_URL points at a mirror; HTTPS_PROXY / NO_PROXY are honoured.
docs/weights.md lists every source and hash.`,
});

function entryOf(name: string): { name: string; entry: WeightsEntry } {
  const hit = lookupWeights(name);
  if (hit) return hit;
  const near = nearestNames(name);
  throw new WeightsNameError(
    `'${name}' is not a known model name` +
      (near.length ? `; did you mean ${near.join(", ")}?` : "") +
      ` (${invocation("weights")} list shows all)`,
    near,
  );
}

async function list(dir: string): Promise<number> {
  const rows = [["NAME", "ARCH", "REGS", "SIZE", "SHA-256", "FROM", "CACHED"]];
  for (const [name, e] of Object.entries(WEIGHTS) as [string, WeightsEntry][]) {
    const src = e.sources[0];
    const cached = await findCached(dir, name, e);
    const size = cached
      ? fmtBytes(cached.record.bytes)
      : src.bytes !== UNPUBLISHED
      ? fmtBytes(src.bytes)
      : src.approxBytes
      ? `~${fmtBytes(src.approxBytes)}`
      : "?";
    const hash = e.sources.map((s) => (s.sha256 === UNPUBLISHED ? "unpublished" : "published"));
    rows.push([
      name,
      e.arch,
      String(e.registers),
      size,
      hash.join(" / "),
      e.sources.map((s) => new URL(s.url).host).join(", then "),
      cached ? `yes (${cached.record.hash === "published" ? "verified" : "hash recorded"})` : "no",
    ]);
  }
  const width = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  console.log(`weights cache: ${dir}\n`);
  for (const r of rows) console.log(r.map((v, c) => v.padEnd(width[c])).join("  ").trimEnd());
  return 0;
}

async function verify(dir: string, names: string[]): Promise<number> {
  const todo = names.length
    ? names.map(entryOf)
    : (Object.entries(WEIGHTS) as [string, WeightsEntry][]).map(([name, entry]) => ({
      name,
      entry,
    }));
  let bad = 0;
  let checked = 0;
  for (const { name, entry } of todo) {
    const r = await verifyCached(dir, name, entry);
    if (!r) {
      if (names.length) console.log(`${name}: not cached`);
      continue;
    }
    checked++;
    if (r.ok) {
      const rec = await readRecord(join(dir, `${name}.json`));
      console.log(`${name}: ok (SHA-256 ${rec?.sha256}, ${rec?.hash})`);
    } else {
      bad++;
      const detail = r.expected ? ` (expected ${r.expected}, found ${r.found})` : "";
      console.log(
        `${name}: FAILED: ${r.problem}${detail}; removed it. ` +
          `${invocation("weights")} fetch ${name} downloads it again`,
      );
    }
  }
  if (checked === 0 && !names.length) console.log(`nothing cached in ${dir}`);
  return bad ? 1 : 0;
}

async function main(args: string[]): Promise<number> {
  const positional = args.filter((a) => !a.startsWith("-"));
  const flags = parseFlags(WEIGHTS_CLI, args.filter((a) => a.startsWith("-")));
  if (flags === "help") {
    console.log(usage(WEIGHTS_CLI));
    return 0;
  }
  const [sub, ...names] = positional;
  if (!sub || !(SUBCOMMANDS as readonly string[]).includes(sub)) {
    throw new UsageError(
      `${sub ? `unknown subcommand '${sub}'` : "a subcommand is needed"}: ` +
        `${invocation("weights")} ${SUBCOMMANDS.join("|")} (--help explains each)`,
    );
  }
  const dir = defaultCacheDir();
  switch (sub) {
    case "list":
      if (names.length) throw new UsageError(`list takes no names, got '${names[0]}'`);
      return await list(dir);
    case "verify":
      return await verify(dir, names);
    case "fetch": {
      if (!names.length) {
        throw new UsageError(`fetch needs a name: ${invocation("weights")} fetch dinobloom-s`);
      }
      for (const n of names) {
        const { name } = entryOf(n);
        const got = await fetchWeights(name, {
          cacheDir: dir,
          progress: { silent: flags.quiet },
        });
        console.log(got.path);
      }
      return 0;
    }
    case "path": {
      if (names.length !== 1) {
        throw new UsageError(`path needs one name: ${invocation("weights")} path dinobloom-s`);
      }
      const { name, entry } = entryOf(names[0]);
      const got = await findCached(dir, name, entry);
      if (!got) {
        console.error(
          `error: ${name} is not in the weights cache (${dir}); ` +
            `${invocation("weights")} fetch ${name} downloads it`,
        );
        return 1;
      }
      console.log(got.path);
      return 0;
    }
  }
  return 2;
}

if (import.meta.main) runMain(() => main(Deno.args));
