/**
 * Named weights: the table's shape, name lookup, and download / verify /
 * cache against a local HTTP server (tests/weights_server.ts) that cuts
 * connections, answers Range or not, fails with 404/500 and alters bytes.
 * No test touches the internet: every URL the downloads use is 127.0.0.1.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { InputError } from "../data/errors.ts";
import { openCheckpoint } from "../graph/checkpoint.ts";
import { ARCHS } from "../graph/vit.ts";
import { findCached, readRecord, verifyCached } from "../pipelines/weights/cache.ts";
import {
  fetchWeights,
  type FetchWeightsOptions,
  resolveWeights,
  WeightsError,
  WeightsNameError,
} from "../pipelines/weights/download.ts";
import {
  lookupWeights,
  mirrorFileName,
  nearestNames,
  normalizeName,
  UNPUBLISHED,
  WEIGHTS,
  WEIGHTS_NAMES,
  type WeightsEntry,
  type WeightsTable,
} from "../pipelines/weights/registry.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { tinyVit, writeTinyCheckpoint } from "./fixtures.ts";
import { gpuTest } from "./helpers.ts";
import { fmtBytes } from "../kernels/pool.ts";
import { Model } from "../pipelines/model.ts";
import { Progress } from "../pipelines/progress.ts";
import { startServer, type TestServer, type TlsFiles } from "./weights_server.ts";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** A tiny DINOv2-layout checkpoint (hub keys, width 8): its bytes. */
async function tinyCheckpoint(dir: string): Promise<Uint8Array> {
  const path = join(dir, "tiny.pth");
  await writeTinyCheckpoint(path, { vit: tinyVit({ dim: 8, mlpHidden: 16 }), seed: 17 });
  return await Deno.readFile(path);
}

interface Fixture {
  server: TestServer;
  dir: string;
  cache: string;
  body: Uint8Array;
  logs: string[];
  /** A table with one name, "tiny", served from `path` on the test server. */
  table(src?: Partial<WeightsEntry["sources"][0]>, path?: string): WeightsTable;
  opts(extra?: FetchWeightsOptions): FetchWeightsOptions;
  /** Files left in the cache folder. */
  files(): Promise<string[]>;
  close(): Promise<void>;
}

async function fixture(): Promise<Fixture> {
  const dir = await Deno.makeTempDir({ prefix: "bloom-weights-" });
  const body = await tinyCheckpoint(dir);
  const server = startServer({ "/tiny.pth": { body } });
  const cache = join(dir, "cache");
  const logs: string[] = [];
  const f: Fixture = {
    server,
    dir,
    cache,
    body,
    logs,
    table: (src = {}, path = "/tiny.pth") => ({
      tiny: {
        title: "tiny test ViT",
        family: "dinov2",
        arch: "vit_small",
        registers: 0,
        file: "tiny.pth",
        sources: [{
          url: `${server.base}${path}`,
          bytes: body.length,
          sha256: sha256(body),
          provenance: "made by the test",
          ...src,
        }],
      },
    }),
    opts: (extra = {}) => ({
      table: f.table(),
      cacheDir: cache,
      retryDelayMs: 0,
      lockPollMs: 20,
      log: (l) => logs.push(l),
      progress: { silent: true },
      env: () => undefined,
      ...extra,
    }),
    files: async () => {
      const out: string[] = [];
      try {
        for await (const e of Deno.readDir(cache)) out.push(e.name);
      } catch { /* no cache folder yet */ }
      return out.sort();
    },
    close: async () => {
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
  return f;
}

Deno.test("weights table: every name has URLs, a size, a SHA-256 or 'unpublished', an architecture", () => {
  assertEquals(Object.keys(WEIGHTS).sort(), [...WEIGHTS_NAMES].sort());
  const files = new Set<string>();
  const hashes = new Set<string>();
  for (const [name, e] of Object.entries(WEIGHTS) as [string, WeightsEntry][]) {
    assert(e.arch in ARCHS, `${name}: architecture ${e.arch}`);
    assert(e.registers === 0 || e.registers === 4, `${name}: registers`);
    assert(e.title.length > 0, `${name}: title`);
    assert(e.family === name.split("-")[0], `${name}: family ${e.family}`);
    assert(e.file === `${name}.pth`, `${name}: cache file ${e.file}`);
    assert(!files.has(e.file), `${name}: file name used twice`);
    files.add(e.file);
    assert(e.sources.length >= 1, `${name}: no source`);
    for (const s of e.sources) {
      assert(/^https:\/\/[^/]+\/.+/.test(s.url), `${name}: URL ${s.url}`);
      assert(
        s.bytes === UNPUBLISHED || (Number.isSafeInteger(s.bytes) && s.bytes > 1e6),
        `${name}: size ${s.bytes}`,
      );
      assert(
        s.sha256 === UNPUBLISHED || /^[0-9a-f]{64}$/.test(s.sha256),
        `${name}: SHA-256 ${s.sha256}`,
      );
      if (s.sha256 !== UNPUBLISHED) {
        assert(!hashes.has(s.sha256), `${name}: SHA-256 listed twice`);
        hashes.add(s.sha256);
      }
      assert(s.provenance.length > 10, `${name}: provenance`);
    }
    // The file names say the architecture: DINOv2 hub names and DinoBloom's sizes.
    const letter = { vit_small: "s", vit_base: "b", vit_large: "l", vit_giant2: "g" }[e.arch];
    if (e.family === "dinov2") {
      const reg = e.registers ? "_reg4" : "";
      assertEquals(name, `dinov2-vit${letter}14${e.registers ? "-reg4" : ""}`);
      assert(
        e.sources[0].url.endsWith(
          `/dinov2_vit${letter}14/dinov2_vit${letter}14${reg}_pretrain.pth`,
        ),
        `${name}: ${e.sources[0].url}`,
      );
    } else {
      assertEquals(name, `dinobloom-${letter}`);
      assertEquals(e.registers, 0);
      for (const s of e.sources) {
        assert(
          s.url.includes(`DinoBloom-${letter!.toUpperCase()}.pth`) ||
            s.url.endsWith(`pytorch_model_${letter}.bin`),
          `${name}: ${s.url}`,
        );
      }
      assertEquals(e.sources.length, 2, `${name}: a primary and a fallback`);
    }
  }
});

Deno.test("weights names: spellings, nearest names, paths and unknown names", async () => {
  assertEquals(normalizeName("DinoBloom-S"), "dinobloom-s");
  assertEquals(normalizeName("dinov2_vitb14"), "dinov2-vitb14");
  assertEquals(normalizeName("dinov2_vits14_reg"), "dinov2-vits14-reg4");
  assertEquals(normalizeName("dinov2_vitl14_reg4_pretrain"), "dinov2-vitl14-reg4");
  assertEquals(lookupWeights("DINOBLOOM-G")?.entry.arch, "vit_giant2");
  assertEquals(lookupWeights("toString"), undefined);
  assertEquals(nearestNames("dinobloom-sm")[0], "dinobloom-s");
  assertEquals(nearestNames("dinov2-vits14-reg")[0], "dinov2-vits14-reg4");
  assertEquals(nearestNames("resnet50"), []);
  assertEquals(mirrorFileName(WEIGHTS["dinobloom-s"]), "DinoBloom-S.pth");
  assertEquals(mirrorFileName(WEIGHTS["dinov2-vits14"]), "dinov2_vits14_pretrain.pth");

  const opts = { cacheDir: "/nonexistent/never-used", env: () => undefined };
  const e1 = await assertRejects(() => resolveWeights("dinobloom-x", opts), WeightsNameError);
  assert(
    /neither a file nor a known model name; did you mean dinobloom-/.test(e1.message),
    e1.message,
  );
  assertEquals((e1 as WeightsNameError).suggestions, [
    "dinobloom-s",
    "dinobloom-b",
    "dinobloom-l",
    "dinobloom-g",
  ]);
  assert(e1 instanceof InputError, "a bad name is bad input (exit code 2)");
  const e2 = await assertRejects(
    () => resolveWeights("weights/DinoBlom-S.pth", opts),
    WeightsNameError,
  );
  assert(
    /weights\/DinoBlom-S\.pth: no such file; did you mean dinobloom-s/.test(e2.message),
    e2.message,
  );
  const e3 = await assertRejects(() => resolveWeights("resnet50", opts), WeightsNameError);
  assert(e3.message.includes("known names: dinobloom-s, dinobloom-b"), e3.message);
  // An existing path is returned as given, whatever it is called.
  const dir = await Deno.makeTempDir();
  const p = join(dir, "dinobloom-s");
  await Deno.writeTextFile(p, "x");
  assertEquals(await resolveWeights(p, opts), p);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("weights download: verified, cached, loads as a checkpoint; the second call asks nothing", async () => {
  const f = await fixture();
  try {
    const path = await resolveWeights("tiny", f.opts());
    assertEquals(path, join(f.cache, "tiny.pth"));
    assertEquals(await Deno.readFile(path), f.body);
    const rec = (await readRecord(join(f.cache, "tiny.json")))!;
    assertEquals(rec.sha256, sha256(f.body));
    assertEquals(rec.bytes, f.body.length);
    assertEquals(rec.hash, "published");
    assertEquals(await f.files(), ["tiny.json", "tiny.pth"]);
    const ck = await openCheckpoint(path, { heads: 2 });
    assertEquals([ck.layout, ck.config.dim, ck.config.depth], ["dinov2-hub", 8, 1]);
    ck.file.close();
    assertEquals(f.server.count("/tiny.pth"), 1);
    assertEquals(await resolveWeights("TINY", f.opts({ offline: true })), path);
    assertEquals(f.server.count("/tiny.pth"), 1);
    assertEquals((await verifyCached(f.cache, "tiny", f.table().tiny))?.ok, true);
  } finally {
    await f.close();
  }
});

Deno.test("weights download: no published hash records the one found, and verify holds the file to it", async () => {
  const f = await fixture();
  try {
    const table = f.table({ sha256: UNPUBLISHED, bytes: UNPUBLISHED });
    const got = await fetchWeights("tiny", f.opts({ table }));
    assertEquals(got.record.hash, "first-use");
    assertEquals(got.record.sha256, sha256(f.body));
    assert(f.logs.some((l) => l.includes("no SHA-256 is published") && l.includes(sha256(f.body))));
    // Damage the cached file: verify names both hashes and removes it.
    const bad = f.body.slice();
    bad[100] ^= 1;
    await Deno.writeFile(got.path, bad);
    const v = (await verifyCached(f.cache, "tiny", table.tiny))!;
    assertEquals([v.ok, v.problem, v.expected, v.found], [
      false,
      "SHA-256 differs",
      sha256(f.body),
      sha256(bad),
    ]);
    assertEquals(await f.files(), []);
    assertEquals(await findCached(f.cache, "tiny", table.tiny), null);
  } finally {
    await f.close();
  }
});

Deno.test("weights download: a cut connection resumes with a Range request, in the same call and the next", async () => {
  const f = await fixture();
  try {
    const half = f.body.length >> 1;
    // Same call: cut once, resumed at once.
    f.server.routes.set("/tiny.pth", { body: f.body, cutAt: [half], chunk: 1000 });
    const got = await fetchWeights("tiny", f.opts({ retries: 1 }));
    assertEquals(await Deno.readFile(got.path), f.body);
    const [first, second] = f.server.seen;
    assertEquals(first.range, undefined);
    assertEquals(second.range, `bytes=${half}-`);
    assertEquals(second.ifRange, `"v1-${f.body.length}"`);
    assert(f.logs.some((l) => /connection lost .* at /.test(l)), f.logs.join("\n"));

    // Next call: no retries left, the part stays; the next run resumes it.
    await Deno.remove(f.cache, { recursive: true });
    f.server.seen.length = 0;
    f.server.routes.set("/tiny.pth", { body: f.body, cutAt: [half], chunk: 1000 });
    const e = await assertRejects(() => fetchWeights("tiny", f.opts({ retries: 0 })), WeightsError);
    assertEquals((e as WeightsError).kind, "cut");
    assert(
      /stopped at \d+ of \d+ bytes.*run the same command again to resume/s.test(e.message),
      e.message,
    );
    const part = await Deno.stat(join(f.cache, "tiny.pth.part"));
    assert(part.size > 0 && part.size < f.body.length, `part of ${part.size} bytes`);
    assertEquals((await f.files()).includes("tiny.pth"), false);
    const again = await fetchWeights("tiny", f.opts({ retries: 0 }));
    assertEquals(await Deno.readFile(again.path), f.body);
    assertEquals(f.server.seen[1].range, `bytes=${part.size}-`);
    assertEquals(await f.files(), ["tiny.json", "tiny.pth"]);
  } finally {
    await f.close();
  }
});

Deno.test("weights download: a server that ignores Range sends it all again, and bloom starts over", async () => {
  const f = await fixture();
  try {
    f.server.routes.set("/tiny.pth", { body: f.body, ranges: false, cutAt: [5000], chunk: 1000 });
    const got = await fetchWeights("tiny", f.opts({ retries: 2 }));
    assertEquals(await Deno.readFile(got.path), f.body);
    assertEquals(f.server.count("/tiny.pth"), 2);
    assert(f.server.seen[1].range?.startsWith("bytes="), "the resume asked for a range");
    assert(f.logs.some((l) => l.includes("no resume); starting over")), f.logs.join("\n"));
  } finally {
    await f.close();
  }
});

Deno.test("weights download: HTTP 404 and 500 say so; a fallback source is tried; nothing half-written stays", async () => {
  const f = await fixture();
  try {
    f.server.routes.set("/gone.pth", { body: f.body, status: 404 });
    f.server.routes.set("/broken.pth", { body: f.body, status: 500 });
    const e404 = await assertRejects(
      () => fetchWeights("tiny", f.opts({ table: f.table({}, "/gone.pth") })),
      WeightsError,
    );
    assertEquals((e404 as WeightsError).kind, "http");
    assert(/HTTP 404 .*gone\.pth: the file is not there/.test(e404.message), e404.message);
    assert(e404.message.includes("To go on: download http"), e404.message);
    const e500 = await assertRejects(
      () => fetchWeights("tiny", f.opts({ table: f.table({}, "/broken.pth") })),
      WeightsError,
    );
    assert(/HTTP 500 .*a server error; try again later/.test(e500.message), e500.message);
    assertEquals(await f.files(), []);
    // Primary answers 404, the fallback has the file.
    const two = f.table({}, "/gone.pth");
    const fallback = { ...two.tiny.sources[0], url: `${f.server.base}/tiny.pth` };
    const table = { tiny: { ...two.tiny, sources: [two.tiny.sources[0], fallback] as const } };
    const got = await fetchWeights("tiny", f.opts({ table }));
    assertEquals(got.record.source, fallback.url);
    assertEquals(await Deno.readFile(got.path), f.body);
    assert(f.logs.some((l) => l.includes("trying the next source")));
  } finally {
    await f.close();
  }
});

Deno.test("weights download: altered or truncated bytes fail with both hashes and leave nothing", async () => {
  const f = await fixture();
  try {
    f.server.routes.set("/tiny.pth", { body: f.body, alter: true });
    const bad = f.body.slice();
    bad[bad.length >> 1] ^= 0xff;
    const e = await assertRejects(() => fetchWeights("tiny", f.opts()), WeightsError);
    assertEquals((e as WeightsError).kind, "hash");
    assert(e.message.includes(`SHA-256 is ${sha256(bad)}, expected ${sha256(f.body)}`), e.message);
    assert(e.message.includes("The file was removed"), e.message);
    assertEquals(await f.files(), []);
    // A server offering a shorter (or longer) file is refused before any byte is kept.
    f.server.routes.set("/short.pth", { body: f.body.subarray(0, 1000) });
    const e2 = await assertRejects(
      () => fetchWeights("tiny", f.opts({ table: f.table({}, "/short.pth") })),
      WeightsError,
    );
    assertEquals((e2 as WeightsError).kind, "size");
    assert(
      e2.message.includes(`offers 1000 bytes`) && e2.message.includes(`${f.body.length} bytes`),
    );
    assertEquals(await f.files(), []);
    // Without a published size, a body that ends before its Content-Length is a cut, never cached.
    f.server.routes.set("/trunc.pth", {
      body: f.body.subarray(0, 3000),
      contentLength: f.body.length,
    });
    const e3 = await assertRejects(
      () =>
        fetchWeights(
          "tiny",
          f.opts({
            table: f.table({ bytes: UNPUBLISHED, sha256: UNPUBLISHED }, "/trunc.pth"),
            retries: 0,
          }),
        ),
      WeightsError,
    );
    assertEquals((e3 as WeightsError).kind, "cut");
    assertEquals((await f.files()).filter((n) => !n.includes(".part")), []);
  } finally {
    await f.close();
  }
});

Deno.test("weights download: no network, offline mode and a mirror", async () => {
  const f = await fixture();
  try {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const closed = (l.addr as Deno.NetAddr).port;
    l.close();
    const table = f.table({ url: `http://127.0.0.1:${closed}/tiny.pth` });
    const e = await assertRejects(() => fetchWeights("tiny", f.opts({ table })), WeightsError);
    assertEquals((e as WeightsError).kind, "network");
    assert(e.message.includes(`cannot reach 127.0.0.1:${closed}`), e.message);
    assert(e.message.includes("Connection refused") && e.message.includes("BLOOM_WEIGHTS_URL"));
    assertEquals(await f.files(), []);

    const off = await assertRejects(
      () => fetchWeights("tiny", f.opts({ env: (k) => (k === "BLOOM_OFFLINE" ? "1" : undefined) })),
      WeightsError,
    );
    assertEquals((off as WeightsError).kind, "offline");
    assert(off.message.includes(f.cache) && off.message.includes("./bloom weights fetch tiny"));
    assertEquals(f.server.count("/tiny.pth"), 0);

    // The mirror serves the primary's file name and is checked against the table.
    f.server.routes.set("/mirror/tiny.pth", { body: f.body });
    const got = await fetchWeights("tiny", f.opts({ table, mirror: `${f.server.base}/mirror/` }));
    assertEquals(got.record.url, `${f.server.base}/mirror/tiny.pth`);
    assertEquals(got.record.source, table.tiny.sources[0].url);
    assertEquals(await findCached(f.cache, "tiny", table.tiny) !== null, true);
  } finally {
    await f.close();
  }
});

Deno.test({
  name: "weights download: a full disk stops with a clear message and removes the part",
  ignore: (() => {
    try {
      Deno.statSync("/dev/full");
      return false;
    } catch {
      return true;
    }
  })(),
  fn: async () => {
    const f = await fixture();
    try {
      // /dev/full fails every write with ENOSPC, as a full disk does.
      const e = await assertRejects(
        () =>
          fetchWeights("tiny", f.opts({ openPart: () => Deno.open("/dev/full", { write: true }) })),
        WeightsError,
      );
      assertEquals((e as WeightsError).kind, "disk-full");
      assert(/disk holding the weights cache is full.*BLOOM_CACHE_DIR/s.test(e.message), e.message);
      assertEquals(await f.files(), []);
    } finally {
      await f.close();
    }
  },
});

Deno.test("weights download: two concurrent fetches of one name download it once", async () => {
  const f = await fixture();
  try {
    f.server.routes.set("/tiny.pth", { body: f.body, chunk: 2048, delayMs: 15 });
    const [a, b] = await Promise.all([
      fetchWeights("tiny", f.opts()),
      fetchWeights("tiny", f.opts()),
    ]);
    assertEquals(a.path, b.path);
    assertEquals(f.server.count("/tiny.pth"), 1);
    assert(
      f.logs.some((l) => /waiting for process \d+ on .* which is downloading it/.test(l)),
      f.logs.join("\n"),
    );
    assertEquals(await f.files(), ["tiny.json", "tiny.pth"]);
  } finally {
    await f.close();
  }
});

async function child(
  arg: unknown,
  env: Record<string, string> = {},
): Promise<{ path?: string; waited?: boolean; kind?: string; message?: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./weights_child.ts", import.meta.url).pathname,
      JSON.stringify(arg),
    ],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!text) throw new Error(`child printed nothing: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text.split("\n").pop()!);
}

Deno.test("weights download: two processes fetching one name download it once", async () => {
  const f = await fixture();
  try {
    // A slow transfer (about 1.5 s), so the second process starts while the first downloads.
    f.server.routes.set("/tiny.pth", { body: f.body, chunk: 2048, delayMs: 100 });
    const arg = { name: "tiny", table: f.table(), cacheDir: f.cache };
    const [a, b] = await Promise.all([child(arg), child(arg)]);
    assertEquals([a.path, b.path], [join(f.cache, "tiny.pth"), join(f.cache, "tiny.pth")]);
    assertEquals(f.server.count("/tiny.pth"), 1);
    assertEquals([a.waited, b.waited].filter(Boolean).length, 1, "one process waited on the lock");
    assertEquals(await Deno.readFile(a.path!), f.body);
  } finally {
    await f.close();
  }
});

Deno.test("weights download: HTTP_PROXY is honoured, NO_PROXY bypasses it", async () => {
  const f = await fixture();
  // The test server also answers absolute-form (proxy) requests and logs them as proxied.
  const proxy = startServer({ "/tiny.pth": { body: f.body } });
  try {
    const arg = { name: "tiny", table: f.table(), cacheDir: f.cache };
    const via = await child(arg, { HTTP_PROXY: proxy.base });
    assertEquals(via.path, join(f.cache, "tiny.pth"));
    assertEquals(proxy.seen.map((s) => [s.path, s.proxied]), [["/tiny.pth", true]]);
    assertEquals(f.server.count("/tiny.pth"), 0);
    await Deno.remove(f.cache, { recursive: true });
    const direct = await child(arg, { HTTP_PROXY: proxy.base, NO_PROXY: "127.0.0.1" });
    assertEquals(direct.path, join(f.cache, "tiny.pth"));
    assertEquals(proxy.seen.length, 1);
    assertEquals(f.server.count("/tiny.pth"), 1);
  } finally {
    await proxy.close();
    await f.close();
  }
});

/** Whether openssl is installed (it makes the HTTPS test's certificates). */
const HAVE_OPENSSL = await new Deno.Command("openssl", { args: ["version"], stdout: "null" })
  .output().then((o) => o.success, () => false);

/** A throwaway CA and a certificate for 127.0.0.1 that it signed; `ca`: the CA's PEM file. */
async function testCertificates(dir: string): Promise<TlsFiles & { ca: string }> {
  const f = (name: string) => join(dir, name);
  await Deno.writeTextFile(
    f("leaf.ext"),
    "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
  );
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  for (
    const args of [
      [
        "req",
        "-x509",
        ...ec,
        "-keyout",
        f("ca.key"),
        "-out",
        f("ca.pem"),
        "-subj",
        "/CN=bloom test CA",
        "-days",
        "1",
      ],
      ["req", ...ec, "-keyout", f("leaf.key"), "-out", f("leaf.csr"), "-subj", "/CN=127.0.0.1"],
      [
        "x509",
        "-req",
        "-in",
        f("leaf.csr"),
        "-CA",
        f("ca.pem"),
        "-CAkey",
        f("ca.key"),
        "-CAcreateserial",
        "-out",
        f("leaf.pem"),
        "-days",
        "1",
        "-extfile",
        f("leaf.ext"),
      ],
    ]
  ) {
    const out = await new Deno.Command("openssl", { args, stdout: "null", stderr: "piped" })
      .output();
    assert(out.success, `openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return {
    cert: await Deno.readTextFile(f("leaf.pem")),
    key: await Deno.readTextFile(f("leaf.key")),
    ca: f("ca.pem"),
  };
}

Deno.test({
  name: "weights download: HTTPS_PROXY carries an https download through a CONNECT tunnel",
  ignore: !HAVE_OPENSSL,
  fn: async () => {
    const f = await fixture();
    const tls = await testCertificates(f.dir);
    const secure = startServer({ "/tiny.pth": { body: f.body } }, { tls });
    const proxy = startServer();
    try {
      const arg = {
        name: "tiny",
        table: f.table({ url: `${secure.base}/tiny.pth` }),
        cacheDir: f.cache,
      };
      // DENO_CERT: the child trusts the test CA (as a lab trusts its proxy's or mirror's CA).
      const via = await child(arg, { HTTPS_PROXY: proxy.base, DENO_CERT: tls.ca });
      assertEquals(via.path, join(f.cache, "tiny.pth"), JSON.stringify(via));
      assertEquals(await Deno.readFile(via.path!), f.body);
      assertEquals(proxy.seen.map((s) => [s.path, s.proxied]), [[
        `CONNECT 127.0.0.1:${secure.port}`,
        true,
      ]]);
      assertEquals(secure.count("/tiny.pth"), 1);
      // HTTP_PROXY alone is for http:// URLs: the https download goes direct.
      await Deno.remove(f.cache, { recursive: true });
      const direct = await child(arg, { HTTP_PROXY: proxy.base, DENO_CERT: tls.ca });
      assertEquals(direct.path, join(f.cache, "tiny.pth"), JSON.stringify(direct));
      assertEquals([proxy.seen.length, secure.count("/tiny.pth")], [1, 2]);
    } finally {
      await secure.close();
      await proxy.close();
      await f.close();
    }
  },
});

gpuTest(
  "weights: Model.load takes a name, downloads it once and loads the cached file",
  async (gpu) => {
    const f = await fixture();
    try {
      const m = await Model.load("tiny", { heads: 2, gpu, weights: f.opts() });
      assertEquals([m.config.dim, m.config.depth, m.layout], [8, 1, "dinov2-hub"]);
      m.dispose();
      const again = await Model.load("tiny", { heads: 2, gpu, weights: f.opts({ offline: true }) });
      again.dispose();
      assertEquals(f.server.count("/tiny.pth"), 1);
    } finally {
      await f.close();
    }
  },
);

Deno.test("weights CLI: fetch from a mirror, list, path, verify (a damaged file fails and goes)", async () => {
  const f = await fixture();
  try {
    // dinov2-vitg14 has no published hash: the mirror's file is recorded on first use.
    f.server.routes.set("/m/dinov2_vitg14_pretrain.pth", { body: f.body });
    const cli = async (...args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../cli/weights.ts", import.meta.url).pathname, ...args],
        env: { BLOOM_CACHE_DIR: f.cache, BLOOM_WEIGHTS_URL: `${f.server.base}/m`, BLOOM_CLI: "" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
    };
    const file = join(f.cache, "dinov2-vitg14.pth");
    const fetched = await cli("fetch", "dinov2_vitg14", "--quiet");
    assertEquals([fetched.code, fetched.stdout], [0, `${file}\n`], fetched.stderr);
    assert(fetched.stderr.includes("recorded"), fetched.stderr);
    const list = await cli("list");
    assert(/dinov2-vitg14 .* yes \(hash recorded\)/.test(list.stdout), list.stdout);
    assert(/dinobloom-s .* no/.test(list.stdout), list.stdout);
    assertEquals((await cli("path", "dinov2-vitg14")).stdout, `${file}\n`);
    const notCached = await cli("path", "dinobloom-s");
    assertEquals(notCached.code, 1);
    assert(notCached.stderr.includes("fetch dinobloom-s downloads it"), notCached.stderr);
    const ok = await cli("verify");
    assertEquals(ok.code, 0, ok.stdout);
    assert(ok.stdout.includes(`dinov2-vitg14: ok (SHA-256 ${sha256(f.body)}, first-use)`));
    const bad = f.body.slice();
    bad[10] ^= 1;
    await Deno.writeFile(file, bad);
    const failed = await cli("verify", "dinov2-vitg14");
    assertEquals(failed.code, 1);
    assert(
      failed.stdout.includes(`SHA-256 differs (expected ${sha256(f.body)}, found ${sha256(bad)})`),
      failed.stdout,
    );
    assertEquals(await f.files(), []);
    const typo = await cli("fetch", "dinobloom-xl");
    assertEquals(typo.code, 2);
    assert(typo.stderr.includes("did you mean dinobloom-"), typo.stderr);
  } finally {
    await f.close();
  }
});

Deno.test("weights: predict --weights takes a name too (a typo gets the nearest names)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-weights-predict-" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../cli/predict.ts", import.meta.url).pathname,
        ...[
          "--head",
          join(dir, "heads"),
          "--input",
          join(dir, "cells"),
          "--out",
          join(dir, "p.csv"),
        ],
        ...["--weights", "dinobloom-sx"],
      ],
      env: { BLOOM_CACHE_DIR: join(dir, "cache"), BLOOM_OFFLINE: "1", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 2, err);
    assert(err.includes("'dinobloom-sx' is neither a file nor a known model name"), err);
    assert(err.includes("did you mean dinobloom-s"), err);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("weights: --offline on embed and train uses the cache only", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bloom-weights-offline-" });
  // Were --offline ignored, the download would meet a proxy that refuses: never the internet.
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closed = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  try {
    await Deno.mkdir(join(dir, "cells"));
    const cli = async (file: string, ...args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL(`../cli/${file}`, import.meta.url).pathname, ...args],
        env: { BLOOM_CACHE_DIR: join(dir, "cache"), HTTPS_PROXY: closed, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: out.code, err: new TextDecoder().decode(out.stderr) };
    };
    const cells = join(dir, "cells");
    for (
      const [name, r] of [
        [
          "dinobloom-s",
          await cli(
            "embed.ts",
            "--weights",
            "dinobloom-s",
            "--offline",
            "--input",
            cells,
            "--out",
            join(dir, "e.safetensors"),
          ),
        ],
        [
          "dinov2-vits14",
          await cli(
            "train.ts",
            "--init",
            "dinov2-vits14",
            "--offline",
            "--data",
            cells,
            "--out",
            join(dir, "run"),
          ),
        ],
      ] as const
    ) {
      assertEquals(r.code, 1, r.err);
      assert(r.err.includes(`${name} is not in the weights cache`), r.err);
      assert(r.err.includes("offline mode (--offline or BLOOM_OFFLINE=1) forbids downloading"));
    }
    assertEquals(await Array.fromAsync(Deno.readDir(dir)).then((e) => e.map((x) => x.name)), [
      "cells",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("weights download progress: bytes, rate and ETA in binary units", () => {
  let t = 0;
  const lines: string[] = [];
  const p = new Progress(4 << 20, {
    label: "tiny",
    format: fmtBytes,
    now: () => t,
    sink: { write: (s) => lines.push(s), isTerminal: false },
    intervalMs: 0,
  });
  t = 2000;
  p.tick(1 << 20);
  assertEquals(lines.pop(), "tiny:  1 MiB/4 MiB (25.0%)  512 KiB/s  ETA 6s\n");
});
