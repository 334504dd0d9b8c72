import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { SafetensorsFile, readSafetensors, writeSafetensors } from "../src/io/safetensors";
import { floatToHalf, halfToFloat, floatToBfloat16, bfloat16ToFloat } from "../src/io/host-tensor";
import { fixture } from "./helpers/tf";

describe("safetensors", () => {
  it("reads a file written by the reference Python library (ldm-tiny io)", () => {
    const f = SafetensorsFile.open(fixture("ldm-tiny.io.safetensors"));
    try {
      expect(f.entries.get("x")!.shape).toEqual([2, 4, 16, 16]);
      expect(f.entries.get("t")!.dtype).toBe("I64");
      const t = f.read("t");
      expect(t.data).toBeInstanceOf(Int32Array);
      expect(t.shape).toEqual([2]);
    } finally {
      f.close();
    }
  });

  it("reads fp16 weights widened to float32", () => {
    const f = SafetensorsFile.open(fixture("ldm-tiny.unet.safetensors"));
    try {
      const [k, e] = [...f.entries][0]!;
      expect(k.startsWith("model.diffusion_model.")).toBe(true);
      expect(e.dtype).toBe("F16");
      const t = f.read(k);
      // every fp16 value round-trips exactly through float32
      for (const v of t.data) expect(halfToFloat(floatToHalf(v))).toBe(v);
    } finally {
      f.close();
    }
  });

  it("round-trips tensors and metadata in every float dtype", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "st-"));
    const file = path.join(dir, "a.safetensors");
    const vals = new Float32Array([0, 1, -2.5, 65504, 1e-7, 3.140625]);
    writeSafetensors(
      file,
      [
        ["a", { dtype: "F32", shape: [2, 3], data: vals }],
        ["b", { dtype: "F16", shape: [6], data: vals }],
        ["c", { dtype: "BF16", shape: [3, 2], data: vals }],
      ],
      { name: "x" },
    );
    const { tensors, metadata } = readSafetensors(file);
    expect(metadata).toEqual({ name: "x" });
    expect([...tensors.keys()]).toEqual(["a", "b", "c"]);
    expect([...tensors.get("a")!.data]).toEqual([...vals]);
    expect([...tensors.get("b")!.data]).toEqual([...vals].map((v) => halfToFloat(floatToHalf(v))));
    expect([...tensors.get("c")!.data]).toEqual([...vals].map((v) => bfloat16ToFloat(floatToBfloat16(v))));
    // no silent overwrite
    expect(() => writeSafetensors(file, [])).toThrow(/already exists/);
  });

  it("fp16 conversion matches hand-computed bit patterns", () => {
    expect(floatToHalf(1)).toBe(0x3c00);
    expect(floatToHalf(-2)).toBe(0xc000);
    expect(floatToHalf(65504)).toBe(0x7bff);
    expect(floatToHalf(65520)).toBe(0x7c00); // rounds to inf
    expect(floatToHalf(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(floatToHalf(1 + 2 ** -11)).toBe(0x3c00); // tie → even
    expect(floatToHalf(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(halfToFloat(0x3555)).toBeCloseTo(0.33325195, 8);
    expect(floatToBfloat16(1)).toBe(0x3f80);
  });

  it("rejects corrupt headers with the file name and the problem", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "st-"));
    const file = path.join(dir, "bad.safetensors");
    const hdr = Buffer.from(JSON.stringify({ a: { dtype: "F32", shape: [1000000], data_offsets: [0, 4000000] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(hdr.length));
    fs.writeFileSync(file, Buffer.concat([len, hdr, Buffer.alloc(16)]));
    expect(() => SafetensorsFile.open(file)).toThrow(/bad\.safetensors.*outside/);
    len.writeBigUInt64LE(1n << 60n);
    fs.writeFileSync(file, Buffer.concat([len, hdr]));
    expect(() => SafetensorsFile.open(file)).toThrow(/exceeds/);
    fs.writeFileSync(file, Buffer.alloc(3));
    expect(() => SafetensorsFile.open(file)).toThrow(/only 3 bytes/);
  });
});
