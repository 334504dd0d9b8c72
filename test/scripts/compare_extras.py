"""Compare the top-level keys A1111 does not interpret in two hypernetwork .pt files, with torch.load.

usage: compare_extras.py ORIGINAL.pt ROUNDTRIP.pt
prints JSON {"keys": [...], "differences": [...]}: keys are the extra keys of ORIGINAL (repr),
differences one line per value that is not the same, type for type (int is not float, tuple is
not list, OrderedDict is not dict, -0.0 is not 0.0, NaN equals NaN; tensors by dtype, shape and
bits).
"""
import collections
import json
import math
import sys

import torch

A1111 = {
    "step", "name", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
    "sd_checkpoint", "sd_checkpoint_name", "activate_output", "use_dropout", "dropout_structure",
    "last_layer_dropout", "optional_info",
}


def extras(path):
    d = torch.load(path)
    return {k: v for k, v in d.items() if not (type(k) is int) and k not in A1111}


def diff(a, b, where, out):
    if type(a) is not type(b):
        out.append(f"{where}: {type(a).__name__} became {type(b).__name__}")
    elif isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.nan_to_num(), b.nan_to_num()):
            out.append(f"{where}: tensor {a.dtype} {list(a.shape)} became {b.dtype} {list(b.shape)} or changed values")
    elif isinstance(a, float):
        same = (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
        if not same:
            out.append(f"{where}: {a!r} became {b!r}")
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} became {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{where}[{i}]", out)
    elif isinstance(a, dict):
        if list(a.keys()) != list(b.keys()):
            out.append(f"{where}: keys {list(a.keys())!r} became {list(b.keys())!r}")
        for k in a:
            if k in b:
                diff(a[k], b[k], f"{where}[{k!r}]", out)
    elif a != b:
        out.append(f"{where}: {a!r} became {b!r}")


a, b = extras(sys.argv[1]), extras(sys.argv[2])
out = []
diff(collections.OrderedDict(a), collections.OrderedDict(b), "extras", out)
print(json.dumps({"keys": [repr(k) for k in a], "differences": out}))
