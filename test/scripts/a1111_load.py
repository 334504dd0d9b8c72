"""Load a hypernetwork .pt the way AUTOMATIC1111's loader does, with real PyTorch, and run it.

Used by the tests as an independent check that files written by hypernet-lab are what A1111
expects: the dict layout, the metadata defaults, the Sequential index layout (strict
load_state_dict), and the module outputs. The module construction below follows the rules in
the reference spec (§1.3–§1.8, §2.4); it is written for this project, not copied.

usage: a1111_load.py FILE.pt INPUT.bin DIM MULTIPLIER
  INPUT.bin: float32 little-endian values of a [N, DIM] context
prints JSON: {"meta": {...types and values...}, "k": [...], "v": [...]}
"""
import collections
import json
import sys

import torch

ACT = {
    "linear": None, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
}
for name in torch.nn.modules.activation.__all__:
    ACT.setdefault(name.lower(), getattr(torch.nn.modules.activation, name))


def build(dim, ls, act, ln, drop, act_out):
    layers = []
    for i in range(len(ls) - 1):
        layers.append(torch.nn.Linear(int(dim * ls[i]), int(dim * ls[i + 1])))
        if act not in (None, "linear") and (i < len(ls) - 2 or act_out):
            layers.append(ACT[act]())
        if ln:
            layers.append(torch.nn.LayerNorm(int(dim * ls[i + 1])))
        if drop is not None and drop[i + 1] > 0:
            layers.append(torch.nn.Dropout(p=drop[i + 1]))
    return torch.nn.Sequential(*layers)


class Module(torch.nn.Module):
    def __init__(self, seq):
        super().__init__()
        self.linear = seq


def main():
    path, inp, dim, mult = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    obj = torch.load(path, map_location="cpu")
    assert type(obj) is dict, type(obj)
    ls = obj.get("layer_structure", [1, 2, 1])
    act = obj.get("activation_func", None)
    ln = obj.get("is_layer_norm", False)
    use_dropout = obj.get("use_dropout", False)
    drop = obj.get("dropout_structure", None)
    if drop is None:
        drop = [0] * len(ls)
    act_out = obj.get("activate_output", True)
    meta = {k: {"type": type(v).__name__, "value": v} for k, v in obj.items() if not isinstance(k, int)}
    meta["layer_structure_item_types"] = [type(x).__name__ for x in ls]
    dims = [k for k in obj if isinstance(k, int)]
    pair = obj[dim]
    out = {"meta": meta, "dims": dims, "pair_type": type(pair).__name__,
           "state_dict_type": type(pair[0]).__name__, "has_metadata": hasattr(pair[0], "_metadata")}
    x = torch.frombuffer(bytearray(open(inp, "rb").read()), dtype=torch.float32).reshape(-1, dim)
    for j, which in ((0, "k"), (1, "v")):
        m = Module(build(dim, ls, act, ln, drop, act_out))
        m.load_state_dict(pair[j], strict=True)
        m.eval()
        with torch.no_grad():
            y = x + m.linear(x) * mult
        out[which] = y.reshape(-1).tolist()
        out[which + "_dtype"] = str(next(iter(pair[j].values())).dtype)
    print(json.dumps(out))


main()
