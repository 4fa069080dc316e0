/**
 * The library is usable from anywhere: a script in a folder outside the
 * checkout, with no deno.json of its own, imports `mod.ts` by path and runs
 * (`deno run -A script.ts`, npm packages from Deno's global cache, no
 * node_modules). That works because every npm dependency is imported as a
 * fully specified `npm:name@x.y.z` specifier: an import map only applies to
 * its own project, so a bare `"sharp"` fails from outside with `Import
 * "sharp" not a dependency` (deno.json turns lint's no-import-prefix off for
 * that reason). The scan below keeps it so: no bare package specifier in any
 * source file, one exact version per package.
 */
import { join, relative } from "node:path";
import { pathToFileURL } from "node:url";
import { assert, assertEquals } from "./assert.ts";

const root = new URL("..", import.meta.url).pathname;
/** The project's source folders (scratch folders beside them are not the library). */
const FOLDERS = [
  "app",
  "bench",
  "cli",
  "data",
  "eval",
  "graph",
  "kernels",
  "pipelines",
  "scripts",
  "tests",
];
const SKIP = new Set(["node_modules", "dist", "fixtures"]);

async function* sources(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".") || SKIP.has(e.name)) continue;
    const p = join(dir, e.name);
    if (e.isDirectory) yield* sources(p);
    else if (/\.(ts|tsx|js|mjs)$/.test(e.name)) yield p;
  }
}

/** Module specifiers of static imports, re-exports, dynamic imports and type references. */
function specifiers(text: string): string[] {
  const out: string[] = [];
  const patterns = [
    /^\s*(?:import|export)\s[^;]*?\sfrom\s*["']([^"']+)["']/gm,
    /^\s*import\s*["']([^"']+)["']/gm,
    /\bimport\(\s*["']([^"']+)["']\s*\)/g,
    /\/\/\/\s*<reference\s+types=["']([^"']+)["']/g,
  ];
  for (const re of patterns) for (const m of text.matchAll(re)) out.push(m[1]);
  return out;
}

Deno.test("every package import is a fully specified npm: specifier, one version per package", async () => {
  const bare: string[] = [];
  const versions = new Map<string, Set<string>>();
  const files = [join(root, "mod.ts")];
  for (const f of FOLDERS) for await (const p of sources(join(root, f))) files.push(p);
  for (const path of files) {
    const text = await Deno.readTextFile(path);
    for (const s of specifiers(text)) {
      const where = `${relative(root, path)}: "${s}"`;
      if (/^(\.{1,2}\/|\/|node:|data:|https?:|file:)/.test(s)) continue;
      if (!/^[@A-Za-z][\w@./:-]*$/.test(s)) continue; // text in a string or comment, not a module
      const npm = /^npm:(@?[^@/]+(?:\/[^@/]+)?)@(\d+\.\d+\.\d+)(\/.*)?$/.exec(s);
      if (!npm) {
        bare.push(where);
        continue;
      }
      const set = versions.get(npm[1]) ?? new Set();
      set.add(npm[2]);
      versions.set(npm[1], set);
    }
  }
  assertEquals(bare, [], "bare or unpinned package imports (use npm:name@x.y.z)");
  for (const [name, v] of versions) {
    assertEquals([...v].length, 1, `${name} is imported at versions ${[...v].join(", ")}`);
  }
  assert(versions.has("sharp") && versions.has("fflate"), "the scan found the npm imports");
});

Deno.test("a script outside the checkout imports mod.ts by path and runs, with no config", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-outside-" });
  try {
    const mod = pathToFileURL(join(root, "mod.ts")).href;
    await Deno.writeTextFile(
      join(dir, "use_bloom.ts"),
      `import { encodeSafetensors, openSafetensors, vitConfig, writeSyntheticImageFolder } from ${
        JSON.stringify(mod)
      };
const path = "tiny.safetensors";
await Deno.writeFile(path, encodeSafetensors(path, {
  w: { dtype: "f32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) },
}));
using f = await openSafetensors(path);
const w = await f.tensors.get("w")!.f32();
// sharp (a native addon) from Deno's global npm cache: two tiny PNG cells.
const written = await writeSyntheticImageFolder("cells", { perClass: 1, size: 16, classes: ["lymphocyte", "neutrophil"] });
console.log(JSON.stringify({ w: [...w], dim: vitConfig("vit_small").dim, files: written.files.length }));
`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--node-modules-dir=none", "use_bloom.ts"],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert(out.success, `the outside script failed (${out.code}):\n${stderr}`);
    const got = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
    assertEquals(got, { w: [1, 2, 3, 4], dim: 384, files: 2 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
