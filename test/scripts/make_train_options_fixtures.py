"""Reference numbers for the training options beyond A1111, written with real PyTorch 1.13.

Writes test/fixtures/train-options.json (run: /usr/bin/python3 test/scripts/make_train_options_fixtures.py):
  - "cosine": torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=3, T_mult=2, eta_min=1e-5)
    on base lr 1e-3: the lr of each of 25 optimizer steps (read before each step);
  - "adamw": torch.optim.AdamW with betas (0.8, 0.95), eps 1e-4, weight_decay 0.05 over 4 steps with
    changing lr, on two small tensors (PyTorch layout), with the gradients used;
  - "clip": torch.nn.utils.clip_grad_norm_ with max_norm 0.7 and norm_type 1, 3, inf and 2 on the same
    gradients: the returned total norm and the clipped gradients;
  - "minsnr": min-SNR-γ weights as kohya's apply_snr_weight computes them (all_snr = (√ᾱ/√(1−ᾱ))²
    from SD's scaled-linear betas), γ = 5, for ε- and v-prediction at a few timesteps.
"""
import json
import math
import os

import torch

torch.manual_seed(0)
out = {}

# cosine annealing with warm restarts
p = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.SGD([p], lr=1e-3)
sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2, eta_min=1e-5)
lrs = []
for _ in range(25):
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
out["cosine"] = {"base_lr": 1e-3, "T_0": 3, "T_mult": 2, "eta_min": 1e-5, "lrs": lrs}

# AdamW with non-default hyper-parameters
shapes = [[3, 2], [4]]
params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
init = [q.detach().clone().reshape(-1).tolist() for q in params]
opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.95), eps=1e-4, weight_decay=0.05)
steps = []
for lr in [1e-2, 3e-2, 5e-3, 2e-2]:
    grads = [torch.randn(s) * 0.3 for s in shapes]
    for g in opt.param_groups:
        g["lr"] = lr
    for q, g in zip(params, grads):
        q.grad = g.clone()
    opt.step()
    steps.append({"lr": lr, "grads": [g.reshape(-1).tolist() for g in grads]})
out["adamw"] = {
    "betas": [0.8, 0.95],
    "eps": 1e-4,
    "weight_decay": 0.05,
    "shapes": shapes,
    "init": init,
    "steps": steps,
    "params": [q.detach().reshape(-1).tolist() for q in params],
}

# clip_grad_norm_ with p-norms
gshapes = [[2, 3], [5]]
grads = [torch.randn(s) for s in gshapes]
clip = {"shapes": gshapes, "grads": [g.reshape(-1).tolist() for g in grads], "max_norm": 0.7, "cases": []}
for nt in [1.0, 3.0, math.inf, 2.0]:
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in gshapes]
    for q, g in zip(ps, grads):
        q.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(ps, 0.7, norm_type=nt)
    clip["cases"].append({
        "norm_type": "inf" if nt == math.inf else nt,
        "total_norm": float(total),
        "clipped": [q.grad.reshape(-1).tolist() for q in ps],
    })
out["clip"] = clip

# min-SNR-γ weights (kohya: library/custom_train_functions.py prepare_scheduler_for_custom_training + apply_snr_weight)
betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
ac = torch.cumprod(1.0 - betas, dim=0)
all_snr = (torch.sqrt(ac) / torch.sqrt(1.0 - ac)) ** 2
ts = [0, 1, 10, 100, 300, 500, 700, 999]
snr = all_snr[ts]
gamma = 5.0
mins = torch.minimum(snr, torch.full_like(snr, gamma))
out["minsnr"] = {
    "gamma": gamma,
    "t": ts,
    "snr": snr.tolist(),
    "epsilon": (mins / snr).tolist(),
    "v": (mins / (snr + 1)).tolist(),
}

path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "train-options.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print("wrote", os.path.normpath(path))
