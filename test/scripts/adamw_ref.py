"""Reference AdamW run with real PyTorch, for test/adamw.test.ts.

Reads JSON on stdin: {"params": [{"shape": [...], "data": [...]}], "steps": [{"lr": float,
"grads": [[...], ...]}], "weight_decay": float}. Runs torch.optim.AdamW (default betas/eps) for the
given steps, setting each step's lr in the param group and the given gradients, and prints JSON
{"params": [[...]], "exp_avg": [[...]], "exp_avg_sq": [[...]], "step": [...]} in PyTorch layout.
"""
import json
import sys

import torch

req = json.load(sys.stdin)
params = [torch.nn.Parameter(torch.tensor(p["data"], dtype=torch.float32).reshape(p["shape"])) for p in req["params"]]
opt = torch.optim.AdamW(params, lr=req["steps"][0]["lr"], weight_decay=req["weight_decay"])
for st in req["steps"]:
    for g in opt.param_groups:
        g["lr"] = st["lr"]
    for p, g in zip(params, st["grads"]):
        p.grad = torch.tensor(g, dtype=torch.float32).reshape(p.shape)
    opt.step()
state = opt.state_dict()["state"]
print(json.dumps({
    "params": [p.detach().reshape(-1).tolist() for p in params],
    "exp_avg": [state[i]["exp_avg"].reshape(-1).tolist() for i in range(len(params))],
    "exp_avg_sq": [state[i]["exp_avg_sq"].reshape(-1).tolist() for i in range(len(params))],
    "step": [float(state[i]["step"]) for i in range(len(params))],
}))
