"""Reference runs of A1111's samplers on a toy ε-model, for test/ksamplers.test.ts.

    /usr/bin/python3 test/scripts/make_ksampler_fixtures.py --a1111 DIR [--out test/fixtures/ksamplers.json]

What runs is the real sampling code, driven the way A1111 1.6-1.10 drives it:

- k-diffusion's sample_* functions and CompVisDenoiser (quantize off), from the copy of
  k-diffusion ab527a9 (the commit A1111 pins) in test/scripts/k_diffusion/ (MIT);
- A1111's DDIM / PLMS / UniPC (modules/sd_samplers_timesteps_impl.py and
  modules/models/diffusion/uni_pc/uni_pc.py) imported from an A1111 checkout given with --a1111
  (AGPL, so not copied into this repository). A directory holding only those two files under
  modules/ is enough: this script supplies modules/shared.py's sampler options (A1111's defaults:
  UniPC variant bh1, time_uniform, order 3, lower order final) when the checkout has no shared.py
  it can import.

The glue that A1111 puts around them is restated here in a few lines each, from
modules/sd_samplers_kdiffusion.py / sd_samplers_timesteps.py / sd_samplers_cfg_denoiser.py:
get_sigmas (Automatic = the denoiser's get_sigmas, Karras ρ = 7 and Exponential from the model's
own σ_min/σ_max, the next-to-last σ discarded for DPM2 / DPM2 a), x = noise·σ₀ for k-diffusion and
x = noise for the timestep samplers, eta = 1 for the ancestral/SDE samplers (eta_ancestral), CFG
combined as uncond + (cond − uncond)·scale, and get_timesteps (range(0, 1000, 1000 // steps) + 1).

The model's alphas_cumprod is LDM's float32 buffer (numpy's float64 cumprod registered as float32,
ddpm.py register_schedule), and the σ lists are made from it in float32 as A1111 makes them
(k-diffusion's CompVisDenoiser and get_sigmas_* under torch's default float32), so they are
A1111's lists exactly. From there everything is float64 (torch's default dtype is switched), so
the sampling is the exact answer for those lists up to float64 rounding. Noise is pre-drawn and handed out in call order: the ancestral samplers'
randn_like draws and DDIM's noise come from it (as A1111's per-image generator would give them),
and so do the Brownian-tree draws of DPM++ SDE / DPM++ 2M SDE: torchsde is not available here,
so k-diffusion's BrownianTreeNoiseSampler is replaced by this recorder in both implementations
(each (σ, σ_next) it is asked for is recorded, so the TypeScript side can check the requests).

The toy model (per image, on the 16 values v of a 1×4×4 latent, t the model's timestep, c = +1 for
the prompt and −1 for the negative prompt):  ε = 0.5·tanh(A·v) + 0.1·cos(t/300)·v + 0.05·sin(t/200) + 0.03·c
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

# k-diffusion's sampling.py imports torchsde and torchdiffeq at the top; neither is used on the
# paths exercised here (the Brownian tree is replaced, log_likelihood is not called). tqdm (progress
# bars, here always disabled) gets a stand-in when it is not installed.
sys.modules.setdefault("torchsde", types.ModuleType("torchsde"))
_tde = types.ModuleType("torchdiffeq")
_tde.odeint = None
sys.modules.setdefault("torchdiffeq", _tde)
try:
    import tqdm  # noqa: F401
except ImportError:
    _tqdm = types.ModuleType("tqdm")
    _tqdm.trange = lambda *a, **_: range(*a)
    _tqdm.tqdm = lambda it=None, **_: it
    _tqdm.auto = _tqdm
    sys.modules["tqdm"] = sys.modules["tqdm.auto"] = _tqdm
sys.path.insert(0, HERE)
from k_diffusion import sampling, external  # noqa: E402

torch.set_default_dtype(torch.float64)

SHAPE_NCHW = (2, 1, 4, 4)
CFG_SCALE = 5.0


def sd15_alphas_cumprod(dtype=torch.float64):
    # LDM make_beta_schedule("linear") and register_schedule: betas = linspace(√0.00085, √0.012,
    # 1000, float64)² as numpy, ᾱ = np.cumprod(1 − β), registered as a float32 buffer
    betas = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).numpy()
    return torch.tensor(np.cumprod(1. - betas, axis=0), dtype=torch.float32).to(dtype)


class ToyLDM:
    """Plays the LatentDiffusion model: alphas_cumprod and apply_model(x, t, cond) → ε."""

    def __init__(self, A):
        self.alphas_cumprod = sd15_alphas_cumprod()
        self.A = A
        self.calls = []

    def apply_model(self, x, t, cond):
        self.calls.append([float(v) for v in t.reshape(-1)])
        n = x.shape[0]
        v = x.reshape(n, -1)
        t = t.reshape(n, 1).to(torch.float64)
        eps = 0.5 * torch.tanh(v @ self.A.T) + 0.1 * torch.cos(t / 300) * v + 0.05 * torch.sin(t / 200) + 0.03 * cond.reshape(n, 1)
        return eps.reshape(x.shape)


def cfg(inner, x, s, cond, uncond, scale):
    """A1111's CFGDenoiser: one batch [x, x] with [cond, uncond], then uncond + (cond − uncond)·scale."""
    out = inner(torch.cat([x, x]), torch.cat([s, s]), cond=torch.cat([cond, uncond]))
    c, u = out.chunk(2)
    return u + (c - u) * scale


class NoiseFeed:
    """Hands out the pre-drawn noise in call order and records what each call asked for."""

    def __init__(self, draws):
        self.draws = draws
        self.used = 0
        self.requests = []

    def next(self):
        d = self.draws[self.used]
        self.used += 1
        return d.clone()

    def __call__(self, sigma, sigma_next):  # a k-diffusion noise_sampler
        self.requests.append([float(sigma), float(sigma_next)])
        return self.next()


class TorchHijack:
    """A1111's TorchHijack: k_diffusion.sampling.torch.randn_like comes from the image generator."""

    def __init__(self, feed):
        self.feed = feed

    def __getattr__(self, item):
        if item == "randn_like":
            return lambda x: self.feed.next()
        return getattr(torch, item)


# A1111 1.10 samplers_k_diffusion: name → (function, default scheduler, discard_next_to_last_sigma, noise source)
K_SAMPLERS = {
    "Euler a": ("sample_euler_ancestral", None, False, "randn"),
    "Euler": ("sample_euler", None, False, None),
    "LMS": ("sample_lms", None, False, None),
    "Heun": ("sample_heun", None, False, None),
    "DPM2": ("sample_dpm_2", "karras", True, None),
    "DPM2 a": ("sample_dpm_2_ancestral", "karras", True, "randn"),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "karras", False, "randn"),
    "DPM++ 2M": ("sample_dpmpp_2m", "karras", False, None),
    "DPM++ SDE": ("sample_dpmpp_sde", "karras", False, "brownian"),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "exponential", False, "brownian"),
}


def float32_denoiser(A):
    """CompVisDenoiser as A1111 builds it: over the float32 ᾱ buffer, computing in float32."""
    torch.set_default_dtype(torch.float32)
    try:
        ldm = ToyLDM(A)
        ldm.alphas_cumprod = sd15_alphas_cumprod(torch.float32)
        return external.CompVisDenoiser(ldm, quantize=False)
    finally:
        torch.set_default_dtype(torch.float64)


def a1111_sigmas(wrap32, steps, schedule, discard):
    """KDiffusionSampler.get_sigmas with default options, in float32 as A1111 (then as float64)."""
    torch.set_default_dtype(torch.float32)
    try:
        return _a1111_sigmas(wrap32, steps, schedule, discard)
    finally:
        torch.set_default_dtype(torch.float64)


def _a1111_sigmas(wrap, steps, schedule, discard):
    steps += 1 if discard else 0
    m_min, m_max = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
    if schedule == "discrete":
        sigmas = wrap.get_sigmas(steps)
    elif schedule == "karras":
        sigmas = sampling.get_sigmas_karras(n=steps, sigma_min=m_min, sigma_max=m_max)
    elif schedule == "exponential":
        sigmas = sampling.get_sigmas_exponential(n=steps, sigma_min=m_min, sigma_max=m_max)
    else:
        raise ValueError(schedule)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.to(torch.float64)


def run_k(name, schedule, steps, A, noise, cond, uncond):
    funcname, _, discard, source = K_SAMPLERS[name]
    ldm = ToyLDM(A)
    wrap = external.CompVisDenoiser(ldm, quantize=False)
    sigmas = a1111_sigmas(float32_denoiser(A), steps, schedule, discard)
    feed = NoiseFeed(noise)
    x = feed.next() * sigmas[0]
    model = lambda x, s, cond, uncond, scale: cfg(wrap, x, s, cond, uncond, scale)  # noqa: E731
    kwargs = {}
    if source is not None:
        kwargs["noise_sampler"] = feed
        kwargs["eta"] = 1.0
    denoised = []
    cb = lambda d: denoised.append(d["denoised"].reshape(-1).tolist())  # noqa: E731
    func = getattr(sampling, funcname)
    out = func(model, x, sigmas, extra_args={"cond": cond, "uncond": uncond, "scale": CFG_SCALE}, callback=cb, disable=True, **kwargs)
    return {
        "sampler": name, "schedule": schedule, "steps": steps,
        "sigmas": sigmas.tolist(),
        "calls": [c[0] for c in ldm.calls],
        "noiseUsed": feed.used, "noiseRequests": feed.requests if source == "brownian" else [],
        "denoised": denoised,
        "x": out.reshape(-1).tolist(),
    }


def a1111_timesteps(steps):
    """CompVisSampler.get_timesteps."""
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def run_timesteps(impl, name, steps, A, noise, cond, uncond, eta=None):
    ldm = ToyLDM(A)

    class Inner:
        inner_model = ldm

    class Model:  # CFGDenoiserTimesteps over CompVisTimestepsDenoiser: ε out, CFG on ε
        inner_model = Inner

        def __call__(self, x, t, cond, uncond, scale):
            out = ldm.apply_model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))
            c, u = out.chunk(2)
            return u + (c - u) * scale

    feed = NoiseFeed(noise)
    sampling.torch = TorchHijack(feed)
    x = feed.next()
    ts = a1111_timesteps(steps)
    denoised = []
    # UniPC reports no x̂₀ after its last step (it skips that model call): None there
    cb = lambda d: denoised.append(None if d["denoised"] is None else d["denoised"].reshape(-1).tolist())  # noqa: E731
    extra = {"cond": cond, "uncond": uncond, "scale": CFG_SCALE}
    fn = {"DDIM": impl.ddim, "PLMS": impl.plms, "UniPC": impl.unipc}[name]
    kwargs = {"eta": eta} if eta is not None else {}
    out = fn(Model(), x, ts, extra_args=extra, callback=cb, disable=True, **kwargs)
    sampling.torch = torch
    case = {
        "sampler": name, "schedule": "timesteps", "steps": steps, "timesteps": ts.tolist(),
        "calls": [c[0] for c in ldm.calls], "noiseUsed": feed.used, "noiseRequests": [],
        "denoised": denoised, "x": out.reshape(-1).tolist(),
    }
    if eta is not None:
        case["eta"] = eta
    return case


def load_a1111(root):
    sys.path.insert(0, root)
    try:
        import modules.shared  # noqa: F401
    except Exception:
        shared = types.ModuleType("modules.shared")
        shared.opts = types.SimpleNamespace(uni_pc_variant="bh1", uni_pc_skip_type="time_uniform", uni_pc_order=3, uni_pc_lower_order_final=True)
        sys.modules["modules.shared"] = shared
    import modules.sd_samplers_timesteps_impl as impl
    return impl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a1111", required=True, help="A1111 checkout (or a folder with its modules/sd_samplers_timesteps_impl.py and modules/models/diffusion/uni_pc/uni_pc.py)")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "fixtures", "ksamplers.json"))
    args = ap.parse_args()
    impl = load_a1111(args.a1111)

    g = torch.Generator().manual_seed(20240521)
    A = torch.randn(16, 16, generator=g) / 4.0
    noise = [torch.randn(SHAPE_NCHW, generator=g) for _ in range(48)]
    cond = torch.ones(SHAPE_NCHW[0])
    uncond = -torch.ones(SHAPE_NCHW[0])

    cases = []
    for name in K_SAMPLERS:
        for schedule in ("discrete", "karras", "exponential"):
            cases.append(run_k(name, schedule, 8, A, noise, cond, uncond))
    cases.append(run_k("DPM++ 2M", "karras", 10, A, noise, cond, uncond))
    cases.append(run_k("DPM++ SDE", "karras", 10, A, noise, cond, uncond))
    for name in ("DDIM", "PLMS", "UniPC"):
        for steps in (8, 10, 12):
            cases.append(run_timesteps(impl, name, steps, A, noise, cond, uncond))
    cases.append(run_timesteps(impl, "DDIM", 10, A, noise, cond, uncond, eta=0.5))

    # the schedule as the k-diffusion denoiser sees it, for the σ and t checks
    wrap = external.CompVisDenoiser(ToyLDM(A), quantize=False)
    wrap32 = float32_denoiser(A)
    probe = torch.tensor([14.0, 3.3, 1.0, 0.2, 0.05, 0.03])
    out = {
        "about": "made by test/scripts/make_ksampler_fixtures.py: k-diffusion ab527a9 and A1111's timestep samplers on a toy eps-model, LDM's float32 alphas_cumprod, A1111's float32 sigma lists, sampling in float64",
        "shapeNHWC": [SHAPE_NCHW[0], SHAPE_NCHW[2], SHAPE_NCHW[3], SHAPE_NCHW[1]],
        "cfgScale": CFG_SCALE,
        "A": A.reshape(-1).tolist(),
        "noise": [n.reshape(-1).tolist() for n in noise],
        "sigmaMin": wrap32.sigmas[0].item(), "sigmaMax": wrap32.sigmas[-1].item(),
        "sigmaToT": {"sigma": probe.tolist(), "t": wrap.sigma_to_t(probe).tolist()},
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    print(f"wrote {len(cases)} cases to {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
