/**
 * Issue 18's integrity checks: every `.pth` zip entry's CRC-32 is checked as
 * it is read, streaming, once. A byte flipped in each region of a torch
 * checkpoint (local header, pickle, tensor data, central directory) is
 * refused with the entry named; a flip anywhere either is refused or leaves
 * every tensor exactly as it was; each storage is read from disk once even
 * when several views share it; and `--verify-sha256` holds a checkpoint to a
 * known hash.
 */
import { CheckpointError, CorruptFileError, InputError, MissingKeyError } from "../data/errors.ts";
import { parseSha256, sha256File, verifySha256 } from "../data/hash.ts";
import { openPth } from "../data/pth.ts";
import { ZipReader } from "../data/zip.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { memorySource, PickleOps, pthBytes } from "./fuzz/build.ts";
import { CHECKPOINT_FIXTURES, hex } from "./fixtures.ts";

const FIX = CHECKPOINT_FIXTURES;
const GOOD = Deno.readFileSync(FIX + "state_dict.pth");
const ROOT = new URL("../", import.meta.url).pathname;

/** Where each part of state_dict.pth lies (torch 1.13's layout). */
async function layout() {
  using zip = await ZipReader.open(memorySource("layout.pth", GOOD));
  const entries = [];
  for (const e of zip.entries) entries.push({ ...e, data: await zip.dataOffset(e) });
  const dv = new DataView(GOOD.buffer);
  const central = new Map<string, number>();
  for (let i = 0; i + 4 <= GOOD.length; i++) {
    if (dv.getUint32(i, true) !== 0x02014b50) continue;
    const n = dv.getUint16(i + 28, true);
    central.set(new TextDecoder().decode(GOOD.subarray(i + 46, i + 46 + n)), i);
  }
  return { entries: new Map(entries.map((e) => [e.name, e])), central };
}

/** Every tensor's bytes (hex), reading all of them. */
async function readAll(bytes: Uint8Array, name: string): Promise<Map<string, string>> {
  using ck = await openPth(memorySource(name, bytes));
  const out = new Map<string, string>();
  for (const [k, t] of ck.tensors) out.set(k, hex(await t.bytes()));
  return out;
}

/** `GOOD` with byte `at` XORed with `mask`. */
function flip(at: number, mask = 0x01): Uint8Array {
  const b = GOOD.slice();
  b[at] ^= mask;
  return b;
}

Deno.test("integrity: a flip in each region of a .pth is refused, naming the entry", async () => {
  const { entries, central } = await layout();
  const storage = "state_dict/data/10"; // weight, weight_t, row and col are views of it
  const s = entries.get(storage)!;
  const pkl = entries.get("state_dict/data.pkl")!;
  const c = central.get(storage)!;
  const cases: [string, number, number, typeof CheckpointError, RegExp][] = [
    // Local header of the storage: name, flags, method, time, CRC (zero under bit 3), extra length.
    ["local name", s.localHeaderOffset + 30 + 17, 1, CorruptFileError, /local header's name/],
    ["local flags", s.localHeaderOffset + 6, 2, CorruptFileError, /local header's flags/],
    ["local method", s.localHeaderOffset + 8, 8, CorruptFileError, /local header's method/],
    ["local time", s.localHeaderOffset + 10, 1, CorruptFileError, /local header's time stamp/],
    ["local CRC", s.localHeaderOffset + 14, 1, CorruptFileError, /local header's CRC-32/],
    [
      "local extra length",
      s.localHeaderOffset + 28,
      4,
      CorruptFileError,
      /CRC-32 mismatch|runs into/,
    ],
    // The pickle and the tensor data themselves.
    ["pickle", pkl.data + 100, 1, CorruptFileError, /state_dict\/data\.pkl: CRC-32 mismatch/],
    // Element 0 of the storage: outside `row`'s span, still refused (the whole entry is checked).
    ["tensor data", s.data, 0x10, CorruptFileError, /CRC-32 mismatch/],
    // Central directory record of the storage: CRC, time, sizes, offset, name.
    ["central CRC", c + 16, 1, CorruptFileError, /CRC-32 mismatch/],
    ["central time", c + 12, 1, CorruptFileError, /local header's time stamp/],
    ["central size", c + 24, 4, CorruptFileError, /sizes disagree|shorter|CRC-32/],
    ["central offset", c + 42, 1, CorruptFileError, /no local file header|local header's/],
    ["central name", c + 46 + 16, 1, MissingKeyError, /storage is missing.*state_dict\/data\/10/],
  ];
  for (const [what, at, mask, cls, pattern] of cases) {
    const name = `flip_${what.replace(/\W+/g, "_")}.pth`;
    const e = await assertRejects(
      async () => {
        using ck = await openPth(memorySource(name, flip(at, mask)));
        await ck.tensor("row").bytes(); // a view of part of the storage
      },
      cls,
      pattern,
    );
    assert(e.message.startsWith(`${name}: `), `${what}: names the file: ${e.message}`);
    const entry = what === "pickle" ? "state_dict/data.pkl" : storage;
    assert(e.message.includes(entry), `${what}: names the entry ${entry}: ${e.message}`);
  }
});

Deno.test("integrity: a flip anywhere in the file is refused or leaves every tensor as it was", async () => {
  const want = await readAll(GOOD, "good.pth");
  let refused = 0;
  const harmless: number[] = [];
  for (let at = 0; at < GOOD.length; at++) {
    let got: Map<string, string>;
    try {
      got = await readAll(flip(at, 0x04), "flipped.pth");
    } catch (e) {
      if (!(e instanceof CheckpointError)) throw new Error(`byte ${at}: ${e}`, { cause: e });
      assert(e.message.startsWith("flipped.pth: "), `byte ${at}: ${e.message}`);
      refused++;
      continue;
    }
    assertEquals(got, want, `byte ${at} flipped, not refused, and tensors changed`);
    harmless.push(at);
  }
  // Harmless flips are in bytes no reader uses (data descriptors, versions, padding, the
  // storages torch writes but no tensor reads): most flips are refused.
  assert(refused > GOOD.length * 0.6, `${refused} of ${GOOD.length} flips refused`);
});

Deno.test("integrity: each storage is read once, streamed through its CRC, however many views use it", async () => {
  const reads: [number, number][] = [];
  const src = memorySource("counted.pth", GOOD);
  const counted = {
    ...src,
    read(offset: number, into: Uint8Array) {
      reads.push([offset, into.length]);
      return src.read(offset, into);
    },
  };
  const { entries } = await layout();
  using ck = await openPth(counted);
  reads.length = 0; // opening reads the end records (of a small file: all of it) and data.pkl
  for (const t of ck.tensors.values()) await t.bytes();
  for (const t of ck.tensors.values()) await t.bytes(); // checked once: later reads are ranges
  const s = entries.get("state_dict/data/10")!;
  const covering = reads.filter(([o, n]) => o < s.data + s.size && o + n > s.data);
  // First read: the whole entry (one pass, CRC on the way); then only the views' ranges.
  assertEquals(covering[0], [s.data, s.size]);
  const viewBytes = 4 * (12 + 12 + 4 + 3); // weight, weight_t's span, row, col
  const total = covering.reduce((n, [, len]) => n + len, 0);
  assert(total <= s.size + 2 * viewBytes, `storage 10: ${total} bytes read for ${s.size}`);
  // verify: false skips the check (and a damaged byte then gets through: the documented cost).
  using raw = await openPth(memorySource("raw.pth", flip(s.data, 0x10)), { verify: false });
  assert(hex(await raw.tensor("weight").bytes()) !== (await readAll(GOOD, "g.pth")).get("weight"));
});

Deno.test("integrity: deflated entries are checked on every inflate; ZIP64 layouts the same", async () => {
  using zip = await ZipReader.open(FIX + "deflated.zip");
  for (const e of zip.entries) await zip.read(e);
  const bytes = Deno.readFileSync(FIX + "deflated.zip");
  const e = zip.require("notes/hello.txt");
  const at = await zip.dataOffset(e);
  const bad = bytes.slice();
  bad[at + 3] ^= 1;
  using z2 = await ZipReader.open(memorySource("deflated_bad.zip", bad));
  await assertRejects(() => z2.read("notes/hello.txt"), CorruptFileError, /notes\/hello\.txt/);
  // ZIP64 sizes and offsets (in the extra fields) lead to the same checks.
  const pkl = new PickleOps().proto().tensor("0", 2, [2]).done();
  const z64 = pthBytes(pkl, { "0": new Uint8Array(8).fill(1) }, { zip64: true });
  using ok = await openPth(memorySource("z64.pth", z64.bytes));
  assertEquals([...await ok.tensor("(root)").f32()].length, 2);
  const dmg = z64.bytes.slice();
  dmg[z64.entries.find((x) => x.name === "archive/data/0")!.data] ^= 1;
  using ck = await openPth(memorySource("z64_bad.pth", dmg));
  await assertRejects(
    () => ck.tensor("(root)").bytes(),
    CorruptFileError,
    /archive\/data\/0: CRC-32/,
  );
});

Deno.test("integrity: --verify-sha256 refuses a checkpoint whose hash differs, before any work", async () => {
  const path = FIX + "state_dict.pth";
  const sha = await sha256File(path);
  await verifySha256(path, sha.toUpperCase());
  const wrong = "0".repeat(64);
  const e = await assertRejects(
    () => verifySha256(path, wrong),
    CorruptFileError,
    /SHA-256 mismatch/,
  );
  assert(e.message.includes(path) && e.message.includes(sha) && e.message.includes(wrong));
  assertThrows(() => parseSha256("abc", "--verify-sha256"), InputError, /64 hex digits/);
  // The commands refuse it with exit code 2, naming the file and both hashes.
  const dir = await Deno.makeTempDir({ prefix: "bloom-sha-test-" });
  const input = `${dir}/in`; // an --out inside --input is refused
  await Deno.mkdir(input);
  try {
    const run = async (args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", ...args],
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      return { code: out.code, err: new TextDecoder().decode(out.stderr) };
    };
    const embed = await run([
      "cli/embed.ts",
      "--weights",
      path,
      "--verify-sha256",
      wrong,
      "--input",
      input,
      "--out",
      `${dir}/e.safetensors`,
    ]);
    assertEquals(embed.code, 2, embed.err);
    assert(embed.err.includes("SHA-256 mismatch") && embed.err.includes(sha), embed.err);
    const bad = await run([
      "cli/train.ts",
      "--init",
      path,
      "--verify-sha256",
      "xyz",
      "--out",
      `${dir}/run`,
    ]);
    assertEquals(bad.code, 2, bad.err);
    assert(bad.err.includes("--verify-sha256: expected a SHA-256 of 64 hex digits"), bad.err);
    const predict = await run([
      "cli/predict.ts",
      "--head",
      dir,
      "--input",
      input,
      "--out",
      `${dir}/p.csv`,
      "--weights",
      path,
      "--verify-sha256",
      wrong,
    ]);
    assertEquals(predict.code, 2, predict.err);
    assert(predict.err.includes("SHA-256 mismatch"), predict.err);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
