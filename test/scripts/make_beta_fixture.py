#!/usr/bin/python3
"""Reference fixtures for MonkeyPatch "beta" (skip_connection) hypernetworks, made with PyTorch.

    /usr/bin/python3 test/scripts/make_beta_fixture.py            # writes test/fixtures/hn-beta-*.pt + hn-beta.json
    /usr/bin/python3 test/scripts/make_beta_fixture.py --check F  # loads F (any beta .pt) the extension's way, prints JSON

The modules below follow the extension's math (Hypernetwork-MonkeyPatch-Extension,
patches/hypernetwork.py), written independently:

  * a module of width dim is a torch.nn.Sequential of residual blocks, one per consecutive pair of
    layer_structure entries; block i maps n_i = int(dim * ls[i]) to n_{i+1};
  * a block holds `upsample_layer` (a bias-free Linear, only when upsample_linear == "Linear";
    registered before `linear`) and `linear`, a Sequential of Linear, LayerNorm (if is_layer_norm),
    Dropout (if dropout_structure[i+1] > 0) and the activation (unless "linear"), in that order;
  * block(h) = skip(h) + linear(h), skip = upsample_layer(h), or F.interpolate(h, size=n_{i+1},
    mode="nearest-exact") when there is no upsample layer;
  * the module gives f(x) (the chain) while training and x + m * (f(x) - x) in eval mode;
  * only the Linear/LayerNorm weights inside the blocks are trained (upsample layers are frozen);
  * the .pt holds {dim: (k.state_dict(), v.state_dict()), step, name, layer_structure,
    activation_func, is_layer_norm, weight_initialization, sd_checkpoint, sd_checkpoint_name,
    activate_output, use_dropout, dropout_structure, last_layer_dropout, optional_info,
    skip_connection, upsample_linear}.

Also computes a `.hns` composition the extension's way: sequential items feed one into the next,
a parallel dict is the weighted sum (weights divided by their total) of its members' outputs, and
("name", s) runs that network at multiplier s.
"""
import json
import os
import sys

import torch

ACTS = {"linear": None, "relu": torch.nn.ReLU, "elu": torch.nn.ELU, "tanh": torch.nn.Tanh, "swish": torch.nn.Hardswish}


class Block(torch.nn.Module):
    def __init__(self, n_in, n_out, act, layer_norm, p, upsample):
        super().__init__()
        self.n_out = n_out
        if upsample:
            self.upsample_layer = torch.nn.Linear(n_in, n_out, bias=False)
        else:
            self.upsample_layer = None
        parts = [torch.nn.Linear(n_in, n_out)]
        if layer_norm:
            parts.append(torch.nn.LayerNorm(n_out))
        if p > 0:
            parts.append(torch.nn.Dropout(p=p))
        if ACTS[act] is not None:
            parts.append(ACTS[act]())
        self.linear = torch.nn.Sequential(*parts)

    def forward(self, h):
        skip = self.upsample_layer(h) if self.upsample_layer is not None else torch.nn.functional.interpolate(h, size=self.n_out, mode="nearest-exact")
        return skip + self.linear(h)


class BetaModule(torch.nn.Module):
    def __init__(self, dim, ls, act, layer_norm, dropout, upsample):
        super().__init__()
        self.linear = torch.nn.Sequential(
            *[Block(int(dim * ls[i]), int(dim * ls[i + 1]), act, layer_norm, dropout[i + 1], upsample) for i in range(len(ls) - 1)]
        )

    def forward(self, x, m):
        if self.training:
            return self.linear(x)
        return x + m * (self.linear(x) - x)


NETS = {
    # resize skip paths (16 -> 24 -> 32 -> 16 etc.), layer norm, dropout everywhere (eval: off)
    "hn-beta-a": dict(dims=[16, 32], ls=[1, 1.5, 2, 1], act="elu", layer_norm=True, dropout=[0, 0.1, 0.2, 0.3], upsample=None),
    # frozen Linear skip paths, no layer norm, no dropout
    "hn-beta-b": dict(dims=[16, 32, 64], ls=[1, 2, 1], act="tanh", layer_norm=False, dropout=[0, 0, 0], upsample="Linear"),
}


def build(cfg):
    layers = {}
    for dim in cfg["dims"]:
        pair = []
        for _ in range(2):
            m = BetaModule(dim, cfg["ls"], cfg["act"], cfg["layer_norm"], cfg["dropout"], cfg["upsample"] == "Linear")
            with torch.no_grad():  # as after training: every weight matters
                for name, p in m.named_parameters():
                    if name.endswith("linear.1.weight") and cfg["layer_norm"]:
                        p.copy_(1 + 0.2 * torch.randn_like(p))
                    else:
                        p.copy_(0.3 * torch.randn_like(p))
            m.eval()
            pair.append(m)
        layers[dim] = pair
    return layers


def save(layers, cfg, name, path):
    d = {dim: (k.state_dict(), v.state_dict()) for dim, (k, v) in layers.items()}
    d.update(
        step=7,
        name=name,
        layer_structure=cfg["ls"],
        activation_func=cfg["act"],
        is_layer_norm=cfg["layer_norm"],
        weight_initialization="Normal",
        sd_checkpoint=None,
        sd_checkpoint_name=None,
        activate_output=False,
        use_dropout=any(cfg["dropout"]),
        dropout_structure=cfg["dropout"],
        last_layer_dropout=cfg["dropout"][-2] != 0,
        optional_info="beta fixture",
        skip_connection=True,
        upsample_linear=cfg["upsample"],
    )
    torch.save(d, path)


def load(path):
    """Load a beta .pt the extension's way (strict state dicts) into eval-mode modules."""
    sd = torch.load(path, map_location="cpu")
    assert sd.get("skip_connection") is True, "not a skip_connection file"
    ls = sd["layer_structure"]
    dropout = sd["dropout_structure"]
    layers = {}
    for dim, pair in sd.items():
        if type(dim) is not int:
            continue
        mods = []
        for state in pair:
            m = BetaModule(dim, ls, sd["activation_func"] or "linear", sd["is_layer_norm"], dropout, sd.get("upsample_linear") == "Linear")
            m.load_state_dict(state)  # strict: same keys and shapes
            m.eval()
            mods.append(m)
        layers[dim] = mods
    return sd, layers


def values(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def apply_hns(nets, item, k_ctx, v_ctx):
    """The extension's meaning of a parsed .hns item (list: sequential, dict: parallel, tuple: strength)."""
    if isinstance(item, list):
        for it in item:
            k_ctx, v_ctx = apply_hns(nets, it, k_ctx, v_ctx)
        return k_ctx, v_ctx
    if isinstance(item, dict):
        total = sum(item.values())
        ks, vs = torch.zeros_like(k_ctx), torch.zeros_like(v_ctx)
        for key, w in item.items():
            k, v = apply_hns(nets, key, k_ctx, v_ctx)
            ks += k * (w / total)
            vs += v * (w / total)
        return ks, vs
    name, s = item if isinstance(item, tuple) else (item, 1)
    pair = nets[name].get(k_ctx.shape[2])
    if pair is None:
        return k_ctx, v_ctx
    return pair[0](k_ctx, s), pair[1](v_ctx, s)


HNS = '[("hn-beta-b", 0.6), {"hn-beta-a": 2, ("hn-beta-b", 0.5): 1}]'
HNS_TREE = [("hn-beta-b", 0.6), {"hn-beta-a": 2, ("hn-beta-b", 0.5): 1}]


def main():
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
    torch.manual_seed(20231)
    expected = {"torch": torch.__version__, "multiplier": 0.7, "nets": {}, "hns": {"text": HNS, "outputs": {}}}
    nets = {}
    for name, cfg in NETS.items():
        layers = build(cfg)
        path = os.path.join(out_dir, f"{name}.pt")
        save(layers, cfg, name, path)
        _, layers = load(path)  # what the extension would load
        nets[name] = layers
        entry = {}
        for dim, (k, v) in layers.items():
            x = torch.randn(2, 3, dim)
            with torch.no_grad():
                e = {"x": values(x), "k": values(k(x, 0.7)), "v": values(v(x, 0.7)), "k1": values(k(x, 1.0))}
            if not any(cfg["dropout"]):
                k.train()
                with torch.no_grad():
                    e["kTrain"] = values(k(x, 0.7))  # training ignores the multiplier
                k.eval()
            entry[str(dim)] = e
        expected["nets"][name] = entry
    for dim in (16, 32, 64):
        x = torch.randn(2, 3, dim)
        with torch.no_grad():
            k, v = apply_hns(nets, HNS_TREE, x, x)
        expected["hns"]["outputs"][str(dim)] = {"x": values(x), "k": values(k), "v": values(v)}
    with open(os.path.join(out_dir, "hn-beta.json"), "w") as f:
        json.dump(expected, f)
    print("wrote", ", ".join(f"{n}.pt" for n in NETS), "and hn-beta.json")


def check(path):
    """Load `path` in torch and run each module on a fixed input: the test compares with its own outputs."""
    sd, layers = load(path)
    torch.manual_seed(5)
    res = {"skip_connection": sd["skip_connection"], "upsample_linear": sd.get("upsample_linear"), "keys": {}, "outputs": {}}
    for dim, (k, v) in layers.items():
        res["keys"][str(dim)] = list(k.state_dict().keys())
        x = torch.linspace(-1, 1, 2 * 3 * dim).reshape(2, 3, dim)
        with torch.no_grad():
            res["outputs"][str(dim)] = {"k": values(k(x, 0.7)), "v": values(v(x, 0.7))}
    print(json.dumps(res))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        main()
