"""Reference Brownian-tree noise and DPM++ SDE runs as A1111 makes them, for test/brownian.test.ts.

    /usr/bin/python3 test/scripts/make_brownian_fixtures.py --torchsde DIR [--out test/fixtures/brownian.json]

DIR is a checkout of torchsde (google-research/torchsde; the code A1111 installs, version 0.2.6).
torchsde imports the small `trampoline` package; when it is not installed, this script supplies
an equivalent (a generator-stack runner with a TailCall exception, as that package defines it).

What runs is the real code: torchsde's BrownianTree under k-diffusion's BrownianTreeNoiseSampler
(the copy of k-diffusion ab527a9, the commit A1111 pins, in test/scripts/k_diffusion/), seeded the
way A1111's KDiffusionSampler.create_noise_sampler seeds it: one tree per image, entropy = that
image's seed (p.all_seeds), over [smallest σ > 0, largest σ] of the run, on the CPU in float32
(A1111 on a CPU, --no-half). The fixture holds:

- seedSequence: numpy SeedSequence(entropy, spawn_key, pool_size=24).generate_state(4) for a few
  inputs (torchsde derives every node's torch seed this way);
- noise: BrownianTreeNoiseSampler(x, σ_min, σ_max, seed=[...]) answers for lists of (σ, σ_next)
  queries, the latent in A1111's NCHW layout, all values float32;
- runs: whole sample_dpmpp_sde / sample_dpmpp_2m_sde runs in float32 on a toy ε-model (the one of
  make_ksampler_fixtures.py, here on a 4×2×2 latent read in NCHW order), with A1111's per-image
  CPU noise (torch.randn([4, 2, 2], generator=Generator().manual_seed(seed))), CFG, Karras or
  exponential σ from the model's own σ_min/σ_max, η = 1; each run records its σ list, every noise
  request (σ, σ_next) as float32 values, and the final latent.
- karras20: the float32 Karras σ list of 20 steps for the SD 1.x schedule, as A1111 computes it.
- f32math: torch.log / torch.exp of 3000 float32 values each, one element per call (what the
  machine's torch CPU kernel gives: SLEEF's 1-ulp functions on AVX2).
"""
import argparse
import json
import math
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def install_trampoline():
    try:
        import trampoline  # noqa: F401
        return
    except ImportError:
        pass
    mod = types.ModuleType("trampoline")

    class TailCall(BaseException):
        def __init__(self, call):
            self.call = call

    def run(gen):
        stack, ret, exc = [gen], None, None
        while stack:
            cur = stack[-1]
            try:
                nxt = cur.throw(exc) if exc is not None else cur.send(ret)
                stack.append(nxt)
                ret, exc = None, None
            except StopIteration as e:
                stack.pop()
                ret, exc = e.value, None
            except TailCall as t:
                stack[-1] = t.call
                ret, exc = None, None
            except BaseException as e:  # noqa: BLE001 - handed to the caller generator
                stack.pop()
                ret, exc = None, e
        if exc is not None:
            raise exc
        return ret

    mod.TailCall = TailCall
    mod.trampoline = run
    sys.modules["trampoline"] = mod


def f32list(t):
    return [float(v) for v in t.reshape(-1).tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--torchsde", required=True, help="checkout of google-research/torchsde")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "fixtures", "brownian.json"))
    args = ap.parse_args()
    install_trampoline()
    sys.path.insert(0, args.torchsde)
    import numpy as np
    import torch
    import torchsde  # noqa: F401  (the real one, before k-diffusion imports it)

    _tde = types.ModuleType("torchdiffeq")
    _tde.odeint = None
    sys.modules.setdefault("torchdiffeq", _tde)
    sys.path.insert(0, HERE)
    from k_diffusion import external, sampling

    torch.set_default_dtype(torch.float32)

    # numpy SeedSequence, as torchsde's nodes use it
    seed_seq = []
    for entropy, key in [(0, None), (1234, None), (4294967295, None), (2**40 + 5, None), (1234, (0, 0)), (1234, (1, 1)), (7, (5, 3)), (3000000000, (123456, 17))]:
        ss = np.random.SeedSequence(entropy=entropy, pool_size=24) if key is None else np.random.SeedSequence(entropy=entropy, spawn_key=key, pool_size=24)
        seed_seq.append({"entropy": str(entropy), "spawnKey": list(key) if key else None, "state": [int(v) for v in ss.generate_state(4)]})

    # Noise-sampler answers for query lists
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    noise_cases = []

    def noise_case(seeds, chw, smin, smax, queries):
        x = torch.zeros((len(seeds), *chw))
        ns = sampling.BrownianTreeNoiseSampler(x, f32(smin), f32(smax), seed=list(seeds))
        answers = []
        for a, b in queries:
            answers.append(f32list(ns(f32(a), f32(b))))
        noise_cases.append({
            "seeds": list(seeds), "shapeCHW": list(chw),
            "sigmaMin": float(f32(smin)), "sigmaMax": float(f32(smax)),
            "queries": [[float(f32(a)), float(f32(b))] for a, b in queries],
            "noise": answers,
        })

    noise_case([1234, 1235], (4, 2, 2), 0.0291675, 14.614642, [(14.614642, 9.7), (9.7, 3.1), (3.1, 3.0), (2.5, 0.9), (0.9, 0.0291675), (0.5, 1.5)])
    noise_case([4294967295], (1, 1, 20), 0.1, 10.0, [(10.0, 5.0), (7.3, 7.2999), (1.0, 0.1), (6.0, 2.0)])
    noise_case([31337], (3, 1, 3), 0.03, 14.6, [(14.6, 0.03), (5.5, 5.25)])  # 9 values: torch's small-draw path
    noise_case([2**33 + 17], (4, 3, 3), 0.02, 20.0, [(20.0, 11.0), (11.0, 0.02)])

    # Whole runs on a toy model
    alphas = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2)
    alphas_cumprod = torch.cumprod(1.0 - alphas, dim=0).to(torch.float32)  # LDM registers it as float32

    g = torch.Generator().manual_seed(20240521)
    A = torch.randn(16, 16, generator=g, dtype=torch.float64).to(torch.float32) / 4.0

    class ToyLDM:
        def __init__(self):
            self.alphas_cumprod = alphas_cumprod

        def apply_model(self, x, t, cond):
            n = x.shape[0]
            v = x.reshape(n, -1)
            t = t.reshape(n, 1).to(torch.float32)
            eps = 0.5 * torch.tanh(v @ A.T) + 0.1 * torch.cos(t / 300) * v + 0.05 * torch.sin(t / 200) + 0.03 * cond.reshape(n, 1)
            return eps.reshape(x.shape)

    cfg_scale = 5.0
    runs = []

    def run(funcname, name, schedule, steps, seeds):
        wrap = external.CompVisDenoiser(ToyLDM(), quantize=False)
        m_min, m_max = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
        if schedule == "karras":
            sigmas = sampling.get_sigmas_karras(n=steps, sigma_min=m_min, sigma_max=m_max)
        else:
            sigmas = sampling.get_sigmas_exponential(n=steps, sigma_min=m_min, sigma_max=m_max)
        chw = (4, 2, 2)
        noise = torch.stack([torch.randn(chw, generator=torch.Generator().manual_seed(s)) for s in seeds])
        x = noise * sigmas[0]
        inner = sampling.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=list(seeds))
        requests = []

        def ns(s, sn):
            requests.append([float(s), float(sn)])
            return inner(s, sn)

        cond = torch.ones(len(seeds))
        uncond = -torch.ones(len(seeds))

        def model(x, s):
            out = wrap(torch.cat([x, x]), torch.cat([s, s]), cond=torch.cat([cond, uncond]))
            c, u = out.chunk(2)
            return u + (c - u) * cfg_scale

        out = getattr(sampling, funcname)(model, x, sigmas, disable=True, eta=1.0, noise_sampler=ns)
        runs.append({
            "sampler": name, "schedule": schedule, "steps": steps, "seeds": list(seeds), "shapeCHW": list(chw),
            "sigmas": f32list(sigmas), "initialNoise": f32list(noise), "requests": requests, "x": f32list(out),
        })

    run("sample_dpmpp_sde", "DPM++ SDE", "karras", 10, [1234, 1235])
    run("sample_dpmpp_sde", "DPM++ SDE", "karras", 6, [98765])
    run("sample_dpmpp_2m_sde", "DPM++ 2M SDE", "karras", 10, [1234, 1235])
    run("sample_dpmpp_2m_sde", "DPM++ 2M SDE", "exponential", 8, [42])

    # The SD 1.x float32 σ list for 20 Karras steps, as A1111 computes it (for the σ-list check)
    wrap = external.CompVisDenoiser(ToyLDM(), quantize=False)
    karras20 = sampling.get_sigmas_karras(n=20, sigma_min=wrap.sigmas[0].item(), sigma_max=wrap.sigmas[-1].item())

    # torch's float32 log / exp, one element at a time as the samplers call them
    xs = torch.exp(torch.empty(3000, dtype=torch.float64).uniform_(math.log(0.01), math.log(20.0), generator=g)).to(torch.float32)
    ts = torch.empty(3000, dtype=torch.float64).uniform_(-3.1, 4.7, generator=g).to(torch.float32)
    f32math = {
        "x": f32list(xs), "log": [float(torch.log(v)) for v in xs],
        "t": f32list(ts), "exp": [float(torch.exp(v)) for v in ts],
    }

    out = {
        "about": "made by test/scripts/make_brownian_fixtures.py: torchsde BrownianTree under k-diffusion ab527a9's BrownianTreeNoiseSampler, seeded as A1111, CPU float32",
        "cfgScale": cfg_scale,
        "A": f32list(A),
        "seedSequence": seed_seq,
        "noise": noise_cases,
        "runs": runs,
        "karras20": f32list(karras20),
        "f32math": f32math,
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    print(f"wrote {len(noise_cases)} noise cases and {len(runs)} runs to {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
