"""Write the stride-0 / overlapping-view fixtures of test/hostile-views.test.ts with real PyTorch.

Run with Debian's python3-torch (1.13):  /usr/bin/python3 test/scripts/make_hostile_views.py

Every file is a few hundred bytes to a few KB, and torch.load reads each one instantly: torch keeps
a view as (storage, offset, size, stride) and never expands it. A reader that copies every view
into a dense array turns them into hundreds of MB (or more than a typed array can hold).

- views-expand27.pt / views-expand27-legacy.pt: {"w": zeros(1).expand(2**27)}   (512 MiB as float32)
- views-expand31.pt: {"w": zeros(1).expand(2**31)}                            (8 GiB as float32)
- views-overlap.pt:  {"w": as_strided(arange(12287.), (8192, 4096), (1, 1))} (overlapping rows, 2**25 elements)
- views-overlap40.pt: {"w": as_strided(arange(41.), (2,)*40, (1,)*40)}       (2**40 elements, no zero stride)
- views-hn-a1111.pt: an AUTOMATIC1111 hypernetwork (dims 768 and 1280, layer_structure [1, 4, 1])
  whose weights are all expand()ed from one 1-element storage (35.6 M elements, 142 MB as float32)
- views-tied-many.pt: 100 tensors viewing one 1 MiB storage whole (each view is plain; together
  they decode to 100 MiB, past the per-file budget)
- views-legit.pt / views-legit-legacy.pt: small broadcast and overlapping views real checkpoints
  have (CLIP's position_ids as arange(77).expand(1, -1), a row broadcast, sliding windows, a
  transpose, tensors sharing a storage); views-legit.json holds torch's values for each.
"""
import json
import os

import torch

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "fixtures")


def save(obj, name, legacy=False):
    path = os.path.join(fixtures, name)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    print("wrote", name, os.path.getsize(path), "bytes")


save({"w": torch.zeros(1).expand(2**27)}, "views-expand27.pt")
save({"w": torch.zeros(1).expand(2**27)}, "views-expand27-legacy.pt", legacy=True)
save({"w": torch.zeros(1).expand(2**31)}, "views-expand31.pt")
save({"w": torch.as_strided(torch.arange(12287.0), (8192, 4096), (1, 1))}, "views-overlap.pt")
save({"w": torch.as_strided(torch.arange(41.0), (2,) * 40, (1,) * 40)}, "views-overlap40.pt")
# 100 tensors, each a full (not expanded) view of one 1 MiB storage: 100 MiB to decode from a 1 MiB file.
tied = torch.zeros(2**18)
save({f"t{i}": tied.view(512, 512) for i in range(100)}, "views-tied-many.pt")

# An A1111 hypernetwork ({dim: (sd_k, sd_v), metadata}) whose weights are views of one element.
one = torch.full((1,), 0.01)
hn = {}
for dim in (768, 1280):
    pair = []
    for _ in range(2):
        sd = {
            "linear.0.weight": one.expand(4 * dim, dim),
            "linear.0.bias": one.expand(4 * dim),
            "linear.1.weight": one.expand(dim, 4 * dim),
            "linear.1.bias": one.expand(dim),
        }
        pair.append(sd)
    hn[dim] = tuple(pair)
hn.update(
    {
        "step": 0,
        "name": "views-hn-a1111",
        "layer_structure": [1.0, 4.0, 1.0],
        "activation_func": "linear",
        "is_layer_norm": False,
        "weight_initialization": "Normal",
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "activate_output": False,
        "use_dropout": False,
        "dropout_structure": [0, 0, 0],
        "last_layer_dropout": False,
        "optional_info": None,
    }
)
save(hn, "views-hn-a1111.pt")

# Views real files hold: they must load exactly as torch reads them.
base = torch.arange(10.0) * 0.25 - 1.0
legit = {
    "position_ids": torch.arange(77).expand((1, -1)),  # int64, stride (0, 1), as in CLIP checkpoints
    "row_broadcast": torch.tensor([1.5, -2.0, 3.25]).expand(4, 3),  # stride (0, 1)
    "windows": torch.as_strided(base, (4, 3), (2, 1)),  # overlapping rows
    "transposed": base[:6].view(2, 3).t(),  # stride (1, 3)
    "scalar_expand": torch.tensor(7.0, dtype=torch.float16).expand(2, 2),  # stride (0, 0), fp16
    "tied_a": base[2:8].view(3, 2),  # two tensors sharing one storage (tied weights) …
    "tied_b": base[2:8].view(2, 3),  # … each read on its own
}
save(legit, "views-legit.pt")
save(legit, "views-legit-legacy.pt", legacy=True)
expected = {
    k: {"dtype": str(t.dtype), "shape": list(t.shape), "stride": list(t.stride()), "values": t.double().flatten().tolist()}
    for k, t in legit.items()
}
with open(os.path.join(fixtures, "views-legit.json"), "w") as f:
    json.dump(expected, f, indent=1)
print("wrote views-legit.json")
