/**
 * Errors the GPU runtime throws. Every message says what happened and, where
 * there is one, what the user can do about it.
 */

/** Base class of every error raised by the GPU runtime. */
export class GpuError extends Error {
  override name = "GpuError";
}

/** No WebGPU adapter could be found. */
export class NoAdapterError extends GpuError {
  override name = "NoAdapterError";
  constructor(detail = "") {
    super(
      "No WebGPU adapter found" + (detail ? ` (${detail})` : "") + ".\n" +
        "  - On a machine with a GPU: install its vendor driver (NVIDIA, AMD, Intel) with Vulkan " +
        "support, or run on macOS (Metal).\n" +
        "  - On a machine without a GPU: install Mesa's software Vulkan driver " +
        "(Debian/Ubuntu: `sudo apt-get install mesa-vulkan-drivers`), which gives the llvmpipe " +
        "adapter bloom's tests run on.",
    );
  }
}

/** A WGSL shader failed to compile; the message carries the offending source lines. */
export class ShaderCompileError extends GpuError {
  override name = "ShaderCompileError";
}

/** A binding, buffer or dispatch exceeds what the adapter allows. */
export class GpuLimitError extends GpuError {
  override name = "GpuLimitError";
}

/** The GPU device was lost (driver reset, out of memory, destroyed). */
export class DeviceLostError extends GpuError {
  override name = "DeviceLostError";
}

/**
 * Formats WGSL compilation messages with the source lines they point at, so a
 * failing kernel can be fixed from the error alone.
 */
export function formatCompilationMessages(
  kernel: string,
  source: string,
  messages: readonly GPUCompilationMessage[],
): string {
  const lines = source.split("\n");
  const parts = [`WGSL compilation of kernel '${kernel}' failed:`];
  for (const m of messages) {
    if (m.type !== "error") continue;
    parts.push(`  ${m.type} at line ${m.lineNum}:${m.linePos}: ${m.message.trim()}`);
    const from = Math.max(0, m.lineNum - 3);
    const to = Math.min(lines.length, m.lineNum + 2);
    for (let i = from; i < to; i++) {
      parts.push(`  ${i + 1 === m.lineNum ? ">" : " "}${String(i + 1).padStart(5)} | ${lines[i]}`);
    }
  }
  return parts.join("\n");
}
