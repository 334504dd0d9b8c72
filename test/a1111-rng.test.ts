/**
 * A1111 noise against numbers made by real PyTorch 1.13 and A1111's NumPy Philox
 * (test/scripts/make_a1111_rng_fixtures.py → test/fixtures/a1111-rng.json), plus published
 * known-answer vectors for MT19937 and Philox.
 */
import * as fs from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { A1111Rng, a1111Rng, a1111Slerp, chwToHwc, hwcToChw, randn } from "../src/diffusion/a1111-rng";
import { a1111BatchSeeds, a1111ImageNoise } from "../src/diffusion/a1111-image-noise";
import { Mt19937 } from "../src/diffusion/mt19937";
import { philox4x32First2 } from "../src/diffusion/philox";
import { Rng } from "../src/diffusion/random";
import { fmaf } from "../src/diffusion/torch-cpu-randn";
import { expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

interface Draw {
  seed: string;
  size: number;
  values: string;
}
interface Sequence {
  seed: string;
  sizes: number[];
  values: string[];
}
interface CpuSection {
  capability: string;
  fresh: Draw[];
  sequences: Sequence[];
  shaped: { seed: string; shape: number[]; values: string };
  big: Draw;
}
interface ImageCase {
  name: string;
  source: "CPU" | "NV";
  seeds: number[];
  subseeds?: number[];
  strength?: number;
  ensd?: number;
  resize?: [number, number];
  shape: [number, number, number];
  draws: number;
  values: string[];
}
const FX = JSON.parse(fs.readFileSync(fixture("a1111-rng.json"), "utf8")) as {
  cpu: { avx2: CpuSection; default: CpuSection };
  nv: { fresh: Draw[]; sequences: Sequence[]; docstring: { values: string }; big: Draw };
  image: ImageCase[];
};

function f32(b64: string): Float32Array {
  const bytes = Buffer.from(b64, "base64");
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** Distance in float32 units in the last place (same-sign values; 0 = identical bits). */
function ulps(a: Float32Array, b: Float32Array): number[] {
  const ia = new Int32Array(a.buffer, a.byteOffset, a.length);
  const ib = new Int32Array(b.buffer, b.byteOffset, b.length);
  return Array.from(ia, (v, i) => Math.abs(v - ib[i]!));
}

function expectBitExact(got: Float32Array, want: Float32Array, what: string): void {
  expect(got.length, what).toBe(want.length);
  const off = ulps(got, want).filter((d) => d !== 0).length;
  expect(off, `${what}: ${off} of ${want.length} values differ`).toBe(0);
}

describe("MT19937 (torch's CPU engine)", () => {
  it("matches the reference generator's published outputs", () => {
    const g = new Mt19937(5489); // std::mt19937's default seed
    expect(g.next()).toBe(3499211612);
    for (let i = 2; i < 10000; i++) g.next();
    expect(g.next()).toBe(4123659995); // the C++ standard's check: the 10000th output
  });

  it("state survives a JSON round trip mid-block", () => {
    const a = new Mt19937(42);
    for (let i = 0; i < 700; i++) a.next();
    const b = Mt19937.fromState(JSON.parse(JSON.stringify(a.getState())));
    for (let i = 0; i < 1000; i++) expect(b.next()).toBe(a.next());
    expect(() => Mt19937.fromState({ words: [1, 2], index: 0 })).toThrow(/624 uint32/);
  });
});

describe("Philox 4×32-10", () => {
  it("matches Random123's known-answer vectors (first two words)", () => {
    expect(philox4x32First2(0, 0, 0, 0, 0, 0)).toEqual([0x6627e8d5, 0xe169c58d]);
    const m = 0xffffffff;
    expect(philox4x32First2(m, m, m, m, m, m)).toEqual([0x408f276d, 0x41c83b0e]);
    expect(philox4x32First2(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0)).toEqual([0xd16cfe09, 0x94fdcceb]);
  });
});

describe('a1111Rng(seed, "CPU") = torch.Generator("cpu").manual_seed(seed) + torch.randn', () => {
  it("fresh draws of sizes 1…256 are bit-exact (x86 AVX2 kernel)", () => {
    expect(FX.cpu.avx2.capability).toBe("AVX2");
    for (const d of FX.cpu.avx2.fresh)
      expectBitExact(a1111Rng(BigInt(d.seed), "CPU").normal(d.size), f32(d.values), `seed ${d.seed} size ${d.size}`);
  });

  it("successive draws continue the generator, including the small path's cached second normal", () => {
    for (const s of FX.cpu.avx2.sequences) {
      const g = a1111Rng(BigInt(s.seed), "CPU");
      s.sizes.forEach((n, i) => expectBitExact(g.normal(n), f32(s.values[i]!), `seed ${s.seed} draws ${s.sizes} #${i}`));
    }
  });

  it("randn(shape) fills row-major, a 256×256 latent's worth is bit-exact, no tensor leaks", async () => {
    const sh = FX.cpu.avx2.shaped;
    const t = await expectNoLeak(() => {
      const x = randn(sh.shape, a1111Rng(BigInt(sh.seed), "CPU"));
      const out = { shape: x.shape, data: x.dataSync() as Float32Array };
      x.dispose();
      return out;
    });
    expect(t.shape).toEqual(sh.shape);
    expectBitExact(t.data, f32(sh.values), "shape [2,4,3,5]");
    expectBitExact(a1111Rng(1234, "CPU").normal(FX.cpu.avx2.big.size), f32(FX.cpu.avx2.big.values), "4096 values");
  });

  it("only the seed's low 32 bits matter, as in torch", () => {
    expectBitExact(a1111Rng(2n ** 40n + 1234n, "CPU").normal(100), a1111Rng(1234, "CPU").normal(100), "2^40 + 1234 vs 1234");
  });

  it('the portable kernel ("default", ARM/Apple): small draws exact, large ones within 3 ulp of glibc\'s float log/sin/cos', () => {
    expect(FX.cpu.default.capability).toBe("NO");
    let differing = 0;
    let total = 0;
    for (const d of [...FX.cpu.default.fresh, FX.cpu.default.big]) {
      const got = a1111Rng(BigInt(d.seed), "CPU", { cpuKernel: "default" }).normal(d.size);
      const want = f32(d.values);
      const u = ulps(got, want);
      if (d.size < 16) expect(Math.max(...u), `size ${d.size}`).toBe(0);
      expect(Math.max(...u), `seed ${d.seed} size ${d.size}`).toBeLessThanOrEqual(3);
      differing += u.filter((x) => x !== 0).length;
      total += u.length;
    }
    // Measured: about 1.5 % of values differ (glibc's logf/sinf/cosf are not correctly rounded).
    expect(differing / total).toBeLessThan(0.03);
  });

  it("state round-trips through JSON, cached normal included; clones are independent", () => {
    const a = a1111Rng(77, "CPU");
    a.normal(3); // leaves a cached normal
    const b = A1111Rng.fromState(JSON.parse(JSON.stringify(a.getState())));
    const c = a.clone();
    const fromA = [a.normal(1), a.normal(20), a.normal(2)];
    expectBitExact(b.normal(1), fromA[0]!, "cached value");
    expectBitExact(b.normal(20), fromA[1]!, "large draw");
    expectBitExact(b.normal(2), fromA[2]!, "small draw");
    expectBitExact(c.normal(1), fromA[0]!, "clone");
  });
});

describe('a1111Rng(seed, "NV") = A1111 rng_philox.Generator', () => {
  it("gives the values printed in rng_philox.py's docstring for seed 0, shape (3, 4)", () => {
    // The docstring's numbers (printed to 8 digits by A1111's authors).
    const doc = [
      -0.92466259, -0.42534415, -2.6438457, 0.14518388, -0.12086647, -0.57972564, -0.62285122, -0.32838709, -1.07454231, -0.36314407,
      -1.67105067, 2.26550497,
    ];
    const got = a1111Rng(0, "NV").normal(12);
    doc.forEach((v, i) => expect(Math.abs(got[i]! - v)).toBeLessThan(5e-7));
    expectBitExact(got, f32(FX.nv.docstring.values), "seed 0 (3, 4)");
  });

  it("fresh draws, successive draws (offset + 1 each) and 64-bit seeds are bit-exact", () => {
    for (const d of [...FX.nv.fresh, FX.nv.big])
      expectBitExact(a1111Rng(BigInt(d.seed), "NV").normal(d.size), f32(d.values), `seed ${d.seed} size ${d.size}`);
    for (const s of FX.nv.sequences) {
      const g = a1111Rng(BigInt(s.seed), "NV");
      s.sizes.forEach((n, i) => expectBitExact(g.normal(n), f32(s.values[i]!), `seed ${s.seed} draws ${s.sizes} #${i}`));
    }
    const r = a1111Rng(5, "NV");
    r.normal(1000);
    expect(r.getState()).toEqual({ source: "NV", seed: "5", offset: 1 });
    expectBitExact(A1111Rng.fromState(r.getState()).normal(8), r.normal(8), "resumed at offset 1");
  });
});

describe("A1111 per-image noise (ImageRNG)", () => {
  it("matches A1111's ImageRNG for batches, variation seeds, resize and ENSD, both sources", () => {
    for (const cs of FX.image) {
      const [c, h, w] = cs.shape;
      const noise = a1111ImageNoise({
        shape: [cs.seeds.length, h, w, c],
        seeds: cs.seeds,
        subseeds: cs.subseeds,
        subseedStrength: cs.strength,
        etaNoiseSeedDelta: cs.ensd,
        seedResizeFrom: cs.resize ? { height: cs.resize[0], width: cs.resize[1] } : undefined,
        source: cs.source,
      });
      cs.values.forEach((b64, k) => {
        const want = f32(b64); // [B, C, H, W]
        const got = noise.normal(noise.size); // [B, H, W, C]
        const per = c * h * w;
        for (let i = 0; i < cs.seeds.length; i++) {
          const img = hwcToChw(got.subarray(i * per, (i + 1) * per), c, h, w);
          const ref = want.subarray(i * per, (i + 1) * per);
          const what = `${cs.source} ${cs.name}, draw ${k}, image ${i}`;
          // torch's acos/sin are not correctly rounded: measured at most 4.8e-7 apart (1e-6 allowed).
          if (cs.strength && k === 0) ref.forEach((v, j) => expect(Math.abs(img[j]! - v), what).toBeLessThan(1e-6));
          else expectBitExact(img, ref, what);
        }
      });
    }
  });

  it("a single seed expands as A1111's all_seeds: seed + i, or the same seed with a variation", () => {
    expect(a1111BatchSeeds(10, 3)).toEqual({ seeds: [10n, 11n, 12n], subseeds: [0n, 1n, 2n] });
    expect(a1111BatchSeeds(10, 2, { subseed: 7, subseedStrength: 0.5, start: 4 })).toEqual({ seeds: [10n, 10n], subseeds: [11n, 12n] });
    const a = a1111ImageNoise({ shape: [2, 3, 3, 4], seed: 10 }).normal(72);
    const b = a1111ImageNoise({ shape: [2, 3, 3, 4], seeds: [10, 11] }).normal(72);
    expectBitExact(a, b, "seed 10 = seeds [10, 11]");
    // Image 1 of the batch is A1111's draw for seed 11, as [C, H, W] laid out as [H, W, C].
    expectBitExact(a.subarray(36), chwToHwc(a1111Rng(11, "CPU").normal(36), 4, 3, 3), "image 1");
  });

  it("clones are independent and refuse draws of another size", () => {
    const n = a1111ImageNoise({ shape: [1, 4, 4, 4], seed: 3, source: "NV", etaNoiseSeedDelta: 31337 });
    const first = n.normal(64);
    const c = n.clone();
    expectBitExact(c.normal(64), n.normal(64), "second draw");
    expect(first).not.toEqual(c.normal(64));
    expect(() => n.normal(63)).toThrow(/whole batches of \[1,4,4,4\] \(64 values\)/);
  });
});

describe("helpers and errors", () => {
  it("a1111Slerp: strength 0 gives low, 1 gives high, and each (channel, column) keeps its norm for orthogonal inputs", () => {
    const low = a1111Rng(1, "CPU").normal(4 * 16 * 3);
    const high = a1111Rng(2, "CPU").normal(4 * 16 * 3);
    ulps(a1111Slerp(0, low, high, 4, 16, 3), low).forEach((d) => expect(d).toBeLessThanOrEqual(1));
    a1111Slerp(1, low, high, 4, 16, 3).forEach((v, i) => expect(Math.abs(v - high[i]!)).toBeLessThan(1e-5));
    // Hand case: [1, 2, 1] with orthogonal unit columns; halfway is (e1 + e2)/√2.
    const mid = a1111Slerp(0.5, new Float32Array([1, 0]), new Float32Array([0, 1]), 1, 2, 1);
    expect(mid[0]).toBeCloseTo(Math.SQRT1_2, 6);
    expect(mid[1]).toBeCloseTo(Math.SQRT1_2, 6);
  });

  it("randn accepts the project's own Rng (same interface) and draws what rng.normal draws", async () => {
    const got = await expectNoLeak(() => {
      const t = randn([2, 3], new Rng(9));
      const d = t.dataSync();
      t.dispose();
      return d;
    });
    expect(Array.from(got)).toEqual(Array.from(new Rng(9).normal(6)));
  });

  it("bad seeds, sources and shapes are refused with what to do", () => {
    expect(() => a1111Rng(-1, "CPU")).toThrow(/\[0, 2\^64\).*random seed/);
    expect(() => a1111Rng(1.5, "CPU")).toThrow(/integer/);
    expect(() => a1111Rng(2n ** 64n, "NV")).toThrow(/\[0, 2\^64\)/);
    expect(() => a1111Rng(1, "GPU" as "CPU")).toThrow(/use "NV"/);
    expect(() => randn([2, -1], a1111Rng(1))).toThrow(/non-negative integers/);
    expect(() => a1111ImageNoise({ shape: [2, 4, 4, 4] })).toThrow(/give a seed/);
    expect(() => a1111ImageNoise({ shape: [2, 4, 4, 4], seeds: [1] })).toThrow(/1 seeds for a batch of 2/);
    expect(() => A1111Rng.fromState({ source: "CPU", seed: "x" } as never)).toThrow(/getState/);
  });

  it("fmaf rounds a·b + c once, also where the double sum lands on a float32 tie", () => {
    // TwoProduct: the rounding error of a float product, exactly.
    const a = Math.fround(1 + 2 ** -12);
    expect(fmaf(a, a, -Math.fround(a * a))).toBe(2 ** -24);
    // a·b = 2⁻²⁴ − 2⁻⁷⁰; + (1 + 2⁻²³) is just below the tie 1 + 3·2⁻²⁴, which a double sum hits
    // exactly. Rounding once gives 1 + 2⁻²³; rounding the double (ties to even) would give 1 + 2⁻²².
    const x = Math.fround(2 ** -12 * (1 + 2 ** -23));
    const y = Math.fround(2 ** -12 * (1 - 2 ** -23));
    expect(fmaf(x, y, Math.fround(1 + 2 ** -23))).toBe(1 + 2 ** -23);
    expect(Math.fround(x * y + Math.fround(1 + 2 ** -23))).toBe(1 + 2 ** -22);
  });
});
