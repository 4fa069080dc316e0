/** The GPU runtime: start-up, pool, batching, uniforms, errors, timing, replay. */
import { GpuError, GpuLimitError, ShaderCompileError } from "../kernels/errors.ts";
import { FLAT_WORKGROUP_INDEX, grid, kernel } from "../kernels/kernel.ts";
import { checkBindingBytes } from "../kernels/common/window.ts";
import { sizeClass, trimFree } from "../kernels/pool.ts";
import { TexturePool } from "../kernels/textures.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest } from "./helpers.ts";
import { Uniforms } from "../kernels/uniforms.ts";

/** y = a·x + b, one element per invocation, flat grid. */
const axpb = kernel({
  name: "test_axpb",
  bindings: ["read", "read_write"],
  uniformBytes: 16,
  source: () => `
struct P { n: u32, a: f32, b: f32, pad: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = ${FLAT_WORKGROUP_INDEX} * 64u + lid;
  if (i < p.n) { y[i] = p.a * x[i] + p.b; }
}`,
});

function runAxpb(gpu: Gpu, x: GpuTensor, y: GpuTensor, a: number, b: number) {
  const params = new Uniforms(16).u32(x.numel).f32(a).f32(b).bytes;
  gpu.dispatch(axpb, [x, y], grid(Math.ceil(x.numel / 64)), params);
}

gpuTest("runtime: starts and reports adapter and limits", (gpu) => {
  assert(gpu.adapter.name.length > 0, "adapter has a name");
  assert(gpu.limits.maxStorageBufferBindingSize >= 128 * 2 ** 20, "binding limit ≥ 128 MiB");
  assert(gpu.limits.maxComputeWorkgroupStorageSize >= 16384);
  assert(gpu.describe().includes(gpu.adapter.name));
});

gpuTest("runtime: upload and read back f32, u32 and bytes", async (gpu) => {
  const f = new Float32Array([1.5, -2, 3e30, 0]);
  const t = gpu.tensor(f, [2, 2]);
  assertEquals([...(await gpu.readF32(t))], [...f]);
  const u = gpu.tensor(new Uint32Array([1, 2, 0xffffffff]));
  assertEquals([...(await gpu.read(u))], [1, 2, 0xffffffff]);
  const bytes = new Uint8Array([1, 2, 3, 4, 5, 6, 7]);
  const b = gpu.uploadBytes(bytes);
  assertEquals([...(await gpu.readBytes(b)).subarray(0, 7)], [...bytes]);
  gpu.release(t, u, b);
});

gpuTest("runtime: pool size classes waste under 12.5 %", () => {
  for (const n of [1, 255, 256, 257, 1000, 4097, 1e6, 3.3e7, 1.2e8]) {
    const c = sizeClass(n);
    assert(c >= n && c % 256 === 0, `class of ${n} is ${c}`);
    if (n > 2048) assert(c / n <= 1.125, `waste of ${n} → ${c}`);
  }
  assertThrows(() => sizeClass(-1), RangeError);
});

gpuTest("runtime: a released buffer is reused for host writes only after the submit", (gpu) => {
  gpu.flush();
  const x = gpu.tensor(new Float32Array(1000));
  const y = gpu.empty([1000]);
  runAxpb(gpu, x, y, 2, 1); // open encoder reads x
  const xbuf = x.buffer;
  gpu.release(x);
  // An upload now would overtake the dispatch that reads x: must not get x's buffer.
  const early = gpu.tensor(new Float32Array(1000));
  assert(early.buffer !== xbuf, "host upload must not reuse a buffer freed in the open submit");
  // A kernel output may: dispatches run in order.
  const out = gpu.empty([1000]);
  assert(out.buffer === xbuf, "gpu-written output reuses the pending buffer");
  gpu.release(out);
  gpu.flush();
  const later = gpu.tensor(new Float32Array(1000));
  assert(later.buffer === xbuf, "after the submit the buffer is free for uploads");
  const before = gpu.pool.stats();
  gpu.release(early, later, y);
  assertThrows(() => gpu.release(later), Error, "released twice");
  assert(gpu.pool.stats().liveBytes < before.liveBytes);
});

gpuTest("runtime: many dispatches go in one submit, each with its own uniforms", async (gpu) => {
  await gpu.sync();
  const s0 = gpu.stats();
  const x = gpu.tensor(new Float32Array(256).fill(1));
  const outs: GpuTensor[] = [];
  for (let i = 0; i < 300; i++) {
    const y = gpu.empty([256]);
    runAxpb(gpu, x, y, i, 0.5);
    outs.push(y);
  }
  assertEquals(gpu.stats().submits, s0.submits, "nothing submitted while recording");
  assertEquals(gpu.stats().openDispatches, 300);
  const first = await gpu.readF32(outs[299]);
  assertEquals(gpu.stats().submits, s0.submits + 1, "one submit for 300 dispatches");
  assertEquals(first[0], 299.5);
  for (const i of [0, 1, 150, 298]) {
    assertEquals((await gpu.readF32(outs[i]))[17], i + 0.5, `dispatch ${i} kept its uniforms`);
  }
  gpu.release(x, ...outs);
});

gpuTest(
  "runtime: write flushes before overwriting a tensor the open encoder reads",
  async (gpu) => {
    const x = gpu.tensor(new Float32Array(64).fill(1));
    const y = gpu.empty([64]);
    runAxpb(gpu, x, y, 3, 0);
    gpu.write(x, new Float32Array(64).fill(100));
    assertEquals((await gpu.readF32(y))[5], 3);
    assertEquals((await gpu.readF32(x))[5], 100);
    gpu.release(x, y);
  },
);

gpuTest("runtime: grid spreads large workgroup counts over y", async (gpu) => {
  assertEquals(grid(10), [10, 1, 1]);
  const [gx, gy] = grid(200000);
  assert(gx <= 65535 && gx * gy >= 200000);
  // 70,000 workgroups of 64: exercises the flat index across rows.
  const n = 70000 * 64;
  const x = gpu.tensor(new Float32Array(n).map((_, i) => i % 1000));
  const y = gpu.empty([n]);
  runAxpb(gpu, x, y, 1, 1);
  const out = await gpu.readF32(y);
  assertEquals(out[n - 1], ((n - 1) % 1000) + 1);
  assertEquals(out[65535 * 64 + 3], ((65535 * 64 + 3) % 1000) + 1);
  gpu.release(x, y);
});

gpuTest("runtime: a WGSL syntax error names the kernel and quotes the line", async (gpu) => {
  const bad = kernel({
    name: "test_broken",
    bindings: ["read_write"],
    source: () =>
      `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1)
fn main() {
  y[0] = 1.0 +;
}`,
  });
  const err = await assertRejects(() => gpu.compile(bad), ShaderCompileError, "test_broken");
  assert(/line 4/.test(err.message) && err.message.includes("y[0] = 1.0 +;"), err.message);
  // Dispatching it surfaces the same error at the next sync, not silently.
  const y = gpu.zeros([4]);
  gpu.dispatch(bad, [y], [1]);
  await assertRejects(() => gpu.sync(), ShaderCompileError, "test_broken");
  await gpu.sync(); // the error is reported once, then the runtime goes on
  gpu.release(y);
});

gpuTest("runtime: out-of-range bindings give clear errors", async (gpu) => {
  const x = gpu.tensor(new Float32Array(16));
  const y = gpu.empty([16]);
  // A range past the end of its buffer is caught before it reaches the device.
  const past = { buffer: x.buffer, offset: 0, size: x.buffer.size + 256 };
  assertThrows(
    () => runAxpb(gpu, x, { ...y, ...past } as GpuTensor, 1, 1),
    GpuLimitError,
    "past the end",
  );
  // A binding bigger than the adapter allows names the limit.
  const max = gpu.limits.maxStorageBufferBindingSize;
  if (max + 1024 <= gpu.limits.maxBufferSize && max <= 512 * 2 ** 20) {
    const huge = gpu.device.createBuffer({ size: max + 1024, usage: GPUBufferUsage.STORAGE });
    assertThrows(
      () =>
        gpu.dispatch(
          axpb,
          [x, { buffer: huge, offset: 0, size: max + 1024 }],
          [1],
          new Uniforms(16).u32(1).bytes,
        ),
      GpuLimitError,
      "maxStorageBufferBindingSize",
    );
    huge.destroy();
  }
  // Aliased read and write of one buffer is refused with the fix.
  assertThrows(() => runAxpb(gpu, x, x, 1, 1), GpuError, "bind it once as read_write");
  // A mismatch only the device sees (shader declares read_write, layout says read)
  // is reported at sync with the kernel's name.
  const mismatch = kernel({
    name: "test_layout_mismatch",
    bindings: ["read"],
    source: () =>
      `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1) fn main() { y[0] = 2.0; }`,
  });
  gpu.dispatch(mismatch, [y], [1]);
  await assertRejects(() => gpu.sync(), GpuError, "test_layout_mismatch");
  gpu.release(x, y);
});

gpuTest("runtime: timing reports wall time and GPU time where available", async (gpu) => {
  const x = gpu.tensor(new Float32Array(1 << 16));
  const y = gpu.empty([1 << 16]);
  const t = await gpu.time(() => {
    for (let i = 0; i < 10; i++) runAxpb(gpu, x, y, 1, 1);
  });
  assert(t.wallMs > 0);
  if (gpu.features.timestamp) assert(t.gpuMs !== null && t.gpuMs >= 0);
  else assertEquals(t.gpuMs, null);
  gpu.release(x, y);
});

gpuTest("runtime: a captured step replays with one submit and new inputs", async (gpu) => {
  const x = gpu.tensor(new Float32Array(128).fill(2));
  const y = gpu.empty([128]);
  const z = gpu.empty([128]);
  const { recording } = await gpu.capture(() => {
    runAxpb(gpu, x, y, 3, 1); // y = 3x + 1
    runAxpb(gpu, y, z, 2, 0); // z = 2y
  });
  assertEquals((await gpu.readF32(z))[0], 14);
  assertEquals(recording.dispatches.length, 2);
  gpu.write(x, new Float32Array(128).fill(5));
  const s = gpu.stats().submits;
  gpu.replay(recording);
  assertEquals(gpu.stats().submits, s + 1);
  assertClose(await gpu.readF32(z), new Float32Array(128).fill(32));
  gpu.disposeRecording(recording);
  gpu.release(x, y, z);
});

/** out[i] = texel (i % w, i / w) of an rgba32float texture, as 4 floats. */
const readTexture = kernel({
  name: "test_read_texture",
  bindings: ["texture_f32", "read_write"],
  source: () => `
@group(0) @binding(0) var t: texture_2d<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4f>;
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wid: vec3u) {
  let w = textureDimensions(t).x;
  out[wid.x] = textureLoad(t, vec2u(wid.x % w, wid.x / w), 0);
}`,
});

gpuTest(
  "runtime: textures are copied from buffer rows, bound, pooled and replayed",
  async (gpu) => {
    // Rows of 64 floats (a 256-byte pitch), texture 2 texels wide: the first 8 floats of rows 1, 2.
    const src = gpu.tensor(Float32Array.from({ length: 3 * 64 }, (_, i) => i));
    const out = gpu.empty([16]);
    const run = () => {
      const t = gpu.texture(2, 2, "rgba32float");
      gpu.copyToTexture({ buffer: src.buffer, offset: src.offset + 256, size: 512 }, 256, t, 2, 2);
      gpu.dispatch(readTexture, [t, out], [4]);
      gpu.releaseTexture(t);
    };
    run();
    const want = [64, 65, 66, 67, 68, 69, 70, 71, 128, 129, 130, 131, 132, 133, 134, 135];
    assertEquals([...await gpu.readF32(out)], want);
    // Released textures are reused: a second run creates none.
    const created = gpu.textures.created;
    run();
    await gpu.sync();
    assertEquals(gpu.textures.created, created);
    // A captured step replays its copies; textures released inside it are reused within it.
    const { recording } = await gpu.capture(() => {
      run();
      run();
    });
    assert(gpu.textures.created <= created + 1, "one texture serves both runs of the capture");
    gpu.write(src, Float32Array.from({ length: 3 * 64 }, (_, i) => -i));
    gpu.replay(recording);
    assertEquals([...await gpu.readF32(out)], want.map((x) => -x));
    gpu.disposeRecording(recording);
    // Misuse is named: a buffer where a texture is declared, a pitch WebGPU refuses, a double release.
    assertThrows(() => gpu.dispatch(readTexture, [out, out], [1]), GpuError, "texture_f32 binding");
    const t = gpu.texture(2, 2, "rgba32float");
    assertThrows(
      () => gpu.copyToTexture({ buffer: src.buffer, offset: 0, size: 512 }, 200, t, 2, 2),
      GpuError,
      "multiple of 256",
    );
    gpu.releaseTexture(t);
    assertThrows(() => gpu.releaseTexture(t), Error, "released twice");
    assertThrows(
      () => gpu.texture(1 << 20, 1, "rgba32float"),
      GpuLimitError,
      "maxTextureDimension2D",
    );
    gpu.release(src, out);
  },
);

Deno.test("pools: free lists are trimmed largest first down to the bytes kept", () => {
  const destroyed: string[] = [];
  const item = (name: string) => ({ destroy: () => void destroyed.push(name) });
  const free = new Map([[100, [item("a"), item("b")]], [300, [item("c")]], [200, [item("d")]]]);
  assertEquals(trimFree(free, 700, 1000, (k) => k), 700, "under the cap: nothing destroyed");
  assertEquals(destroyed, []);
  assertEquals(trimFree(free, 700, 150, (k) => k), 100);
  assertEquals(destroyed, ["c", "d", "b"]);
  assertEquals([...free.values()].flat().length, 1);
  // The texture pool keeps (and trims) its free textures the same way, by texel bytes.
  const device = {
    createTexture: (d: { size: [number, number] }) => ({
      width: d.size[0],
      height: d.size[1],
      createView: () => ({}),
      destroy: () => void destroyed.push(`${d.size[0]}x${d.size[1]}`),
    }),
  } as unknown as GPUDevice;
  const pool = new TexturePool(device, Infinity);
  const [small, large] = [pool.acquire(2, 2, "rgba32float"), pool.acquire(8, 4, "rgba32float")];
  pool.release(small);
  pool.release(large);
  destroyed.length = 0;
  pool.trim(2 * 2 * 16);
  assertEquals(destroyed, ["8x4"], "the larger texture goes first");
  assertEquals(pool.acquire(2, 2, "rgba32float").texture, small.texture, "the kept one is reused");
  assertEquals(pool.created, 2);
});

Deno.test("bindings: what cannot be split and is over the binding limit is named, with the fix", () => {
  const gpu = { limits: { maxStorageBufferBindingSize: 1024 } } as Gpu;
  checkBindingBytes(gpu, "op", "the rows", 1024, "use fewer");
  assertThrows(
    () => checkBindingBytes(gpu, "op", "the rows", 1025, "use fewer"),
    GpuLimitError,
    "op: the rows take 1025 B, over the 1 KiB of maxStorageBufferBindingSize; use fewer",
  );
});
