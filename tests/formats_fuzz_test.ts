/**
 * Seeded fuzzing of the readers: valid .pth, safetensors and .npy files with
 * bytes flipped, cut at random points and length fields inflated to huge
 * values, plus mutated pickles re-zipped with valid CRCs (so they reach the
 * unpickler and the tensor checks). Every outcome must be a success or a
 * CheckpointError — never another exception, never a hang — and no read may
 * allocate more than the file holds.
 */
import { CheckpointError } from "../data/errors.ts";
import { RandomAccessFile } from "../data/file.ts";
import { openNpy } from "../data/npy.ts";
import { unpickle } from "../data/pickle.ts";
import { openPth } from "../data/pth.ts";
import { writePth } from "../data/pth_writer.ts";
import type { TensorFile } from "../data/record.ts";
import { openSafetensors } from "../data/safetensors.ts";
import { ZipReader } from "../data/zip.ts";
import { ZipWriter } from "../data/zip_writer.ts";
import { assert } from "./assert.ts";
import { Rng } from "./helpers.ts";

const FIX = new URL("./fixtures/checkpoints/", import.meta.url).pathname;
const TMP = Deno.makeTempDirSync({ prefix: "bloom-fuzz-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

/**
 * `BLOOM_FUZZ_SCALE=20 BLOOM_FUZZ_SEED=5 deno test -A tests/formats_fuzz_test.ts` runs 20× the
 * cases from other seeds; the defaults keep the suite to a few seconds.
 */
const SCALE = Math.max(1, Number(Deno.env.get("BLOOM_FUZZ_SCALE") ?? 1) || 1);
const SEED = Number(Deno.env.get("BLOOM_FUZZ_SEED") ?? 0) || 0;

/** A case that takes longer than this is a hang. */
const CASE_TIMEOUT_MS = 5000;

// Record, per open file, the largest buffer a read actually allocated (reads are the only
// allocations sized by the file's length fields).
const files = new Set<RandomAccessFile>();
const readAt = RandomAccessFile.prototype.readAt;
RandomAccessFile.prototype.readAt = function (this: RandomAccessFile, offset, length, what) {
  files.add(this);
  return readAt.call(this, offset, length, what);
};

type Opener = (path: string) => Promise<TensorFile>;

interface Tally {
  ok: number;
  errors: Map<string, number>;
}

/** Opens `bytes` as a file and reads every tensor; returns the outcome or throws on a bad one. */
async function runCase(
  open: Opener,
  bytes: Uint8Array,
  label: string,
  tally: Tally,
): Promise<void> {
  const path = `${TMP}/case.bin`;
  await Deno.writeFile(path, bytes);
  files.clear();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const body = (async () => {
    const f = await open(path);
    try {
      for (const t of f.tensors.values()) {
        const b = await t.bytes();
        const v = await t.f32();
        assert(b.length <= bytes.length, `${label}: tensor ${t.name} is larger than the file`);
        assert(
          v.length === t.numel,
          `${label}: f32 of ${t.name} has ${v.length} of ${t.numel} values`,
        );
      }
    } finally {
      f.close();
    }
  })();
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${label}: no result after ${CASE_TIMEOUT_MS} ms`)),
      CASE_TIMEOUT_MS,
    );
  });
  try {
    await Promise.race([body, hang]);
    tally.ok++;
  } catch (e) {
    if (!(e instanceof CheckpointError)) {
      throw new Error(
        `${label}: expected success or a CheckpointError, got ${
          e instanceof Error ? `${e.name}: ${e.message}` : String(e)
        }`,
        { cause: e },
      );
    }
    tally.errors.set(e.name, (tally.errors.get(e.name) ?? 0) + 1);
    assert(e.message.includes(path), `${label}: error does not name the file: ${e.message}`);
  } finally {
    clearTimeout(timer);
  }
  for (const f of files) {
    assert(
      f.largestRead <= f.size,
      `${label}: a read allocated ${f.largestRead} bytes of a ${f.size}-byte file`,
    );
  }
}

/** Positions and widths of a zip's length/offset/count fields, found by their records' signatures. */
function zipFields(b: Uint8Array): [number, 2 | 4 | 8][] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: [number, 2 | 4 | 8][] = [];
  for (let i = 0; i + 4 <= b.length; i++) {
    const sig = dv.getUint32(i, true);
    if (sig === 0x04034b50) out.push([i + 18, 4], [i + 22, 4], [i + 26, 2], [i + 28, 2]);
    else if (sig === 0x02014b50) {
      out.push([i + 20, 4], [i + 24, 4], [i + 28, 2], [i + 30, 2], [i + 32, 2], [i + 42, 4]);
    } else if (sig === 0x06054b50) out.push([i + 10, 2], [i + 12, 4], [i + 16, 4], [i + 20, 2]);
    else if (sig === 0x06064b50) out.push([i + 32, 8], [i + 40, 8], [i + 48, 8]);
    else if (sig === 0x07064b50) out.push([i + 8, 8]);
  }
  return out.filter(([p, w]) => p + w <= b.length);
}

/** Writes a huge (or random) value into a little-endian field. */
function inflate(b: Uint8Array, at: number, width: 2 | 4 | 8, rng: Rng) {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (width === 2) dv.setUint16(at, [0xffff, 0x8000, rng.int(0x10000)][rng.int(3)], true);
  else if (width === 4) {
    dv.setUint32(
      at,
      [0xffffffff, 0x7fffffff, 0x80000000, b.length * 2, rng.int(2 ** 32)][rng.int(5)],
      true,
    );
  } else {
    dv.setBigUint64(
      at,
      [2n ** 63n, 2n ** 53n, 2n ** 40n, BigInt(b.length) * 3n, 2n ** 64n - 1n][rng.int(5)],
      true,
    );
  }
}

/** A random generic mutation: flips, a cut, or a duplicated / deleted span. */
function mutate(src: Uint8Array, rng: Rng): { bytes: Uint8Array; what: string } {
  const b = src.slice();
  const kind = rng.int(4);
  if (kind === 0) {
    const n = 1 + rng.int(8);
    for (let i = 0; i < n; i++) b[rng.int(b.length)] ^= 1 + rng.int(255);
    return { bytes: b, what: `flip ${n}` };
  }
  if (kind === 1) {
    const at = rng.int(b.length);
    return { bytes: b.subarray(0, at), what: `cut at ${at}` };
  }
  const at = rng.int(b.length);
  const len = 1 + rng.int(Math.min(64, b.length - at));
  if (kind === 2) {
    const out = new Uint8Array(b.length + len);
    out.set(b.subarray(0, at + len));
    out.set(b.subarray(at), at + len);
    return { bytes: out, what: `duplicate ${at}+${len}` };
  }
  const out = new Uint8Array(b.length - len);
  out.set(b.subarray(0, at));
  out.set(b.subarray(at + len), at);
  return { bytes: out, what: `delete ${at}+${len}` };
}

function report(name: string, tally: Tally, cases: number) {
  if (Deno.env.get("BLOOM_FUZZ_VERBOSE")) {
    console.log(name, tally.ok, "ok", Object.fromEntries(tally.errors));
  }
  assert(tally.ok + [...tally.errors.values()].reduce((a, b) => a + b, 0) === cases);
  // Not vacuous: some mutations must be caught.
  assert(tally.errors.size > 0, `${name}: no mutation was rejected`);
}

/** A small bloom-written checkpoint with several dtypes and a nested OrderedDict. */
async function bloomPth(): Promise<Uint8Array> {
  const rng = new Rng(11);
  const path = `${TMP}/base.pth`;
  await writePth(path, {
    teacher: new Map<string, unknown>([
      ["backbone.pos_embed", { dtype: "f32", shape: [1, 3, 4], data: rng.normals(12) }],
      ["backbone.norm.weight", { dtype: "f16", shape: [4], data: rng.normals(4) }],
      ["dino_head.w", { dtype: "bf16", shape: [2, 2], data: rng.normals(4) }],
      ["step", { dtype: "i64", shape: [], data: BigInt64Array.of(7n) }],
    ]) as never,
    iteration: 1000,
  });
  return await Deno.readFile(path);
}

Deno.test("fuzz: mutated .pth files give success or a CheckpointError", async () => {
  const rng = new Rng(0xb100 + SEED);
  const bases = [await bloomPth(), await Deno.readFile(FIX + "state_dict.pth")];
  const tally: Tally = { ok: 0, errors: new Map() };
  const cases = 160 * SCALE;
  for (let i = 0; i < cases; i++) {
    const base = bases[i % 2];
    if (rng.int(2) === 0) {
      const { bytes, what } = mutate(base, rng);
      await runCase(openPth, bytes, `pth case ${i} (${what})`, tally);
    } else {
      const b = base.slice();
      const fields = zipFields(b);
      const [at, w] = fields[rng.int(fields.length)];
      inflate(b, at, w, rng);
      await runCase(openPth, b, `pth case ${i} (inflate u${w * 8} at ${at})`, tally);
    }
  }
  report("pth", tally, cases);
});

Deno.test("fuzz: mutated pickles inside valid archives give success or a CheckpointError", async () => {
  const rng = new Rng(0xb101 + SEED);
  const src = `${TMP}/pickle_base.pth`;
  await Deno.writeFile(src, await bloomPth());
  const entries: [string, Uint8Array][] = [];
  {
    using zip = await ZipReader.open(src);
    for (const e of zip.entries) entries.push([e.name, await zip.read(e)]);
  }
  const pkl = entries.find(([n]) => n.endsWith("/data.pkl"))![1];
  const tally: Tally = { ok: 0, errors: new Map() };
  const cases = 80 * SCALE;
  for (let i = 0; i < cases; i++) {
    let bytes: Uint8Array;
    let what: string;
    if (rng.int(3) === 0) {
      // Inflate the length of a random BINUNICODE / BINPUT-style operand.
      bytes = pkl.slice();
      const xs = [...bytes.keys()].filter((k) => bytes[k] === 0x58 && k + 5 <= bytes.length);
      const at = xs[rng.int(xs.length)] + 1;
      new DataView(bytes.buffer).setUint32(at, [0xffffffff, 0x7fffffff, 1 << 20][rng.int(3)], true);
      what = `BINUNICODE length at ${at}`;
    } else ({ bytes, what } = mutate(pkl, rng));
    // Re-zip with correct CRCs so the damage reaches the unpickler, not the checksum.
    const path = `${TMP}/rezipped.pth`;
    const zw = await ZipWriter.create(path);
    for (const [name, data] of entries) {
      await zw.add(name, name.endsWith("/data.pkl") ? bytes : data);
    }
    await zw.finish();
    await runCase(openPth, await Deno.readFile(path), `pickle case ${i} (${what})`, tally);
  }
  report("pickle in archive", tally, cases);
});

Deno.test("fuzz: raw pickle mutations never throw anything but a CheckpointError", async () => {
  const rng = new Rng(0xb102 + SEED);
  const pkls: Uint8Array[] = [];
  for (const f of ["teacher_p4.pth", "parameter.pth", "state_dict.pth"]) {
    using zip = await ZipReader.open(FIX + f);
    pkls.push(await zip.read(zip.entries.find((e) => e.name.endsWith("/data.pkl"))!));
  }
  let rejected = 0;
  for (let i = 0; i < 300 * SCALE; i++) {
    const { bytes, what } = mutate(pkls[i % pkls.length], rng);
    try {
      unpickle(bytes, { file: "fuzz.pth", entry: "archive/data.pkl" });
    } catch (e) {
      if (!(e instanceof CheckpointError)) {
        throw new Error(
          `raw pickle case ${i} (${what}): ${e instanceof Error ? `${e.name}: ${e.message}` : e}`,
        );
      }
      rejected++;
    }
  }
  assert(rejected > 0, "no pickle mutation was rejected");
});

Deno.test("fuzz: mutated safetensors and .npy files give success or a CheckpointError", async () => {
  const rng = new Rng(0xb103 + SEED);
  const st = await Deno.readFile(FIX + "model.safetensors");
  const tally: Tally = { ok: 0, errors: new Map() };
  const cases = 120 * SCALE;
  for (let i = 0; i < cases; i++) {
    const choice = rng.int(3);
    if (choice === 0) {
      const { bytes, what } = mutate(st, rng);
      await runCase(openSafetensors, bytes, `safetensors case ${i} (${what})`, tally);
    } else if (choice === 1) {
      const b = st.slice();
      inflate(b, 0, 8, rng);
      await runCase(openSafetensors, b, `safetensors case ${i} (header length)`, tally);
    } else {
      // Inflate a number inside the JSON header (an offset or a dimension), keeping it valid JSON.
      const n = Number(new DataView(st.buffer).getBigUint64(0, true));
      const header = new TextDecoder().decode(st.subarray(8, 8 + n));
      const nums = [...header.matchAll(/\d+/g)];
      const m = nums[rng.int(nums.length)];
      const huge = ["4294967296", "9007199254740993", "99999999999", "1e308", "-1"][rng.int(5)];
      const text = header.slice(0, m.index) + huge + header.slice(m.index! + m[0].length);
      const json = new TextEncoder().encode(text);
      const b = new Uint8Array(8 + json.length + st.length - 8 - n);
      new DataView(b.buffer).setBigUint64(0, BigInt(json.length), true);
      b.set(json, 8);
      b.set(st.subarray(8 + n), 8 + json.length);
      await runCase(openSafetensors, b, `safetensors case ${i} (${m[0]} → ${huge})`, tally);
    }
  }
  report("safetensors", tally, cases);

  const npy = await Deno.readFile(FIX + "f4_v2.npy");
  const npyTally: Tally = { ok: 0, errors: new Map() };
  for (let i = 0; i < 60 * SCALE; i++) {
    const { bytes, what } = mutate(npy, rng);
    if (i % 3 === 0) new DataView(bytes.buffer, bytes.byteOffset).setUint32(8, 0xfffffff0, true);
    await runCase(openNpy, bytes, `npy case ${i} (${what})`, npyTally);
  }
  report("npy", npyTally, 60 * SCALE);
});
