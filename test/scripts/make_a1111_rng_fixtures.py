#!/usr/bin/python3
"""Reference noise for test/a1111-rng.test.ts, written to test/fixtures/a1111-rng.json.

Run with Debian's PyTorch 1.13:  /usr/bin/python3 test/scripts/make_a1111_rng_fixtures.py

What it records (every array of float32 values is stored as base64 of its little-endian bytes,
so the test reads back exactly the bits torch wrote):

* "cpu": what `torch.Generator("cpu").manual_seed(seed)` then `torch.randn(size, generator=g)`
  returns -- AUTOMATIC1111's "CPU" noise source. Recorded twice, once per CPU kernel torch picks:
  "avx2" (x86 machines: torch's AVX2 kernel, with its own float32 log/sin/cos) and "default"
  (the portable kernel, std::log/std::cos in float32; what ARM machines such as Apple's run).
  The second is forced with ATEN_CPU_CAPABILITY=default in a child process.
* "nv": AUTOMATIC1111's "NV" source (modules/rng_philox.py, an imitation of CUDA's randn on
  the CPU), re-implemented below in numpy from its description: Philox 4x32 with 10 rounds, key =
  the 64-bit seed, counter = (offset, 0, index, 0), first output word pair through Box-Muller
  (sine branch), the offset growing by one per draw.
* "image": AUTOMATIC1111's per-image noise (modules/rng.py ImageRNG): seeds, variation seed and
  strength (its `slerp`), "resize seed from", and "Eta noise seed delta", for both sources.

The ImageRNG and slerp logic below follows A1111's behaviour as read from its source; it is
written out here only to produce fixtures and is not part of the library.
"""
import base64
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "a1111-rng.json")

SEEDS = [0, 1234, 2**32 - 1, 2**40 + 1234]
SIZES = [1, 3, 15, 16, 17, 100, 4 * 8 * 8]
# Successive draws from one generator: the scalar path's cached second normal must carry over,
# also across a >= 16 draw (which neither reads nor clears that cache).
SEQUENCES = [[3, 1], [1, 1, 1], [17, 16], [3, 16, 1], [256, 256, 5]]
BIG_SIZE = 4 * 32 * 32  # one SD 1.x 256x256 latent


def f32_b64(t):
    return base64.b64encode(np.ascontiguousarray(np.asarray(t, dtype="<f4").reshape(-1)).tobytes()).decode("ascii")


# ---- torch CPU ------------------------------------------------------------------------------

def torch_cpu_section():
    """Runs in a child process so that ATEN_CPU_CAPABILITY can choose the kernel."""
    import torch

    def gen(seed):
        return torch.Generator("cpu").manual_seed(seed)

    out = {"capability": torch.__config__.show().split("CPU capability usage:")[1].split()[0], "torch": torch.__version__}
    out["fresh"] = [
        {"seed": str(seed), "size": size, "values": f32_b64(torch.randn(size, generator=gen(seed)))}
        for seed in SEEDS
        for size in SIZES
    ]
    out["sequences"] = []
    for seed in SEEDS[:2]:
        for seq in SEQUENCES:
            g = gen(seed)
            out["sequences"].append({"seed": str(seed), "sizes": seq, "values": [f32_b64(torch.randn(n, generator=g)) for n in seq]})
    # A shaped draw is the same stream in row-major order.
    out["shaped"] = {"seed": "1234", "shape": [2, 4, 3, 5], "values": f32_b64(torch.randn((2, 4, 3, 5), generator=gen(1234)))}
    out["big"] = {"seed": "1234", "size": BIG_SIZE, "values": f32_b64(torch.randn(BIG_SIZE, generator=gen(1234)))}
    return out


def torch_cpu(capability):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    res = subprocess.run([sys.executable, __file__, "--cpu-child"], env=env, check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


# ---- A1111 "NV": Philox 4x32-10 + Box-Muller, in numpy ---------------------------------------

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)


def philox_4x32_10(c, k0, k1):
    """c: uint64 array (4, n) holding 32-bit words; k0, k1: python ints (the key words)."""
    c = [w.astype(np.uint64) for w in c]
    for r in range(10):
        p0 = c[0] * M0  # < 2^64, exact in uint64
        p1 = c[2] * M1
        hi0, lo0 = p0 >> np.uint64(32), p0 & MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & MASK32
        c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
        k0 = (k0 + W0) & 0xFFFFFFFF
        k1 = (k1 + W1) & 0xFFFFFFFF
    return c


class NvGenerator:
    """A1111's rng_philox.Generator: one randn(shape) per call, the offset growing by one per call."""

    # A1111 writes these constants as float32 numpy arrays; Box-Muller then runs in float64.
    INV32 = float(np.float32(2.3283064e-10))
    INV32_2PI = float(np.float32(2.3283064e-10 * 6.2831855))

    def __init__(self, seed):
        self.seed = seed % 2**64
        self.offset = 0

    def randn(self, shape):
        n = int(np.prod(shape))
        c = np.zeros((4, n), dtype=np.uint64)
        c[0] = self.offset
        c[2] = np.arange(n, dtype=np.uint64)
        self.offset += 1
        g = philox_4x32_10(c, self.seed & 0xFFFFFFFF, self.seed >> 32)
        u = g[0].astype(np.float64) * self.INV32 + float(np.float32(self.INV32) / np.float32(2))
        v = g[1].astype(np.float64) * self.INV32_2PI + float(np.float32(self.INV32_2PI) / np.float32(2))
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)


def nv_section():
    out = {"fresh": [], "sequences": []}
    for seed in SEEDS:
        for size in SIZES:
            out["fresh"].append({"seed": str(seed), "size": size, "values": f32_b64(NvGenerator(seed).randn((size,)))})
    for seed in SEEDS[:2]:
        g = NvGenerator(seed)
        out["sequences"].append({"seed": str(seed), "sizes": [5, 5, 16], "values": [f32_b64(g.randn((n,))) for n in [5, 5, 16]]})
    out["docstring"] = {"seed": "0", "shape": [3, 4], "values": f32_b64(NvGenerator(0).randn((3, 4)))}
    out["big"] = {"seed": "1234", "size": BIG_SIZE, "values": f32_b64(NvGenerator(1234).randn((BIG_SIZE,)))}
    return out


# ---- A1111 ImageRNG (per-image noise, variation seeds, resize, ENSD) --------------------------

def a1111_slerp(val, low, high):
    """A1111's slerp on one image's [C, H, W] noise: norms over dim 1, so per (channel, column)."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageNoise:
    """ImageRNG with the noise source passed in ("CPU" or "NV") instead of read from settings."""

    def __init__(self, source, shape, seeds, subseeds=None, strength=0.0, resize_h=0, resize_w=0, ensd=0):
        self.source, self.shape, self.seeds = source, tuple(shape), seeds
        self.subseeds, self.strength, self.resize_h, self.resize_w, self.ensd = subseeds, strength, resize_h, resize_w, ensd
        self.generators = [self.create(s) for s in seeds]
        self.is_first = True

    def create(self, seed):
        import torch

        return NvGenerator(seed) if self.source == "NV" else torch.Generator("cpu").manual_seed(int(seed))

    def draw(self, shape, generator):
        import torch

        if self.source == "NV":
            return torch.from_numpy(generator.randn(shape))
        return torch.randn(shape, generator=generator)

    def first(self):
        import torch

        shape = self.shape
        noise_shape = shape if self.resize_h <= 0 or self.resize_w <= 0 else (shape[0], self.resize_h // 8, self.resize_w // 8)
        xs = []
        for i, (seed, g) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                subnoise = self.draw(noise_shape, self.create(subseed))
            noise = self.draw(noise_shape, self.create(seed)) if noise_shape != shape else self.draw(shape, g)
            if subnoise is not None:
                noise = a1111_slerp(self.strength, noise, subnoise)
            if noise_shape != shape:
                x = self.draw(shape, g)
                dx = (shape[2] - noise_shape[2]) // 2
                dy = (shape[1] - noise_shape[1]) // 2
                w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
                h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
                tx, ty = max(dx, 0), max(dy, 0)
                dx, dy = max(-dx, 0), max(-dy, 0)
                x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
                noise = x
            xs.append(noise)
        if self.ensd:
            self.generators = [self.create(s + self.ensd) for s in self.seeds]
        return torch.stack(xs)

    def next(self):
        import torch

        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([self.draw(self.shape, g) for g in self.generators])


IMAGE_CASES = [
    {"name": "batch seeds", "seeds": [1234, 1235], "shape": [4, 6, 5], "draws": 3},
    {"name": "variation", "seeds": [1234, 1235], "subseeds": [99, 100], "strength": 0.3, "shape": [4, 6, 5], "draws": 2},
    {"name": "variation, one subseed for two images", "seeds": [7, 8], "subseeds": [99], "strength": 0.75, "shape": [4, 4, 4], "draws": 1},
    {"name": "variation near 0 (lerp branch)", "seeds": [5], "subseeds": [5], "strength": 0.4, "shape": [4, 3, 3], "draws": 1},
    {"name": "ensd", "seeds": [1234, 1235], "ensd": 31337, "shape": [4, 6, 5], "draws": 3},
    {"name": "resize from bigger", "seeds": [42], "resize": [80, 48], "shape": [4, 8, 8], "draws": 2},
    {"name": "resize from smaller + variation", "seeds": [42], "subseeds": [3], "strength": 0.5, "resize": [48, 40], "shape": [4, 8, 8], "draws": 1},
]


def image_section():
    out = []
    for source in ["CPU", "NV"]:
        for case in IMAGE_CASES:
            resize = case.get("resize", [0, 0])
            rng = ImageNoise(source, case["shape"], case["seeds"], case.get("subseeds"), case.get("strength", 0.0), resize[0], resize[1], case.get("ensd", 0))
            draws = [f32_b64(rng.next()) for _ in range(case["draws"])]
            out.append({**case, "source": source, "values": draws})
    return out


def torch_capability():
    import torch

    return torch.__config__.show().split("CPU capability usage:")[1].split()[0]


def main():
    if "--cpu-child" in sys.argv:
        print(json.dumps(torch_cpu_section()))
        return
    data = {
        "about": "Made by test/scripts/make_a1111_rng_fixtures.py with PyTorch 1.13 and numpy; see that script.",
        "cpu": {"avx2": torch_cpu("avx2"), "default": torch_cpu("default")},
        "nv": nv_section(),
        "image": image_section(),
        "imageCpuCapability": torch_capability(),  # the kernel the "image" CPU cases ran on
    }
    with open(OUT, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes); cpu kernels: {data['cpu']['avx2']['capability']}, {data['cpu']['default']['capability']}")
    print("NV seed 0 (3, 4):", NvGenerator(0).randn((3, 4)))


if __name__ == "__main__":
    main()
