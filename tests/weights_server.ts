/**
 * A small HTTP/1.1 file server on 127.0.0.1 for the weights tests, written on
 * raw TCP so a test controls every byte: it answers Range requests or not,
 * cuts connections mid-file, returns 404/500, serves altered bytes, streams
 * slowly, and also acts as a forward proxy (an absolute-form request target
 * is served the same way and logged as proxied; a CONNECT request is
 * tunnelled to its target, as HTTPS_PROXY needs). With `tls` it speaks HTTPS.
 */

/** How one path is served. */
export interface Route {
  body: Uint8Array;
  /** Answer with this status and no file (404, 500, …). */
  status?: number;
  /** Honour Range requests (default true). */
  ranges?: boolean;
  /** For the k-th request served by this route, close the connection once the file offset reaches cutAt[k]. */
  cutAt?: (number | undefined)[];
  /** Flip one byte in the middle of what is sent. */
  alter?: boolean;
  /** Claimed Content-Length (default: the bytes sent). */
  contentLength?: number;
  /** Bytes per write and pause between writes, to make transfers overlap. */
  chunk?: number;
  delayMs?: number;
  etag?: string;
}

/** One request as the server saw it. */
export interface Seen {
  path: string;
  range?: string;
  ifRange?: string;
  proxied: boolean;
}

/** A running server. */
export interface TestServer {
  port: number;
  base: string;
  routes: Map<string, Route>;
  seen: Seen[];
  /** Requests of `path` (through the proxy or not). */
  count(path: string): number;
  close(): Promise<void>;
}

const enc = new TextEncoder();

/** A certificate and its key, PEM (tests/weights_test.ts makes them with openssl). */
export interface TlsFiles {
  cert: string;
  key: string;
}

/** Starts a server (HTTPS with `tls`); `routes` can be changed while it runs. */
export function startServer(
  routes: Record<string, Route> = {},
  opts: { tls?: TlsFiles } = {},
): TestServer {
  const listener: Deno.Listener = opts.tls
    ? Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...opts.tls })
    : Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const map = new Map(Object.entries(routes));
  const seen: Seen[] = [];
  const served = new WeakMap<Route, number>();
  const conns = new Set<Deno.Conn>();
  const handlers = new Set<Promise<void>>();

  /** A proxy's CONNECT: the bytes both ways between the client and `target` (host:port). */
  const tunnel = async (conn: Deno.Conn, target: string) => {
    seen.push({ path: `CONNECT ${target}`, proxied: true });
    const i = target.lastIndexOf(":");
    const upstream = await Deno.connect({
      hostname: target.slice(0, i),
      port: Number(target.slice(i + 1)),
    });
    conns.add(upstream);
    await writeAll(conn, enc.encode("HTTP/1.1 200 Connection Established\r\n\r\n"));
    await Promise.all([
      conn.readable.pipeTo(upstream.writable).catch(() => {}),
      upstream.readable.pipeTo(conn.writable).catch(() => {}),
    ]);
    conns.delete(upstream);
  };

  const handle = async (conn: Deno.Conn) => {
    try {
      const head = await readHead(conn);
      if (!head) return;
      const [requestLine, ...lines] = head.split("\r\n");
      const [method, target = "/"] = requestLine.split(" ");
      if (method === "CONNECT") return await tunnel(conn, target);
      const proxied = /^https?:\/\//.test(target);
      const path = proxied ? new URL(target).pathname : target.split("?")[0];
      const headers = new Map<string, string>();
      for (const l of lines) {
        const i = l.indexOf(":");
        if (i > 0) headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
      }
      seen.push({ path, range: headers.get("range"), ifRange: headers.get("if-range"), proxied });
      const route = map.get(path);
      if (!route || route.status) {
        const status = route?.status ?? 404;
        const text = enc.encode(`status ${status}\n`);
        await writeAll(
          conn,
          enc.encode(
            `HTTP/1.1 ${status} ${status === 404 ? "Not Found" : "Error"}\r\n` +
              `content-length: ${text.length}\r\nconnection: close\r\n\r\n`,
          ),
        );
        await writeAll(conn, text);
        return;
      }
      const k = served.get(route) ?? 0;
      served.set(route, k + 1);
      let body = route.body;
      if (route.alter) {
        body = body.slice();
        body[body.length >> 1] ^= 0xff;
      }
      const etag = route.etag ?? `"v1-${body.length}"`;
      let start = 0;
      let status = "200 OK";
      let extra = `accept-ranges: ${route.ranges === false ? "none" : "bytes"}\r\n`;
      const range = headers.get("range");
      const ifRange = headers.get("if-range");
      const rangeOk = route.ranges !== false && range && (!ifRange || ifRange === etag);
      if (rangeOk) {
        const m = /^bytes=(\d+)-$/.exec(range!);
        start = m ? Number(m[1]) : 0;
        if (start >= body.length) {
          await writeAll(
            conn,
            enc.encode(
              `HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */${body.length}\r\n` +
                `content-length: 0\r\nconnection: close\r\n\r\n`,
            ),
          );
          return;
        }
        status = "206 Partial Content";
        extra += `content-range: bytes ${start}-${body.length - 1}/${body.length}\r\n`;
      }
      const len = route.contentLength ?? body.length - start;
      await writeAll(
        conn,
        enc.encode(
          `HTTP/1.1 ${status}\r\ncontent-length: ${len}\r\netag: ${etag}\r\n${extra}` +
            `connection: close\r\n\r\n`,
        ),
      );
      const cut = route.cutAt?.[k];
      const end = cut !== undefined ? Math.max(start, Math.min(cut, body.length)) : body.length;
      const step = route.chunk ?? 4096;
      for (let at = start; at < end; at += step) {
        await writeAll(conn, body.subarray(at, Math.min(end, at + step)));
        if (route.delayMs) await new Promise((r) => setTimeout(r, route.delayMs));
      }
    } catch {
      // The client went away; nothing to do.
    } finally {
      conns.delete(conn);
      try {
        conn.close();
      } catch { /* closed */ }
    }
  };

  const loop = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      const h = handle(conn);
      handlers.add(h);
      h.finally(() => handlers.delete(h));
    }
  })().catch(() => {});

  return {
    port,
    base: `${opts.tls ? "https" : "http"}://127.0.0.1:${port}`,
    routes: map,
    seen,
    count: (path) => seen.filter((s) => s.path === path).length,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await loop;
      await Promise.all([...handlers]);
    },
  };
}

async function readHead(conn: Deno.Conn): Promise<string | null> {
  const buf = new Uint8Array(16384);
  let got = 0;
  for (;;) {
    const n = await conn.read(buf.subarray(got));
    if (n === null) return null;
    got += n;
    const text = new TextDecoder().decode(buf.subarray(0, got));
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) return text.slice(0, end);
    if (got === buf.length) return null;
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await conn.write(bytes.subarray(at));
}
