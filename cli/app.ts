/**
 * `./bloom app [--port 8080] [--host 127.0.0.1] [--open]`: builds bloom's
 * web page (app/, bundled for the browser into app/dist/) and serves it on
 * this computer. Everything the page uses comes from this checkout: its
 * scripts, styles and the browser's own fonts; the Content-Security-Policy
 * sent with it forbids any other origin, so the cells a user drops are read
 * in their browser and go nowhere.
 *
 * `--build` only builds app/dist/ (`deno task app:build`).
 */
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { command, runCommand, UsageError } from "./args.ts";

const APP_DIR = fileURLToPath(new URL("../app/", import.meta.url));
/** Where the bundles go (git-ignored). */
export const DIST_DIR = join(APP_DIR, "dist");
/** The page's entry points: the page, and the engine worker it starts. */
const ENTRIES = ["main.ts", "worker.ts"];

/** `deno task app`: its flags and help. */
export const APP = command({
  name: "app",
  summary:
    "Serve bloom's web page: embed, classify and map cells in the browser, on this computer.",
  flags: {
    port: { type: "int", min: 0, max: 65535, default: 8080, help: "port (0: any free port)" },
    host: {
      type: "string",
      value: "ADDR",
      default: "127.0.0.1",
      help: "address to listen on (other than loopback: the page answers the network too)",
    },
    open: { type: "boolean", help: "open the page in the default browser" },
    build: { type: "boolean", help: "only bundle the page into app/dist/, then exit" },
  },
});

/**
 * Bundles the page for the browser into app/dist/ (main.js, worker.js and
 * their source maps) with `deno bundle`; throws with the bundler's output
 * when it fails.
 */
export async function buildApp(): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--sourcemap=linked",
      "--outdir",
      DIST_DIR,
      ...ENTRIES.map((e) => join(APP_DIR, e)),
    ],
    // The checkout's config and lock, wherever `./bloom app` was run from (cli/args.ts moves there).
    cwd: join(APP_DIR, ".."),
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    throw new Error(`bundling the page failed:\n${text.trim()}`);
  }
  return DIST_DIR;
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

/**
 * Only this server, and the page's own blob: URLs (thumbnails, downloads),
 * may be used: nothing from another origin can load, and nothing can be sent
 * to one.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "worker-src 'self'",
  "style-src 'self'",
  "img-src 'self' blob: data:",
  "font-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** The file under app/ that `pathname` names, or null (only the page's own files are served). */
export function resolveAppPath(pathname: string): string | null {
  let rel: string;
  try {
    rel = decodeURIComponent(pathname);
  } catch {
    return null;
  }
  if (rel === "/" || rel === "/index.html") return join(APP_DIR, "index.html");
  if (rel === "/style.css") return join(APP_DIR, "style.css");
  const m = /^\/dist\/([\w.-]+)$/.exec(rel);
  if (!m || !(extname(m[1]) in TYPES)) return null;
  const path = normalize(join(DIST_DIR, m[1]));
  return path.startsWith(DIST_DIR + "/") ? path : null;
}

/** Answers one request for the page's files. */
export async function handle(req: Request): Promise<Response> {
  const headers = new Headers({
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-store",
  });
  if (req.method !== "GET" && req.method !== "HEAD") {
    headers.set("allow", "GET, HEAD");
    return new Response("method not allowed\n", { status: 405, headers });
  }
  const path = resolveAppPath(new URL(req.url).pathname);
  if (!path) return new Response("not found\n", { status: 404, headers });
  let body: Uint8Array;
  try {
    body = await Deno.readFile(path);
  } catch {
    return new Response("not found\n", { status: 404, headers });
  }
  headers.set("content-type", TYPES[extname(path)] ?? "application/octet-stream");
  return new Response(req.method === "HEAD" ? null : body as BodyInit, { headers });
}

/** Builds the page and serves it; resolves with the server and its URL once listening. */
export async function serveApp(
  opts: { port?: number; hostname?: string } = {},
): Promise<{ server: Deno.HttpServer<Deno.NetAddr>; url: string }> {
  await buildApp();
  const hostname = opts.hostname ?? "127.0.0.1";
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ port: opts.port ?? 8080, hostname, onListen() {} }, handle);
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      throw new UsageError(
        `port ${opts.port} on ${hostname} is in use: pass --port with another number (0: any)`,
      );
    }
    throw e;
  }
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  return { server, url: `http://${host}:${server.addr.port}/` };
}

/** Whether `host` is this machine only. */
function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

/** Opens `url` in the desktop's browser; false when there is no opener. */
async function openBrowser(url: string): Promise<boolean> {
  const cmd = Deno.build.os === "darwin"
    ? ["open", url]
    : Deno.build.os === "windows"
    ? ["cmd", "/c", "start", "", url]
    : ["xdg-open", url];
  try {
    const r = await new Deno.Command(cmd[0], { args: cmd.slice(1), stdout: "null", stderr: "null" })
      .output();
    return r.success;
  } catch {
    return false;
  }
}

if (import.meta.main) {
  runCommand(APP, async (f) => {
    if (f.build) {
      console.log(`built ${await buildApp()}`);
      return 0;
    }
    const { server, url } = await serveApp({ port: f.port, hostname: f.host });
    console.log(`bloom app: ${url}  (Ctrl-C to stop)`);
    if (!isLoopback(f.host)) {
      console.warn(
        `warning: listening on ${f.host}: other computers can open the page too (the cells ` +
          "anyone drops still stay in their own browser)",
      );
    }
    if (f.open && !(await openBrowser(url))) console.log(`open ${url} in a browser`);
    await server.finished;
    return 0;
  });
}
