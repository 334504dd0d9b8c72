"""Check a hypernetwork .pt and its .optim side file with real PyTorch, as A1111 resumes training:
build the parameters in weights() order (dims in order, k then v, state-dict order inside), load
the optimizer state into torch.optim.AdamW, and report what it holds.

usage: optim_check.py FILE.pt
prints JSON: {"hash_ok": bool, "name": str, "group": {...}, "params": [{"shape", "step", "sum_avg", "sum_sq"}]}
(step and sums null for a parameter the optimizer keeps no state for: one that never had a gradient)
"""
import hashlib
import json
import sys

import torch

pt = sys.argv[1]
net = torch.load(pt, map_location="cpu")
opt_file = torch.load(pt + ".optim", map_location="cpu")
params = []
for dim, pair in net.items():
    if not isinstance(dim, int):
        continue
    for sd in pair:
        for _, t in sd.items():
            params.append(torch.nn.Parameter(t.clone().float()))
opt = torch.optim.AdamW(params)
opt.load_state_dict(opt_file["optimizer_state_dict"])
sha = hashlib.sha256(open(pt, "rb").read()).hexdigest()[:10]
g = opt.param_groups[0]
out = {
    "hash_ok": opt_file["hash"] == sha,
    "name": opt_file["optimizer_name"],
    "group": {"lr": g["lr"], "betas": list(g["betas"]), "eps": g["eps"], "weight_decay": g["weight_decay"]},
    "params": [],
}
for p in params:
    s = opt.state[p]
    if not s:
        out["params"].append({"shape": list(p.shape), "step": None, "sum_avg": None, "sum_sq": None})
        continue
    assert s["exp_avg"].shape == p.shape, (s["exp_avg"].shape, p.shape)
    out["params"].append({"shape": list(p.shape), "step": float(s["step"]), "sum_avg": float(s["exp_avg"].double().sum()), "sum_sq": float(s["exp_avg_sq"].double().sum())})
# one real AdamW step must run with the loaded state
for p in params:
    p.grad = torch.ones_like(p)
opt.step()
print(json.dumps(out))
