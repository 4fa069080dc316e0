/**
 * `data/tar.ts`: ustar/PAX writing and reading, checked against itself and
 * against Python's `tarfile` both ways.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { collect, hasPython, Rng } from "./helpers.ts";
import {
  BLOCK,
  readTar,
  readTarFile,
  tarEnd,
  tarEntry,
  TarFormatError,
  TarWriter,
} from "../data/tar.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function bytesOf(n: number, seed: number): Uint8Array {
  const r = new Rng(seed);
  return Uint8Array.from({ length: n }, () => r.int(256));
}

/** Entries that exercise every naming and padding path. */
function sampleEntries(): { name: string; data: Uint8Array }[] {
  return [
    { name: "a.png", data: bytesOf(1000, 1) }, // not a multiple of 512
    { name: "a.cls", data: enc.encode("3") },
    { name: "empty.json", data: new Uint8Array(0) },
    { name: "exact.bin", data: bytesOf(BLOCK, 2) },
    // 150 B with a '/': ustar prefix + name
    { name: `${"d".repeat(120)}/${"n".repeat(29)}`, data: bytesOf(10, 3) },
    // 300 B, no usable split: PAX path
    { name: "k".repeat(300) + ".png", data: bytesOf(700, 4) },
    // non-ASCII: PAX path (ustar fields are ASCII)
    { name: "zelle_größe_µm.json", data: enc.encode('{"ok":true}') },
  ];
}

async function archive(entries: { name: string; data: Uint8Array }[]): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const w = new TarWriter({ write: (c) => Promise.resolve(void chunks.push(c)) });
  for (const e of entries) await w.add(e.name, e.data);
  await w.finish();
  const total = chunks.reduce((n, c) => n + c.length, 0);
  assertEquals(total, w.bytes);
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** Feeds bytes in uneven chunks, as a file stream would. */
async function* chunked(b: Uint8Array, size = 777): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

Deno.test("tar round trip: names of every length, empty and block-sized files", async () => {
  const entries = sampleEntries();
  const tar = await archive(entries);
  assertEquals(tar.length % BLOCK, 0);
  const back = await collect(readTar(chunked(tar)));
  assertEquals(back.map((f) => f.name), entries.map((e) => e.name));
  back.forEach((f, i) => assertEquals(Array.from(f.data), Array.from(entries[i].data), f.name));
  // Deterministic: the same entries give the same bytes (fixed mtime, uid, mode).
  assertEquals(Array.from(await archive(entries)), Array.from(tar));
});

Deno.test("tar entries are ustar: magic, octal fields and checksum where Python expects them", () => {
  const e = tarEntry("x.png", enc.encode("hello"));
  assertEquals(e.length, 2 * BLOCK);
  assertEquals(dec.decode(e.subarray(257, 262)), "ustar");
  assertEquals(dec.decode(e.subarray(124, 135)), "00000000005");
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : e[i];
  assertEquals(parseInt(dec.decode(e.subarray(148, 154)), 8), sum);
  assertEquals(tarEnd().length, 2 * BLOCK);
  assertThrows(() => tarEntry("", new Uint8Array(1)), RangeError, "empty");
});

Deno.test("tar reader: bad checksum and truncation are errors naming the offset", async () => {
  const tar = await archive(sampleEntries().slice(0, 2));
  const bad = tar.slice();
  bad[BLOCK * 3 + 10] ^= 0xff; // inside the second header's name
  await assertRejects(() => collect(readTar(chunked(bad))), TarFormatError, "bad checksum");
  await assertRejects(
    () => collect(readTar(chunked(tar.subarray(0, BLOCK + 100)))),
    TarFormatError,
    "header at byte 0: tar truncated inside the entry",
  );
  const notTar = enc.encode("this is not a tar file".repeat(40));
  await assertRejects(() => collect(readTar(chunked(notTar))), TarFormatError);
});

Deno.test("Python's tarfile reads our archives, and we read Python's (PAX and GNU)", async () => {
  if (!(await hasPython("tarfile", "hashlib", "json"))) {
    console.warn("skipping: /usr/bin/python3 missing");
    return;
  }
  const dir = await Deno.makeTempDir();
  try {
    const entries = sampleEntries();
    await Deno.writeFile(`${dir}/ours.tar`, await archive(entries));
    const script = `
import tarfile, hashlib, json, sys
d = sys.argv[1]
out = []
with tarfile.open(f"{d}/ours.tar") as t:
    for m in t.getmembers():
        out.append([m.name, m.size, hashlib.sha256(t.extractfile(m).read()).hexdigest(), m.isfile()])
for fmt, name in ((tarfile.PAX_FORMAT, "pax"), (tarfile.GNU_FORMAT, "gnu"), (tarfile.USTAR_FORMAT, "ustar")):
    with tarfile.open(f"{d}/{name}.tar", "w", format=fmt) as t:
        for i, n in enumerate(["short.txt", "x" * 90 + "/" + "y" * 60 + ".png", "long" * 40 + ".json"]):
            if fmt == tarfile.USTAR_FORMAT and n.startswith("long"): continue
            data = (n * (i + 1)).encode()
            info = tarfile.TarInfo(n); info.size = len(data)
            t.addfile(info, __import__("io").BytesIO(data))
print(json.dumps(out))`;
    const out = await new Deno.Command("/usr/bin/python3", { args: ["-c", script, dir] }).output();
    assert(out.success, dec.decode(out.stderr));
    const seen = JSON.parse(dec.decode(out.stdout)) as [string, number, string, boolean][];
    const expected = await Promise.all(entries.map(async (e) => {
      const h = new Uint8Array(await crypto.subtle.digest("SHA-256", e.data.slice()));
      return [
        e.name,
        e.data.length,
        [...h].map((b) => b.toString(16).padStart(2, "0")).join(""),
        true,
      ];
    }));
    assertEquals(seen, expected);
    for (const fmt of ["pax", "gnu", "ustar"]) {
      const files = await collect(readTarFile(`${dir}/${fmt}.tar`));
      const names = [
        "short.txt",
        "x".repeat(90) + "/" + "y".repeat(60) + ".png",
        "long".repeat(40) + ".json",
      ]
        .filter((n) => fmt !== "ustar" || !n.startsWith("long"));
      assertEquals(files.map((f) => f.name), names, fmt);
      files.forEach((f, i) =>
        assertEquals(dec.decode(f.data), names[i].repeat(i + 1), `${fmt} ${f.name}`)
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readTarFile closes the file when the reader stops early", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/a.tar`, await archive(sampleEntries()));
    for await (const f of readTarFile(`${dir}/a.tar`)) {
      assertEquals(f.name, "a.png");
      break; // Deno's resource sanitizer fails the test if the file stays open
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
