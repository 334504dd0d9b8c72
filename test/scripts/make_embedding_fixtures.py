#!/usr/bin/python3
"""Textual-inversion embedding files for test/embeddings.test.ts, written by PyTorch.

Writes test/fixtures/embeddings/ (an embeddings folder for the tiny model, whose text encoder is
80 wide and whose tokenizer knows the shape-caption words) and test/fixtures/embeddings.json (the
vectors each usable file holds, for the test to compare with):

  cyan.pt               A1111's layout, torch.save zip: string_to_param {"*": [2, 80]}, name, step,
                        sd_checkpoint, sd_checkpoint_name (as Embedding.save writes it)
  red.pt                the same layout in torch's legacy (pre-1.6) format, one vector [1, 80]
  magenta star.bin      a diffusers concept {"<magenta-star>": [80]} (a 1-D vector), called by two words
  triangles.safetensors kohya's {"emb_params": [3, 80]} as safetensors (bytes written by hand)
  sub/star.pt           in a sub-folder, one vector (a shorter name that "magenta star" must win over)
  wide.pt               768 wide: an SD 1.5 embedding, skipped for the tiny model
  zebra.pt              a name the tiny tokenizer cannot spell, skipped
  two-terms.pt          string_to_param with two terms: an error, as in A1111
  sdxl.safetensors      clip_g + clip_l: an SDXL embedding, an error
  empty.pt              zero bytes: ignored, as A1111 ignores it

Run: /usr/bin/python3 test/scripts/make_embedding_fixtures.py   (Debian python3-torch 1.13)
"""
import json
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "embeddings")
W = 80
torch.manual_seed(21)
os.makedirs(os.path.join(OUT, "sub"), exist_ok=True)
expected = {}


def vec(n, width=W):
    return (torch.randn(n, width) * 0.5).float()


def a1111(v, name, **kw):
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": v},
        "name": name,
        "step": kw.get("step", 0),
        "sd_checkpoint": kw.get("sd_checkpoint"),
        "sd_checkpoint_name": kw.get("sd_checkpoint_name"),
    }
    return data


def safetensors_bytes(tensors):
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        b = t.contiguous().numpy().astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


cyan = vec(2).requires_grad_(True)  # A1111 trains vec in place: saved with requires_grad
torch.save(a1111(cyan, "cyan-stored", step=1500, sd_checkpoint="0123456789", sd_checkpoint_name="tiny-shapes"), os.path.join(OUT, "cyan.pt"))
expected["cyan"] = {"vectors": cyan.detach().tolist(), "storedName": "cyan-stored", "step": 1500, "sdCheckpoint": "0123456789", "sdCheckpointName": "tiny-shapes", "layout": "a1111"}

red = vec(1)
torch.save(a1111(red, "red"), os.path.join(OUT, "red.pt"), _use_new_zipfile_serialization=False)
expected["red"] = {"vectors": red.tolist(), "storedName": "red", "step": 0, "sdCheckpoint": None, "sdCheckpointName": None, "layout": "a1111"}

magenta = vec(1)[0]
torch.save({"<magenta-star>": magenta}, os.path.join(OUT, "magenta star.bin"))
expected["magenta star"] = {"vectors": [magenta.tolist()], "storedName": None, "step": None, "sdCheckpoint": None, "sdCheckpointName": None, "layout": "concept"}

tri = vec(3)
with open(os.path.join(OUT, "triangles.safetensors"), "wb") as f:
    f.write(safetensors_bytes({"emb_params": tri}))
expected["triangles"] = {"vectors": tri.tolist(), "storedName": None, "step": None, "sdCheckpoint": None, "sdCheckpointName": None, "layout": "concept"}

star = vec(1)
torch.save(a1111(star, "star"), os.path.join(OUT, "sub", "star.pt"))
expected["star"] = {"vectors": star.tolist(), "storedName": "star", "step": 0, "sdCheckpoint": None, "sdCheckpointName": None, "layout": "a1111"}

torch.save(a1111(vec(1, 768), "wide"), os.path.join(OUT, "wide.pt"))
torch.save(a1111(vec(1), "zebra"), os.path.join(OUT, "zebra.pt"))
two = a1111(vec(1), "two")
two["string_to_param"]["#"] = vec(1)
torch.save(two, os.path.join(OUT, "two-terms.pt"))
with open(os.path.join(OUT, "sdxl.safetensors"), "wb") as f:
    f.write(safetensors_bytes({"clip_g": vec(2, 1280), "clip_l": vec(2, 768)}))
open(os.path.join(OUT, "empty.pt"), "wb").close()

with open(os.path.join(HERE, "..", "fixtures", "embeddings.json"), "w") as f:
    json.dump(expected, f)
print("wrote", OUT)
