/**
 * The floors: imports only go downward (or sideways within a floor).
 *
 *   data, kernels → graph → eval → pipelines → cli, mod.ts → bench
 *
 * Inside pipelines, `pipelines/dataset/` (the readers) sits below the rest,
 * so ingest and the loader share it and it imports neither.
 * Every .ts file's imports are read — static (`import`/`export … from`),
 * dynamic (`import("…")`) and workers (`new URL("….ts", import.meta.url)`) —
 * with comments stripped, so an example in a doc comment does not count.
 * `tests/` and `scripts/` sit outside the floors: they may import anything,
 * and nothing on a floor may import them.
 */
import { dirname, join, relative, resolve } from "node:path";
import { assert, assertEquals } from "./assert.ts";

const ROOT = resolve(dirname(new URL(import.meta.url).pathname), "..");

/**
 * Floor of each top-level directory or root file (or deeper folder, which
 * then sits below the rest of its directory); higher floors import lower ones.
 */
const FLOORS: Record<string, number> = {
  data: 0,
  kernels: 0,
  graph: 1,
  eval: 2,
  // The dataset readers that both ingest and the loader consume.
  "pipelines/dataset": 3,
  pipelines: 4,
  cli: 5,
  // The browser page: an application over the library, as the command line is.
  app: 5,
  "mod.ts": 5,
  bench: 6,
};
/** Outside the floors: may import any floor; no floor may import them. */
const OUTSIDE = new Set(["tests", "scripts"]);
/** Not bloom's code (dependencies, fixtures, run outputs). */
const SKIP = new Set(["node_modules", ".git", ".tools", "fixtures", "out", "runs"]);

/**
 * Two views of a source text, offsets unchanged: `code` with comments
 * blanked out, and `mask` with string, template and regex contents blanked
 * too (quotes kept), so patterns match only real code.
 */
export function lex(src: string): { code: string; mask: string } {
  const code: string[] = [];
  const mask: string[] = [];
  const blank = (s: string) => s.replace(/[^\n]/g, " ");
  let i = 0;
  // Previous significant token, to tell a regex literal from a division.
  let prev = "";
  let word = "";
  // Brace depth at which each open `${` returns to its template.
  const templates: number[] = [];
  let depth = 0;
  // Emits src[start, i) as a literal: kept in code, contents blanked in mask.
  const literal = (start: number, open: number, close: number) => {
    const s = src.slice(start, i);
    code.push(s);
    mask.push(
      s.slice(0, open) + blank(s.slice(open, s.length - close)) + s.slice(s.length - close),
    );
  };
  // Reads template text up to its end or the next `${` (the opening quote already read).
  const readTemplate = (start: number) => {
    while (i < src.length) {
      if (src[i] === "\\") i += 2;
      else if (src[i] === "`") {
        i++;
        return literal(start, 1, 1);
      } else if (src[i] === "$" && src[i + 1] === "{") {
        i += 2;
        templates.push(depth++);
        return literal(start, 1, 2);
      } else i++;
    }
    literal(start, 1, 0);
  };
  while (i < src.length) {
    const c = src[i];
    const start = i;
    if (c === "/" && src[i + 1] === "/") {
      while (i < src.length && src[i] !== "\n") i++;
      code.push(blank(src.slice(start, i)));
      mask.push(blank(src.slice(start, i)));
    } else if (c === "/" && src[i + 1] === "*") {
      const end = src.indexOf("*/", i + 2);
      i = end < 0 ? src.length : end + 2;
      code.push(blank(src.slice(start, i)));
      mask.push(blank(src.slice(start, i)));
    } else if (c === '"' || c === "'") {
      i++;
      while (i < src.length && src[i] !== c && src[i] !== "\n") i += src[i] === "\\" ? 2 : 1;
      i++;
      literal(start, 1, 1);
      prev = c;
    } else if (c === "`" || (c === "}" && templates.at(-1) === depth - 1)) {
      if (c === "}") templates.pop(), depth--;
      i++;
      readTemplate(start);
      prev = "`";
    } else if (c === "/" && /^$|^[(,=:[!&|?{};+\-*%<>~^]$/.test(prev)) {
      // A regex literal: up to the unescaped `/` outside a character class.
      i++;
      let cls = false;
      while (i < src.length && src[i] !== "\n") {
        if (src[i] === "\\") i++;
        else if (src[i] === "[") cls = true;
        else if (src[i] === "]") cls = false;
        else if (src[i] === "/" && !cls) break;
        i++;
      }
      i++;
      literal(start, 1, 1);
      prev = "/";
    } else {
      if (c === "{") depth++;
      else if (c === "}") depth--;
      i++;
      code.push(c);
      mask.push(c);
      if (/[\w$]/.test(c)) {
        word += c;
        // After `return`, `typeof` and friends a `/` starts a regex.
        prev = /^(return|typeof|case|do|else|in|of|void|yield|await)$/.test(word) ? "(" : "w";
      } else {
        word = "";
        if (/\S/.test(c)) prev = c;
      }
      continue;
    }
    word = "";
  }
  return { code: code.join(""), mask: mask.join("") };
}

/** One import of a file: the specifier as written and how it is imported. */
export interface ImportRef {
  specifier: string;
  kind: "static" | "dynamic" | "worker";
  line: number;
}

/** The imports of a module's source text (specifiers that are plain string literals). */
export function importsOf(src: string): ImportRef[] {
  const { code, mask } = lex(src);
  const out: ImportRef[] = [];
  // Each pattern ends at the specifier's opening quote (matched in `mask`).
  const patterns: [RegExp, ImportRef["kind"]][] = [
    // import x from "m"; import { a, type B } from "m"; export * as n from "m"; import "m".
    [
      /(?:^|[;\s}])(?:import|export)(?:\s+type)?\s*(?:[\w$]+\s*,?\s*)?(?:\{[^{}]*\}|\*(?:\s*as\s+[\w$]+)?)?\s*(?:from\s*)?["']/g,
      "static",
    ],
    [/(?:^|[^\w$.])import\s*\(\s*["'`]/g, "dynamic"],
    [/new\s+URL\s*\(\s*["'`]/g, "worker"],
  ];
  let line = 1;
  let lineAt = 0;
  for (const [re, kind] of patterns) {
    for (const m of mask.matchAll(re)) {
      const at = m.index! + m[0].length;
      const q = code[at - 1];
      const end = code.indexOf(q, at);
      const specifier = code.slice(at, end);
      if (specifier.includes("\n") || (q === "`" && specifier.includes("${"))) continue;
      if (kind === "worker") {
        // Only module URLs resolved against this module (not data files).
        const rest = mask.slice(end + 1, end + 40);
        if (!/^\s*,\s*import\.meta\.url/.test(rest) || !/\.[cm]?[jt]sx?$/.test(specifier)) continue;
      }
      if (at < lineAt) line = 1, lineAt = 0;
      for (; lineAt < at; lineAt++) if (code[lineAt] === "\n") line++;
      out.push({ specifier, kind, line });
    }
  }
  return out.sort((a, b) => a.line - b.line);
}

/** Every .ts file under ROOT, relative to it. */
async function sourceFiles(dir = ROOT): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (SKIP.has(e.name)) continue;
    const path = join(dir, e.name);
    if (e.isDirectory) out.push(...await sourceFiles(path));
    else if (e.isFile && e.name.endsWith(".ts")) out.push(relative(ROOT, path));
  }
  return out.sort();
}

/** The floor of a repository path: the longest FLOORS (or OUTSIDE) entry it lies in, if any. */
function floorOf(path: string): string | undefined {
  const parts = path.split("/");
  for (let n = parts.length; n > 0; n--) {
    const name = parts.slice(0, n).join("/");
    if (name in FLOORS || OUTSIDE.has(name)) return name;
  }
}

Deno.test("importsOf reads static, type, re-export, dynamic and worker imports, not comments", () => {
  const src = [
    '/** import { Model } from "./mod.ts"; */',
    'import { a, type B } from "../graph/a.ts";',
    "import type {",
    "  C,",
    '} from "./c.ts";',
    'export * as ns from "./ns.ts";',
    'export { d } from "./d.ts";',
    'import "./side.ts";',
    'import z, { y } from "npm:z";',
    "// import x from './comment.ts';",
    'const re = /"/g; const q = \'import("./in_string.ts")\';',
    'const m = await import("./lazy.ts");',
    "const s = `${x}` + `a${`b${1}`}c`;",
    'new Worker(new URL("./worker.ts", import.meta.url).href);',
    'const py = new URL("../scripts/x.py", import.meta.url);',
    "export const notAnImport = { from: 1 };",
  ].join("\n");
  assertEquals(importsOf(src).map((r) => `${r.line}:${r.kind}:${r.specifier}`), [
    "2:static:../graph/a.ts",
    "5:static:./c.ts",
    "6:static:./ns.ts",
    "7:static:./d.ts",
    "8:static:./side.ts",
    "9:static:npm:z",
    "12:dynamic:./lazy.ts",
    "14:worker:./worker.ts",
  ]);
});

Deno.test("every import goes down a floor or sideways: data, kernels → graph → eval → pipelines/dataset → pipelines → cli, app, mod.ts → bench", async () => {
  const files = await sourceFiles();
  const bad: string[] = [];
  let checked = 0;
  for (const file of files) {
    const from = floorOf(file);
    if (from === undefined) {
      bad.push(`${file} is on no floor (add its directory to FLOORS in tests/layers_test.ts)`);
      continue;
    }
    if (OUTSIDE.has(from)) continue;
    for (const ref of importsOf(await Deno.readTextFile(join(ROOT, file)))) {
      if (!ref.specifier.startsWith(".")) continue; // npm:, node:, bare names
      const target = relative(ROOT, resolve(ROOT, dirname(file), ref.specifier));
      if (target.startsWith("..")) continue;
      checked++;
      const to = floorOf(target);
      const where = `${file}:${ref.line} imports ${ref.specifier} (${ref.kind})`;
      if (to === undefined) bad.push(`${where}: ${target} is on no floor`);
      else if (OUTSIDE.has(to)) bad.push(`${where}: ${from} may not import ${to}/`);
      else if (FLOORS[to] > FLOORS[from]) {
        bad.push(
          `${where}: ${from} (floor ${FLOORS[from]}) imports up to ${to} (floor ${FLOORS[to]})`,
        );
      }
    }
  }
  assert(checked > 200, `only ${checked} relative imports read: is the walk broken?`);
  assertEquals(bad, [], `upward imports:\n${bad.join("\n")}`);
});
