/**
 * Drives the page in a real browser, for the tests and the benchmark (Deno
 * side; the page itself never imports this). Chromium from the system
 * (Debian's `chromium` package) through playwright-core, headless, WebGPU on
 * its software adapter (SwiftShader), a fresh profile per session, every
 * request recorded so a test can prove nothing left the machine.
 */
import { type BrowserContext, chromium, type Page } from "npm:playwright-core@1.65.1";
import { writePth } from "../data/pth_writer.ts";
import { randomVitWeights } from "../graph/init.ts";
import type { VitConfig } from "../graph/vit.ts";
import { serveApp } from "../cli/app.ts";

/** Where Chromium is looked for: `$BLOOM_CHROMIUM`, then the usual system paths. */
export function findChromium(): string | null {
  const env = (() => {
    try {
      return Deno.env.get("BLOOM_CHROMIUM");
    } catch {
      return undefined;
    }
  })();
  const candidates = [
    env,
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
  ].filter((p): p is string => Boolean(p));
  for (const p of candidates) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* next */ }
  }
  return null;
}

/** Chromium's flags: headless, WebGPU on SwiftShader, no background traffic of its own. */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--enable-unsafe-swiftshader",
  "--use-webgpu-adapter=swiftshader",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** Flags per adapter: SwiftShader, the system's GPU (Vulkan on Linux), or no WebGPU at all. */
const ADAPTER_ARGS = {
  software: CHROMIUM_ARGS,
  gpu: CHROMIUM_ARGS.filter((a) => !/swiftshader/.test(a))
    .concat(["--enable-features=Vulkan", "--use-angle=vulkan"]),
  none: CHROMIUM_ARGS.filter((a) => !/webgpu|swiftshader/.test(a)),
};

/** A served page open in a browser. */
export interface PageSession {
  page: Page;
  context: BrowserContext;
  /** The server's base URL. */
  url: string;
  /** Every URL the browser requested, in order. */
  requests: string[];
  /** Console errors and page errors, for failure messages. */
  errors: string[];
  /** Requests to anything but the page's own server (and its blob:/data: URLs). */
  foreignRequests(): string[];
  close(): Promise<void>;
}

/**
 * Serves the page on a free loopback port and opens it in Chromium, with
 * WebGPU on SwiftShader (`adapter: "software"`, the default), on the GPU, or
 * without WebGPU (`"none"`).
 */
export async function openPage(
  chromiumPath: string,
  opts: { adapter?: keyof typeof ADAPTER_ARGS } = {},
): Promise<PageSession> {
  const { server, url } = await serveApp({ port: 0 });
  const profile = await Deno.makeTempDir({ prefix: "bloom-chromium-" });
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath,
      headless: true,
      args: ADAPTER_ARGS[opts.adapter ?? "software"],
      acceptDownloads: true,
      viewport: { width: 1280, height: 900 },
    });
  } catch (e) {
    await server.shutdown();
    await Deno.remove(profile, { recursive: true }).catch(() => {});
    throw e;
  }
  const requests: string[] = [];
  const errors: string[] = [];
  context.on("request", (r) => requests.push(r.url()));
  const page = context.pages()[0] ?? await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(e.message));
  const origin = new URL(url).origin;
  await page.goto(url);
  await page.waitForSelector("body[data-engine=ready], body[data-engine=no-gpu]");
  return {
    page,
    context,
    url,
    requests,
    errors,
    foreignRequests: () =>
      requests.filter((r) =>
        !(r.startsWith(origin + "/") || r.startsWith(`blob:${origin}/`) || r.startsWith("data:"))
      ),
    async close() {
      await context.close();
      await server.shutdown();
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    },
  };
}

/** What the page reports of itself (`bloom.snapshot()` in app/main.ts). */
export interface Snapshot {
  adapter: { describe: string; name: string } | null;
  model: { arch: string; layout: string; params: number; dim: number; file: string } | null;
  inputSize: number;
  cells: {
    id: number;
    path: string;
    sample: string;
    label: string | null;
    embedded: boolean;
    predicted: string | null;
    confidence: number | null;
    error: string | null;
  }[];
  classes: string[] | null;
  method: string | null;
  umapPoints: number;
  lastJob: { cells: number; seconds: number } | null;
  messages: { kind: string; text: string }[];
}

/** The page's own account of its state. */
export function snapshot(page: Page): Promise<Snapshot> {
  return page.evaluate(() => (globalThis as unknown as PageWindow).bloom.snapshot());
}

/**
 * Loads weights through the file input, after setting the input side, heads
 * and batch; whether the page could use them.
 */
export async function loadWeights(
  page: Page,
  path: string,
  opts: { size: number; heads?: number; batch?: number },
): Promise<"loaded" | "failed"> {
  await page.fill("#input-size", String(opts.size));
  await page.fill("#heads", opts.heads ? String(opts.heads) : "");
  if (opts.batch) await page.fill("#batch-size", String(opts.batch));
  await page.setInputFiles("#weights-input", path);
  await page.waitForSelector("body[data-model=loaded], body[data-model=failed]", {
    timeout: 600_000,
  });
  return await page.getAttribute("body", "data-model") as "loaded" | "failed";
}

/**
 * The page's globals as the tests use them. Callbacks passed to `evaluate`
 * run in the page but are type-checked here, where there is no DOM library,
 * and string callbacks are refused by the page's Content-Security-Policy
 * (no eval); so they read the page through this shape.
 */
export interface PageWindow {
  document: {
    body: { dataset: Record<string, string | undefined> };
    getElementById(id: string): { dispatchEvent(ev: unknown): boolean } | null;
  };
  DataTransfer: new () => { items: { add(file: File): unknown } };
  DragEvent: new (type: string, init: Record<string, unknown>) => unknown;
  bloom: {
    snapshot(): Snapshot;
    embeddings(): Record<string, number[]>;
    loseDevice(): void;
    simulateMemory(cells: number | null): void;
  };
}

/** Waits until no job runs, every cell is embedded or refused, and the analysis is done. */
export async function waitSettled(page: Page, timeout = 600_000): Promise<void> {
  await page.waitForFunction(
    () => {
      const w = globalThis as unknown as PageWindow;
      const b = w.document.body.dataset;
      return b.job === "idle" && b.analysis === "done" &&
        w.bloom.snapshot().cells.every((c) => c.embedded || c.error !== null);
    },
    null,
    { timeout, polling: 200 },
  );
}

/** Clicks an export button and returns the downloaded bytes and file name. */
export async function download(
  page: Page,
  button: string,
): Promise<{ name: string; bytes: Uint8Array }> {
  const [dl] = await Promise.all([page.waitForEvent("download"), page.click(button)]);
  const path = await dl.path();
  return { name: dl.suggestedFilename(), bytes: await Deno.readFile(path) };
}

/**
 * Writes a DINOv2-hub-layout `.pth` of fresh weights for `cfg` (DINOv2's
 * initialisation, then uniform jitter of ±`jitter`/2 so LayerScale does not
 * mute the blocks and every image gets its own embedding): the page's
 * weights in tests and the benchmark, with no download.
 */
export async function writeRandomCheckpoint(
  path: string,
  cfg: VitConfig,
  seed: number,
  jitter = 0.05,
): Promise<void> {
  await writePth(path, randomVitWeights(cfg, seed, jitter));
}
