"""PyTorch twin of `npm run bench` (bench/bench.ts): the same cases, the same JSON lines.

Run with Debian's torch 1.13:  /usr/bin/python3 bench/torch_bench.py [--config FILE.json|tiny|sd15]
    [--batch 4] [--size 32] [--steps 5] [--context-len 77] [--threads 2] [--no-micro] [--device cuda]
    [--sd-shapes]
(`--device cuda` needs torch >= 2.0, e.g. on a GPU machine: every tensor is created there, and each
timed call ends with `.item()`, which waits for the GPU.)

The UNet is the LDM `openaimodel.UNetModel` with SpatialTransformers, written out in plain torch
below (ResBlock, SpatialTransformer = GroupNorm → proj_in → [attn1, attn2, GEGLU ff] → proj_out,
Downsample/Upsample, sinusoidal time embedding), built from the same LDM-named config as the
tfjs side, so both print the same `unet_params`. The hypernetwork is A1111's: for every context
width d a pair of modules x + Linear(2d→d)(ReLU(Linear(d→2d)(x))), one for the keys, one for the
values, applied to the context of every attention layer (self and cross). The training step is the
frozen UNet, ε-MSE at a random timestep, backward, AdamW on the hypernetwork only.
"""
import argparse
import json
import math
import os
import platform
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SD15 = dict(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
            channel_mult=[1, 2, 4, 4], num_heads=8, num_head_channels=-1, transformer_depth=1, context_dim=768,
            use_linear_in_transformer=False, legacy=False)
TINY = dict(in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2], num_res_blocks=1,
            channel_mult=[1, 4, 4], num_heads=-1, num_head_channels=16, transformer_depth=1, context_dim=64,
            use_linear_in_transformer=False, legacy=False)


def load_config(spec, context_len):
    if spec in ("tiny", "sd15"):
        return dict(TINY if spec == "tiny" else SD15), context_len
    with open(spec) as f:
        raw = json.load(f)
    cfg = dict(SD15, num_heads=-1, num_head_channels=-1)
    for k, v in raw.items():
        if k == "context_len":
            context_len = int(v)
        elif k in cfg:
            cfg[k] = v
    if "num_heads" not in raw and "num_head_channels" not in raw:
        cfg["num_heads"] = SD15["num_heads"]
    return cfg, context_len


def heads_for(cfg, ch):
    if cfg["num_head_channels"] == -1:
        return cfg["num_heads"], ch // cfg["num_heads"]
    return ch // cfg["num_head_channels"], cfg["num_head_channels"]


# ---- hypernetwork (A1111) -----------------------------------------------------------------------

class HypernetModule(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        for m in self.linear:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return x + self.linear(x)


class Hypernetwork(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = nn.ModuleDict({str(d): nn.ModuleList([HypernetModule(d), HypernetModule(d)]) for d in dims})

    def apply_kv(self, ctx):
        pair = self.layers[str(ctx.shape[-1])] if str(ctx.shape[-1]) in self.layers else None
        if pair is None:
            return ctx, ctx
        return pair[0](ctx), pair[1](ctx)


# ---- UNet (LDM layout) ----------------------------------------------------------------------------

def norm(c, eps=1e-5):
    return nn.GroupNorm(32, c, eps=eps)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb):
        super().__init__()
        self.in_layers = nn.Sequential(norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(norm(cout), nn.SiLU(), nn.Dropout(0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb, ctx):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    hypernet = None  # set on the class: applied in every attention layer, as A1111 does

    def __init__(self, qdim, cdim, heads, dhead):
        super().__init__()
        inner = heads * dhead
        self.heads, self.scale = heads, dhead ** -0.5
        self.to_q = nn.Linear(qdim, inner, bias=False)
        self.to_k = nn.Linear(cdim, inner, bias=False)
        self.to_v = nn.Linear(cdim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, qdim), nn.Dropout(0))

    def forward(self, x, context=None):
        ctx = x if context is None else context
        ck, cv = CrossAttention.hypernet.apply_kv(ctx) if CrossAttention.hypernet is not None else (ctx, ctx)
        q, k, v = self.to_q(x), self.to_k(ck), self.to_v(cv)
        b, n, _ = q.shape
        h = self.heads
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2).reshape(b * h, t.shape[1], -1) for t in (q, k, v))
        attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * self.scale, dim=-1)
        out = torch.bmm(attn, v).reshape(b, h, n, -1).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.proj = nn.Linear(din, dout * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dhead, cdim):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dhead)
        self.ff = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0), nn.Linear(4 * dim, dim))
        self.attn2 = CrossAttention(dim, cdim, heads, dhead)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, ctx):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), ctx)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, ch, heads, dhead, depth, cdim):
        super().__init__()
        inner = heads * dhead
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dhead, cdim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(inner, ch, 1)

    def forward(self, x, emb, ctx):
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for blk in self.transformer_blocks:
            h = blk(h, ctx)
        h = h.transpose(1, 2).reshape(b, -1, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, emb, ctx):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, emb, ctx):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Conv(nn.Conv2d):
    def forward(self, x, emb, ctx):
        return super().forward(x)


class Stage(nn.ModuleList):
    def forward(self, x, emb, ctx):
        for layer in self:
            x = layer(x, emb, ctx)
        return x


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class UNetModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        mc, emb = cfg["model_channels"], 4 * cfg["model_channels"]
        self.mc = mc
        width = lambda lvl: mc * cfg["channel_mult"][lvl]
        st = lambda ch: SpatialTransformer(ch, *heads_for(cfg, ch), cfg["transformer_depth"], cfg["context_dim"])
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([Stage([Conv(cfg["in_channels"], mc, 3, padding=1)])])
        skips, ch, ds, levels = [mc], mc, 1, len(cfg["channel_mult"])
        for lvl in range(levels):
            for _ in range(cfg["num_res_blocks"]):
                layers = [ResBlock(ch, width(lvl), emb)]
                ch = width(lvl)
                if ds in cfg["attention_resolutions"]:
                    layers.append(st(ch))
                self.input_blocks.append(Stage(layers))
                skips.append(ch)
            if lvl != levels - 1:
                self.input_blocks.append(Stage([Downsample(ch)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Stage([ResBlock(ch, ch, emb), st(ch), ResBlock(ch, ch, emb)])
        self.output_blocks = nn.ModuleList()
        for lvl in reversed(range(levels)):
            for i in range(cfg["num_res_blocks"] + 1):
                layers = [ResBlock(ch + skips.pop(), width(lvl), emb)]
                ch = width(lvl)
                if ds in cfg["attention_resolutions"]:
                    layers.append(st(ch))
                if lvl and i == cfg["num_res_blocks"]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Stage(layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(mc, cfg["out_channels"], 3, padding=1))

    def forward(self, x, t, ctx):
        emb = self.time_embed(timestep_embedding(t, self.mc))
        hs, h = [], x
        for blk in self.input_blocks:
            h = blk(h, emb, ctx)
            hs.append(h)
        h = self.middle_block(h, emb, ctx)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, hs.pop()], 1), emb, ctx)
        return self.out(h)


# ---- the benchmark -------------------------------------------------------------------------------

def sd_alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def timed(fn, runs, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    s = sorted(ts)
    return s[len(s) // 2], s[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="test/fixtures/ldm-tiny.config.json")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--context-len", type=int, default=77)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (needs torch >= 2.0: every tensor is made there)")
    ap.add_argument("--sd-shapes", action="store_true", help="also the micro-benchmarks at SD 1.5's sizes (as bench.ts --sd-shapes)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device != "cpu":
        torch.set_default_device(a.device)  # modules, inputs and the micro cases all live there
    torch.manual_seed(0)
    cfg, clen = load_config(a.config, a.context_len)
    where = (f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}, fp32 (cuDNN TF32 convs: {torch.backends.cudnn.allow_tf32})"
             if a.device.startswith("cuda") else f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    base = dict(backend="pytorch", device=where,
                host=f"{os.cpu_count()}x {platform.processor() or 'cpu'}, load {os.getloadavg()[0]:.2f}")

    unet = UNetModel(cfg).eval().requires_grad_(False)
    dims = sorted({m.to_k.in_features for m in unet.modules() if isinstance(m, CrossAttention)})
    hn = Hypernetwork(dims)
    CrossAttention.hypernet = hn
    opt = torch.optim.AdamW(hn.parameters(), lr=1e-5)
    acp = sd_alphas_cumprod()
    x0 = torch.randn(a.batch, cfg["in_channels"], a.size, a.size)
    cond = torch.randn(a.batch, clen, cfg["context_dim"])

    def train_step():
        t = torch.randint(0, 1000, (a.batch,))
        noise = torch.randn_like(x0)
        ab = acp[t][:, None, None, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        loss = F.mse_loss(unet(xt, t, cond), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    def sample_step():
        with torch.no_grad():
            t = torch.randint(0, 1000, (a.batch,))
            unet(x0, t, cond).sum().item()

    tm, tmin = timed(train_step, a.steps)
    sm, smin = timed(sample_step, a.steps)
    print(json.dumps(dict(base, case="unet_step", config=a.config, batch=a.batch, size=a.size, context_len=clen,
                          unet_params=sum(p.numel() for p in unet.parameters()),
                          hypernet_params=sum(p.numel() for p in hn.parameters()),
                          train_step_ms=round(tm, 1), train_step_min_ms=round(tmin, 1),
                          sample_step_ms=round(sm, 1), sample_step_min_ms=round(smin, 1),
                          peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))))
    CrossAttention.hypernet = None
    if a.no_micro and not a.sd_shapes:
        return

    runs = max(3, a.steps)

    def report(name, gflop, fn):
        m, mn = timed(fn, runs)
        print(json.dumps(dict(base, case=name, median_ms=round(m, 1), min_ms=round(mn, 1), gflops=round(gflop / (m / 1000), 1))))

    if a.sd_shapes:
        micro_sd(report)
    if a.no_micro:
        return

    A, B = torch.randn(512, 512), torch.randn(512, 512)
    with torch.no_grad():
        report("matmul_512", 0.268, lambda: (A @ B).sum().item())
    x = torch.randn(1, 128, 64, 64)
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False)
    with torch.no_grad():
        report("conv_fwd", 1.208, lambda: conv(x).sum().item())
    xr = x.clone().requires_grad_(True)

    def conv_bwd():
        conv.zero_grad(set_to_none=True)
        xr.grad = None
        conv(xr).square().mean().backward()
        xr.grad.sum().item()  # wait for the result (on a GPU, the backward is asynchronous)
    report("conv_fwd_bwd", 3.62, conv_bwd)
    attn = CrossAttention(128, 256, 4, 32)
    q, c = torch.randn(4, 256, 128), torch.randn(4, 77, 256)
    with torch.no_grad():
        report("attention_fwd", 0.148, lambda: attn(q, c).sum().item())
    qr = q.clone().requires_grad_(True)

    def attn_bwd():
        attn.zero_grad(set_to_none=True)
        qr.grad = None
        attn(qr, c).square().mean().backward()
        qr.grad.sum().item()
    report("attention_fwd_bwd", 0.444, attn_bwd)


def micro_sd(report):
    """SD 1.5's own sizes, as bench.ts --sd-shapes: the 64x64x320 3x3 conv, one head's attention
    products at 4,096 tokens (head width 40 and 64), the feed-forward linears. FLOPs are 2*MACs."""
    gf = lambda macs: 2 * macs / 1e9
    x = torch.randn(1, 320, 64, 64)
    conv = nn.Conv2d(320, 320, 3, padding=1, bias=False)
    cf = gf(64 * 64 * 320 * 320 * 9)
    with torch.no_grad():
        report("sd_conv3x3_64x64x320_fwd", cf, lambda: conv(x).sum().item())
    xr = x.clone().requires_grad_(True)

    def conv_bwd():
        conv.zero_grad(set_to_none=True)
        xr.grad = None
        conv(xr).square().mean().backward()
        xr.grad.sum().item()
    report("sd_conv3x3_64x64x320_fwd_bwd", 3 * cf, conv_bwd)
    with torch.no_grad():
        for d in (40, 64):
            q, kt, v = torch.randn(1, 4096, d), torch.randn(1, d, 4096), torch.randn(1, 4096, d)
            p = torch.softmax(torch.randn(1, 4096, 4096), -1)
            report(f"sd_attn_qk_4096_d{d}", gf(4096 * 4096 * d), lambda: (q @ kt).sum().item())
            report(f"sd_attn_pv_4096_d{d}", gf(4096 * 4096 * d), lambda: (p @ v).sum().item())
        h, up, g, down = torch.randn(4096, 320), torch.randn(320, 1280), torch.randn(4096, 1280), torch.randn(1280, 320)
        report("sd_linear_4096x320x1280", gf(4096 * 320 * 1280), lambda: (h @ up).sum().item())
        report("sd_linear_4096x1280x320", gf(4096 * 1280 * 320), lambda: (g @ down).sum().item())


if __name__ == "__main__":
    main()
