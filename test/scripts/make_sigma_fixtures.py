#!/usr/bin/python3
"""The σ lists A1111 hands its k-diffusion samplers, made by the real code, for test/sigma-lists.test.ts.

    /usr/bin/python3 test/scripts/make_sigma_fixtures.py [--out test/fixtures/sigma-lists.json]

What runs (CPU, torch's default float32, as A1111 with --no-half on a CPU):

- the SD 1.x schedule as CompVis LDM registers it (ldm/models/diffusion/ddpm.py register_schedule
  with make_beta_schedule("linear")): betas = torch.linspace(√0.00085, √0.012, 1000, float64) ** 2,
  turned into numpy, alphas_cumprod = np.cumprod(1 − betas) in float64, then registered as a float32
  tensor (partial(torch.tensor, dtype=torch.float32));
- k-diffusion's CompVisDenoiser(model, quantize=False) over it (the copy of k-diffusion ab527a9, the
  commit A1111 pins, in test/scripts/k_diffusion/): its float32 sigmas and log_sigmas, get_sigmas(n)
  ("Uniform", what "Automatic" means for Euler, Euler a, LMS, Heun, ...), and get_sigmas_karras /
  get_sigmas_exponential from the model's own σ_min/σ_max (`.item()`), as A1111 1.6–1.10's
  KDiffusionSampler.get_sigmas calls them; with discard_next_to_last_sigma (DPM2, DPM2 a) one step
  more, then torch.cat([sigmas[:-2], sigmas[-1:]]);
- sigma_to_t (float32, quantize off) for σ of those lists and random σ: the UNet's timesteps;
- the building blocks on their own: torch.linspace in float32 and float64 and float32 `t ** 7.0`,
  so a mismatch in a σ list can be traced to the operation that caused it.

Every value is written as a Python float (float32 values exactly, as doubles).
"""
import argparse
import json
import math
import os
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# k-diffusion's sampling.py imports torchsde, torchdiffeq, scipy and tqdm at the top; none of them
# is used here, so stand-ins take the place of the ones that are not installed.
def _stub(name, **attrs):
    try:
        __import__(name)
    except ImportError:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


_stub("torchsde")
_stub("torchdiffeq", odeint=None)
_stub("scipy", integrate=None)
_stub("tqdm")
_stub("tqdm.auto", trange=range, tqdm=lambda it=None, **_: it)
sys.path.insert(0, HERE)
from k_diffusion import external, sampling  # noqa: E402

STEPS = [1, 2, 3, 4, 5, 7, 8, 10, 15, 16, 17, 20, 24, 25, 30, 31, 32, 33, 40, 50, 64, 100, 150]
DISCARD_STEPS = [5, 10, 15, 20, 30]


def floats(t):
    return [float(v) for v in t.reshape(-1).tolist()]


def ldm_alphas_cumprod():
    # ldm/modules/diffusionmodules/util.py make_beta_schedule("linear", 1000, 0.00085, 0.012)
    betas = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).numpy()
    # ldm/models/diffusion/ddpm.py register_schedule
    alphas = 1. - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    return torch.tensor(alphas_cumprod, dtype=torch.float32)


class Model:
    def __init__(self):
        self.alphas_cumprod = ldm_alphas_cumprod()


def a1111_sigmas(wrap, schedule, steps, discard):
    """A1111 1.6–1.10 KDiffusionSampler.get_sigmas with default options, on the CPU."""
    steps += 1 if discard else 0
    m_min, m_max = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
    if schedule == "discrete":
        sigmas = wrap.get_sigmas(steps)
    elif schedule == "karras":
        sigmas = sampling.get_sigmas_karras(n=steps, sigma_min=m_min, sigma_max=m_max, device="cpu")
    else:
        sigmas = sampling.get_sigmas_exponential(n=steps, sigma_min=m_min, sigma_max=m_max, device="cpu")
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    assert sigmas.dtype == torch.float32
    return floats(sigmas)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "fixtures", "sigma-lists.json"))
    args = ap.parse_args()
    assert torch.get_default_dtype() == torch.float32

    model = Model()
    wrap = external.CompVisDenoiser(model, quantize=False)
    lists = []
    for schedule in ("discrete", "karras", "exponential"):
        for steps in STEPS:
            lists.append({"schedule": schedule, "steps": steps, "discard": False, "sigmas": a1111_sigmas(wrap, schedule, steps, False)})
        for steps in DISCARD_STEPS:
            lists.append({"schedule": schedule, "steps": steps, "discard": True, "sigmas": a1111_sigmas(wrap, schedule, steps, True)})

    g = torch.Generator().manual_seed(20251205)
    linspace32 = []
    for n in [1, 2, 3, 7, 8, 9, 15, 16, 17, 20, 31, 32, 33, 47, 100, 1000]:
        for a, b in [(0.0, 1.0), (999.0, 0.0), (math.log(14.614643), math.log(0.029168)), (0.3, -7.7)]:
            linspace32.append({"start": a, "end": b, "n": n, "values": floats(torch.linspace(a, b, n))})
    xs = torch.empty(1000).uniform_(0.5, 1.6, generator=g)  # the range of σ^(1/7)
    # sigma_to_t (the UNet's timestep per model call): every σ of a few lists, and random σ
    # across and beyond the table, one element per call as the samplers ask
    qs = [v for c in lists if c["steps"] in (10, 17, 20) for v in c["sigmas"] if v > 0]
    qs += floats(torch.exp(torch.empty(400).uniform_(math.log(0.02), math.log(16.0), generator=g)))
    ts = [float(wrap.sigma_to_t(torch.tensor([q]))[0]) for q in qs]
    out = {
        "about": "made by test/scripts/make_sigma_fixtures.py: CompVis LDM's float32 alphas_cumprod, k-diffusion ab527a9 CompVisDenoiser / get_sigmas_karras / get_sigmas_exponential as A1111 1.6-1.10 calls them, torch "
        + torch.__version__ + " CPU float32",
        "alphasCumprod": floats(model.alphas_cumprod),
        "sigmas": floats(wrap.sigmas),
        "logSigmas": floats(wrap.log_sigmas),
        "lists": lists,
        "linspace32": linspace32,
        "linspace64": floats(torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64)),
        "pow7": {"x": floats(xs), "y": floats(xs ** 7.0)},
        "sigmaToT": {"sigma": qs, "t": ts},
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    print(f"wrote {len(lists)} σ lists to {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
