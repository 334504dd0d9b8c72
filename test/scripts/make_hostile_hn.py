"""Write the hypernetwork fixtures of test/hostile-hn-files.test.ts with real PyTorch.

Run with Debian's python3-torch (1.13):  /usr/bin/python3 test/scripts/make_hostile_hn.py

- hn-extras.pt: a small AUTOMATIC1111 hypernetwork (dims 8 and 16, layer_structure [1, 2, 1],
  linear) carrying top-level keys A1111 does not interpret, of every kind a pickle distinguishes:
  an AdamW optimizer_state_dict as old A1111 versions stored it in the .pt (tensors, ints, floats,
  tuples, bools, None), an int beyond 2^64, NaN / -0.0 / inf floats, a tuple, an OrderedDict, a
  nested list, and a key that is the bool True. (No bytes: torch.save's pickle protocol 2 writes
  bytes as a call to _codecs.encode, which the safe reader refuses.)
- hn-bigstep.pt: the same network with step = 2**60 + 1, which a float64 cannot hold exactly.
- hn-dupwidth.pt: widths 8 and 16 plus a state dict that names one weight twice, in NovelAI's and
  A1111's spelling ("linear1.weight" and "linear.0.weight"), with different values.
"""
import collections
import os

import torch

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "fixtures")
torch.manual_seed(18)


def save(obj, name):
    path = os.path.join(fixtures, name)
    torch.save(obj, path)
    print("wrote", name, os.path.getsize(path), "bytes")


class Module(torch.nn.Module):
    """A1111's HypernetworkModule layout: the layers live in `self.linear` (keys linear.<i>.*)."""

    def __init__(self, dim):
        super().__init__()
        self.linear = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.Linear(2 * dim, dim))


def module(dim):
    return Module(dim)


def network():
    mods = {dim: (module(dim), module(dim)) for dim in (8, 16)}
    hn = {dim: (k.state_dict(), v.state_dict()) for dim, (k, v) in mods.items()}
    hn.update(
        {
            "step": 40,
            "name": "hn-extras",
            "layer_structure": [1.0, 2.0, 1.0],
            "activation_func": "linear",
            "is_layer_norm": False,
            "weight_initialization": "Normal",
            "sd_checkpoint": "abcdef12",
            "sd_checkpoint_name": "tiny",
            "activate_output": False,
            "use_dropout": False,
            "dropout_structure": [0, 0, 0],
            "last_layer_dropout": False,
            "optional_info": None,
        }
    )
    return hn, mods


hn, mods = network()
params = [p for pair in mods.values() for m in pair for p in m.parameters()]
opt = torch.optim.AdamW(params, lr=5e-3)
sum(p.sum() for p in params).backward()
opt.step()
hn["optimizer_name"] = "AdamW"
hn["optimizer_state_dict"] = opt.state_dict()
hn["huge_int"] = 2**70 + 3
hn["floats"] = [float("nan"), -0.0, float("inf"), 0.1]
hn["pair"] = (1, 2.5, "x")
hn["ordered"] = collections.OrderedDict([("b", 1), ("a", [None, True, {"deep": (False,)}])])
hn[True] = "a bool key"
save(hn, "hn-extras.pt")

big, _ = network()
big["step"] = 2**60 + 1
save(big, "hn-bigstep.pt")

dup, _ = network()
k8 = dict(dup[8][0])
k8["linear1.weight"] = torch.full_like(k8["linear.0.weight"], 7.0)
dup[8] = (k8, dup[8][1])
save(dup, "hn-dupwidth.pt")
