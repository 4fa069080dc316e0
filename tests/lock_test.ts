/**
 * data/lock.ts: one holder at a time, waiting, and taking over locks whose
 * holder is gone (dead pid on this host, a reused pid, a silent other host,
 * a half-written lock file). Cross-process use is exercised by
 * tests/weights_test.ts (two processes fetching one name).
 */
import { hostname } from "node:os";
import { join } from "node:path";
import { acquireLock, LockHeldError, type LockHolder, readLock } from "../data/lock.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { withTemp } from "./helpers.ts";

function holder(over: Partial<LockHolder>): LockHolder {
  return {
    pid: 1,
    host: hostname(),
    started: "2026-01-01T00:00:00.000Z",
    what: "runs/a",
    token: "t-old",
    ...over,
  };
}

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const p = new Deno.Command(Deno.execPath(), { args: ["--version"], stdout: "null" }).spawn();
  await p.status;
  return p.pid;
}

Deno.test("lock: one holder; the next is told who holds it and since when", async () => {
  await withTemp(async (dir) => {
    const path = join(dir, "out", ".lock");
    const a = await acquireLock(path, { what: "output directory runs/a" });
    const info = (await readLock(path))!;
    assertEquals([info.pid, info.host, info.what], [
      Deno.pid,
      hostname(),
      "output directory runs/a",
    ]);
    const e = await assertRejects(() => acquireLock(path, { what: "x" }), LockHeldError);
    assertEquals(
      e.message.startsWith(
        `output directory runs/a is being written by process ${Deno.pid} on ${hostname()} ` +
          `since ${info.started}`,
      ),
      true,
      e.message,
    );
    assert(e.message.includes(`delete ${path}`), e.message);
    await a.release();
    assertEquals(await readLock(path), null);
    await a.release(); // twice is fine
    const b = await acquireLock(path);
    await b.release();
  });
});

Deno.test("lock: waiting gets the lock when the holder releases; a time limit gives up", async () => {
  await withTemp(async (dir) => {
    const path = join(dir, "x.lock");
    const a = await acquireLock(path);
    let waitedFor: LockHolder | undefined;
    const t0 = Date.now();
    setTimeout(() => a.release(), 150);
    const b = await acquireLock(path, { wait: true, pollMs: 20, onWait: (h) => (waitedFor = h) });
    assert(Date.now() - t0 >= 100, "waited for the release");
    assertEquals(waitedFor?.token, a.holder.token);
    const e = await assertRejects(
      () => acquireLock(path, { wait: 100, pollMs: 20 }),
      LockHeldError,
      /\(waited 0 s\)/,
    );
    assertEquals((e as LockHeldError).holder.token, b.holder.token);
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error("stopped")), 50);
    await assertRejects(
      () => acquireLock(path, { wait: true, pollMs: 20, signal: ac.signal }),
      Error,
      "stopped",
    );
    await b.release();
  });
});

Deno.test("lock: stale locks are taken over (gone pid, reused pid, silent other host, half-written)", async () => {
  await withTemp(async (dir) => {
    const path = join(dir, "s.lock");
    const write = (h: LockHolder) => Deno.writeTextFile(path, JSON.stringify(h));
    const age = async (ms: number) => {
      const t = new Date(Date.now() - ms);
      await Deno.utime(path, t, t);
    };
    // Holder on this host whose process has exited.
    await write(holder({ pid: await deadPid() }));
    await (await acquireLock(path)).release();
    await Deno.remove(path).catch(() => {});
    if (Deno.build.os === "linux") {
      // A live pid (ours) whose start time says it is another process now.
      await write(holder({ pid: Deno.pid, procStart: 1 }));
      const l = await acquireLock(path);
      assert(l.holder.token !== "t-old");
      await l.release();
    }
    // Another host: held while fresh, stale once silent for staleMs.
    await write(holder({ host: "node-7", pid: 4242 }));
    const e = await assertRejects(() => acquireLock(path, { staleMs: 60_000 }), LockHeldError);
    assert(e.message.includes("process 4242 on node-7"), e.message);
    await age(120_000);
    await (await acquireLock(path, { staleMs: 60_000 })).release();
    // A lock file its creator never finished writing: stale once a few seconds old.
    await Deno.writeTextFile(path, "");
    await assertRejects(() => acquireLock(path), LockHeldError);
    await age(10_000);
    const l = await acquireLock(path);
    assertEquals((await readLock(path))?.token, l.holder.token);
    await l.release();
    assertEquals(await Deno.stat(`${path}.break`).then(() => true, () => false), false);
  });
});

Deno.test("lock: the holder refreshes its file, and learns when someone took it over", async () => {
  await withTemp(async (dir) => {
    const path = join(dir, "h.lock");
    const l = await acquireLock(path, { heartbeatMs: 30 });
    const t = new Date(Date.now() - 600_000);
    await Deno.utime(path, t, t);
    await new Promise((r) => setTimeout(r, 120));
    const mtime = (await Deno.stat(path)).mtime!.getTime();
    assert(Date.now() - mtime < 10_000, "heartbeat touched the lock file");
    assertEquals(l.lost, false);
    await Deno.writeTextFile(path, JSON.stringify(holder({ token: "someone-else" })));
    await new Promise((r) => setTimeout(r, 120));
    assertEquals(l.lost, true);
    await l.release();
    assertEquals(
      (await readLock(path))?.token,
      "someone-else",
      "release leaves a successor's lock",
    );
  });
});
