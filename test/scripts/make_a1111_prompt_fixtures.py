#!/usr/bin/python3
"""Runs AUTOMATIC1111's own prompt parsing on tricky prompts and writes
test/fixtures/a1111-prompts.json for test/a1111-prompts.test.ts.

    /usr/bin/python3 test/scripts/make_a1111_prompt_fixtures.py --a1111 DIR [--out FILE]

DIR is an A1111 checkout (v1.6 or later: the grammar with empty alternatives and the hires-fix step
offsets; 1.10's files reproduce the committed fixture byte for byte), or any folder holding just its
modules/prompt_parser.py, modules/sd_emphasis.py and modules/sd_hijack_clip.py. A1111 is AGPL-3.0,
so none of its code lives in this repository: those three files are imported from DIR as they are.
What they import from the rest of the web UI is replaced by small stand-ins written here
(install_stand_ins): the options object of modules/shared.py (only `emphasis`,
`comma_padding_backtrack` and `textual_inversion_add_hashes_to_infotext` are read), modules/devices.py
(CPU) and modules/sd_hijack.py (a hijack object whose embedding database is the toy one below).
The chunking and emphasis run through A1111's real TextConditionalModel: a subclass that only
supplies a toy word tokenizer and a stand-in text encoder (a random hidden state per chunk) drives
its tokenize_line and forward.

Needs Debian's python3 with python3-lark (1.1.5 made the committed fixture) and python3-torch.

Sections:
* "attention": parse_prompt_attention(text) → [[text, weight], ...] or {"error": ...}
* "schedules": get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps, old), for the
  cases above, the fuzz prompts and every short combination of brackets (enumerated_prompts); each
  run under 12 PYTHONHASHSEEDs — where lark's answer depends on the seed (so A1111 answers
  differently from one start to the next), "results" lists every reading the grammar allows
  (all_readings; the seeds' answers are checked to be among them)
* "multicond": get_multicond_prompt_list(prompts)
* "chunks": TextConditionalModel.tokenize_line with a toy word tokenizer (see toy_tokenize; the test
  has the same one); fixes as [offset, embedding name]
* "emphasis": TextConditionalModel.forward with the "Original" emphasis on a random hidden state
* "fuzz": 300 random prompts through the AND and attention parsers (their schedules are in "schedules")
"""
import argparse
import base64
import itertools
import json
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "a1111-prompts.json")

ATTENTION = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    "\\(literal\\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "masterpiece, (best quality:1.2), [[low quality]], (x:1e-1)",
    "(x:0.5:0.2)",
    "(a:1.2.3)",
    "(a:.)",
    "(a: 1.5 )",
    "(a:-1)",
    "(a:+.5)",
    "(a:0)",
    "[unbalanced",
    "unbalanced)",
    "a]b",
    "a BREAK b",
    "BREAK",
    "aBREAK b",
    "a BREAKb",
    "(a BREAK b)",
    "a BREAK BREAK b",
    "a\nBREAK\nb",
    "a\tBREAK\tb",
    "ÅBREAK b",
    "日本語 BREAK 中文",
    "a\\\\b",
    "a\\b",
    "a\\",
    "a:b",
    "(a:b)",
    "((a:1.5) b:0.8)",
    "[a:b:0.5]",
    "(x:١.٥)",
    "",
    "   ",
    "(a)(b)",
    "a (b) c (d) e",
    "(a:1.1)(b)",
    "[[[a]]]",
    "\\(a:1.2\\)",
    "(a\\)b)",
    "((a)",
    "[(a:2)]",
    "(a:2)]",
    "(a [b) c]",
]

SCHEDULES = [
    (p, 10) for p in [
        "test", "a [b:3]", "a [b: 3]", "a [[[b]]:2]", "[(a:2):3]", "a [b : c : 1] d", "a[b:[c:d:2]:1]e",
        "a [unbalanced", "a [b:.5] c", "a [{b|d{:.5] c", "((a][:b:c [d:3]", "[a|(b:1.1)]", "[fe|]male",
        "[fe|||]male", "[a:b:0.5]", "[a:b:10]", "[a:b:0]", "[a:b:-1]", "[a:b:1e1]", "[a:b:1.5e-1]",
        "[a:b:100]", "[a::3]", "[:a:3]", "[::3]", "[a:b:3 ]", "[a:b: 3 ]", "[a:b:+3]", "[a:b:3.]",
        "[a:b:1.5.5]", "[a:b:c]", "[a:b]", "[a|b|c]", "[a|[b|c]]", "[a:[b|c]:5]", "[[a:b:3]|c]",
        "(a|b)", "a|b", "[(a|b)]", "[a|b] [c:d:0.3]", "a\\[b:3]", "a\\", "a\\\nb", "[a:b:3]]", "[[a:b:3]",
        "[a:b:0.99]", "[(a:1.5):(b:0.5):4]", "[a BREAK b:c:3]", "[a:b:3] AND [c:d:5]", "[\na:b:3\n]",
        "[a:b:\t3]", "[[a:3]:5]", "[a:[b:3]", "[a [b|c]", "[a:3]b|c]", "(a [b:3] c", "[a:1e400]",
        "[|]", "[a|]", "[|a]", "[]", "()", "(:)", "[:3]", "[a:b:3:4]", "[a:3:5]", "[(a):b:2]",
        "\\[a:b:3\\]", "[a\\]:b:3]", "[a:b:3e]", "[a:b:.]", "[a:b:1_0]",
    ]
] + [
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]", 100),
    ("[a:b:0.3] [c:d:0.7]", 20),
    ("[a|b] and [c:d:7]", 7),
    ("[a:b:5]", 1),
]

HIRES = [
    ("a [b:.5] c", 10, 10, False),
    ("a [b:1.5] c", 10, 10, False),
    ("a [b:15] c", 10, 10, False),
    ("a [b:5] c", 10, 20, False),
    ("[a:b:0.5] [c|d]", 10, 4, False),
    ("[a:b:0.5]", 10, 10, True),
    ("[a:b:1.5]", 10, 10, True),
    ("[a:b:3]", 10, 10, True),
]

MULTICOND = [
    ["a AND b"], ["a AND b:1.2"], ["a:0.5 AND b :-1 AND c"], ["ANDROID AND b"], ["a AND"], ["AND"],
    ["a AND a"], ["cat:1.5"], ["a\nAND b:2\n"], ["(x:1.2) AND y"], ["a AND b: 1."], ["a AND b:.5"],
    ["a AND b:1.2.3"], ["a AND b : +2"], ["éAND b"], ["a AND b", "b AND c:0.5"], ["a_AND b"], ["a ANDb"],
    ["x:١٫٥ AND y:٢"], [""], ["a AND b:1.5 AND c :2.0 "],
]


# ---- toy tokenizer for the chunking fixtures (mirrored in the test) --------------------------

def toy_id(word):
    return 1000 + sum((i + 1) * ord(c) for i, c in enumerate(word)) % 30000


def toy_tokenize(texts):
    import re

    return [[toy_id(w) for w in re.findall(r"[a-z0-9]+|[^a-z0-9\s]", t.lower())] for t in texts]


class ToyEmbedding:
    def __init__(self, name, vectors):
        self.name, self.vectors = name, vectors


# "emb" (one token) has 3 vectors; "two words" (two tokens) has 4.
EMBEDDINGS = {(toy_id("emb"),): ToyEmbedding("emb", 3), (toy_id("two"), toy_id("words")): ToyEmbedding("two words", 4)}


def toy_find_embedding(tokens, offset):
    for ids, emb in sorted(EMBEDDINGS.items(), key=lambda kv: -len(kv[0])):
        if tuple(tokens[offset:offset + len(ids)]) == ids:
            return emb, len(ids)
    return None, None


def words(n, start=0, comma_every=0):
    out = []
    for i in range(start, start + n):
        out.append(f"w{i}")
        if comma_every and (i + 1) % comma_every == 0:
            out.append(",")
    return " ".join(out)


CHUNKS = [
    {"line": "a cat, sitting"},
    {"line": ""},
    {"line": words(75)},
    {"line": words(76)},
    {"line": words(160)},
    {"line": words(70) + " , " + words(10, 70)},
    {"line": words(50) + " , " + words(40, 50)},
    {"line": words(54) + " , " + words(40, 54)},
    {"line": words(55) + " , " + words(40, 55)},
    {"line": words(200, comma_every=7)},
    {"line": words(74) + " ,"},
    {"line": words(75) + " , x"},
    {"line": words(70) + " , " + words(10, 70), "backtrack": 0},
    {"line": words(70) + " , " + words(10, 70), "backtrack": 3},
    {"line": "a BREAK b"},
    {"line": "BREAK a"},
    {"line": "a BREAK"},
    {"line": "a BREAK BREAK b"},
    {"line": words(80) + " BREAK " + words(5)},
    {"line": "(a BREAK b)"},
    {"line": "(red:1.3) cat, [[blue]] (dog) BREAK (x:0.5) " + words(100)},
    {"line": "(red:1.3) cat, [[blue]]", "emphasis": "None"},
    {"line": "a emb b, two words (emb:1.2)"},
    {"line": words(73) + " emb x"},
    {"line": words(72) + " two words x"},
]

EMPHASIS_LINES = ["(red:1.3) cat, [[blue]] (dog) " + words(10), "plain " + words(90) + " (x:0.7)"]


def fuzz_prompts(n=300, seed=1):
    """Random prompts built from the syntax's constructs (nested edits, alternations, emphasis,
    escapes), then mangled by up to two random character edits, to catch where a hand parser and
    lark's Earley parser resolve the grammar differently."""
    import random

    rnd = random.Random(seed)
    numbers = ["3", "0.5", ".25", "1", "0", "12", "1e1", "2.", "-1", " 4 ", "x"]

    def piece(depth):
        r = rnd.random()
        if depth > 2 or r < 0.35:
            return rnd.choice(["a", "b c", "", " ", "d,", "\\(", "\\]", "e BREAK f", "g AND h", "1"])
        inner = lambda: piece(depth + 1) + (piece(depth + 1) if rnd.random() < 0.3 else "")
        kind = rnd.choice(["sched", "sched1", "alt", "paren", "pw", "square"])
        if kind == "sched":
            return f"[{inner()}:{inner()}:{rnd.choice(numbers)}]"
        if kind == "sched1":
            return f"[{inner()}:{rnd.choice(numbers)}]"
        if kind == "alt":
            return "[" + "|".join(inner() for _ in range(rnd.randint(2, 3))) + "]"
        if kind == "paren":
            return f"({inner()})"
        if kind == "pw":
            return f"({inner()}:{rnd.choice(numbers)})"
        return f"[{inner()}]"

    out = []
    specials = "[]():|\\ "
    for _ in range(n):
        p = "".join(piece(0) for _ in range(rnd.randint(1, 3)))
        for _ in range(rnd.choice([0, 0, 1, 2])):
            i = rnd.randint(0, len(p))
            if rnd.random() < 0.5 and p:
                p = p[:i] + p[i + 1:]
            else:
                p = p[:i] + rnd.choice(specials) + p[i:]
        out.append(p)
    return out


# ---- A1111's modules, imported from the checkout given with --a1111 ----------------------------

A1111 = types.SimpleNamespace(prompt_parser=None, sd_hijack_clip=None, opts=None)


def install_stand_ins():
    """Put stand-ins for the web UI modules that sd_hijack_clip.py imports into sys.modules (they
    would otherwise pull in the whole web UI: models, Gradio, settings files). Returns the options
    object that plays shared.opts; tokenize_line and forward read it at call time."""
    opts = types.SimpleNamespace(emphasis="Original", comma_padding_backtrack=20, textual_inversion_add_hashes_to_infotext=False)
    shared = types.ModuleType("modules.shared")
    shared.opts = opts
    devices = types.ModuleType("modules.devices")
    devices.device = torch.device("cpu")
    devices.torch_npu_set_device = lambda: None
    hijack = types.ModuleType("modules.sd_hijack")
    hijack.model_hijack = types.SimpleNamespace(
        embedding_db=types.SimpleNamespace(find_embedding_at_position=toy_find_embedding),
        fixes=None,
        extra_generation_params={},
    )
    for mod in (shared, devices, hijack):
        sys.modules[mod.__name__] = mod
    return opts


def load_a1111(root):
    """Import modules/prompt_parser.py, sd_emphasis.py and sd_hijack_clip.py from the A1111
    checkout at `root`, with the stand-ins above for the rest of the web UI."""
    for name in ("prompt_parser.py", "sd_emphasis.py", "sd_hijack_clip.py"):
        path = os.path.join(root, "modules", name)
        if not os.path.isfile(path):
            sys.exit(f"--a1111 {root}: {path} is missing; give an A1111 checkout (v1.6 or later) or a folder with its modules/{name}")
    sys.path.insert(0, os.path.abspath(root))
    A1111.opts = install_stand_ins()
    import modules  # noqa: E402  (the checkout's package)

    for name in ("shared", "devices", "sd_hijack"):
        setattr(modules, name, sys.modules["modules." + name])
    import modules.prompt_parser as prompt_parser  # noqa: E402
    import modules.sd_hijack_clip as sd_hijack_clip  # noqa: E402

    A1111.prompt_parser, A1111.sd_hijack_clip = prompt_parser, sd_hijack_clip


def toy_text_model():
    """A1111's TextConditionalModel with the toy tokenizer (ids 49406/49407 start and end a chunk,
    as CLIP's do) and a stand-in text encoder that returns a fresh torch.randn hidden state of width
    8 for each chunk batch; every call of process_tokens is recorded."""

    class ToyTextModel(A1111.sd_hijack_clip.TextConditionalModel):
        def __init__(self):
            super().__init__()
            self.comma_token = toy_id(",")
            self.id_start, self.id_end = 49406, 49407
            self.id_pad = self.id_end
            self.calls = []

        def tokenize(self, texts):
            return toy_tokenize(texts)

        def encode_with_transformers(self, tokens):
            z = torch.randn(tokens.shape[0], tokens.shape[1], 8)
            self.calls[-1]["z"] = z
            return z

        def process_tokens(self, remade_batch_tokens, batch_multipliers):
            self.calls.append({"multipliers": batch_multipliers})
            z = super().process_tokens(remade_batch_tokens, batch_multipliers)
            self.calls[-1]["result"] = z
            return z

    return ToyTextModel()


def b64(t):
    return base64.b64encode(t.detach().numpy().astype("<f4").tobytes()).decode("ascii")


def attention_case(text):
    try:
        return {"text": text, "result": A1111.prompt_parser.parse_prompt_attention(text)}
    except ValueError as e:
        return {"text": text, "error": str(e)}


def schedule_case(prompt, steps, hires=None, old=False):
    try:
        res = A1111.prompt_parser.get_learned_conditioning_prompt_schedules([prompt], steps, hires, old)[0]
        return {"prompt": prompt, "steps": steps, "hires": hires, "old": old, "result": res}
    except (ValueError, OverflowError) as e:
        return {"prompt": prompt, "steps": steps, "hires": hires, "old": old, "error": f"{type(e).__name__}: {e}"}


def multicond(prompts):
    return list(A1111.prompt_parser.get_multicond_prompt_list(prompts)[:2])


def chunk_case(c):
    A1111.opts.emphasis = c.get("emphasis", "Original")
    A1111.opts.comma_padding_backtrack = c.get("backtrack", 20)
    try:
        chunks, count = toy_text_model().tokenize_line(c["line"])
    finally:
        A1111.opts.emphasis, A1111.opts.comma_padding_backtrack = "Original", 20
    return {
        **c, "tokenCount": count,
        "chunks": [{"tokens": ch.tokens, "multipliers": ch.multipliers, "fixes": [[f.offset, f.embedding.name] for f in ch.fixes]} for ch in chunks],
    }


def emphasis_case():
    """forward() encodes chunk k of every prompt together (an empty chunk where a prompt has fewer)
    and applies the emphasis to that batch as a whole."""
    torch.manual_seed(0)
    model = toy_text_model()
    with torch.no_grad():
        model(EMPHASIS_LINES)
    out = [{"multipliers": c["multipliers"], "z": b64(c["z"]), "result": b64(c["result"])} for c in model.calls]
    return {"lines": EMPHASIS_LINES, "chunks": out}


def enumerated_prompts():
    """Every string of up to three pieces from [ ] ( ) : a, an edit and an alternation."""
    import itertools

    alpha = ["[", "]", "(", ")", ":", "a", "S", "T"]
    out = []
    for n in range(1, 4):
        for combo in itertools.product(alpha, repeat=n):
            if "S" in combo or "T" in combo:
                out.append("".join({"S": "[g:1]", "T": "[b|c]"}.get(c, c) for c in combo))
    return out


def schedule_jobs():
    jobs = [(p, s, None, False) for p, s in SCHEDULES] + list(HIRES)
    jobs += [(p, 10, None, False) for p in fuzz_prompts()]
    jobs += [(p, 4, None, False) for p in enumerated_prompts()]
    return jobs


HASH_SEEDS = list(range(1, 13))


class TooAmbiguous(Exception):
    pass


def eval_size(sets):
    n = 1
    for x in sets:
        n *= len(x)
    return n


def all_readings(prompt, steps, cap=2000):
    """Every schedule some parse of `prompt` gives (lark with ambiguity="explicit" exposes all
    derivations; A1111's resolve mode picks one of them). Meanings are computed per subtree as
    (text at each step 1..steps, steps where the text changes) and combined, so the number of
    derivations does not blow up. Follows A1111's collect_steps/at_step without the hires offsets."""
    import lark

    import signal

    global _EXPLICIT
    if "_EXPLICIT" not in globals():
        _EXPLICIT = lark.Lark(A1111.prompt_parser.schedule_parser.source_grammar, ambiguity="explicit")

    def too_slow(*_):
        raise TooAmbiguous(prompt)

    signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(3)  # a prompt whose forest takes longer than this is left out
    try:
        return readings_of(prompt, steps, cap)
    finally:
        signal.alarm(0)


def readings_of(prompt, steps, cap):
    import lark

    try:
        tree = _EXPLICIT.parse(prompt)
    except lark.exceptions.LarkError:
        return [[[steps, prompt]]]
    const = lambda text: {(tuple([text] * steps), frozenset())}
    memo = {}

    def capped(out):
        if len(out) > cap:
            raise TooAmbiguous(prompt)
        return out

    def concat(parts):
        acc = const("")
        for part in parts:
            acc = capped({(tuple(a + b for a, b in zip(ta, tb)), pa | pb) for ta, pa in acc for tb, pb in part})
        return acc

    def meaning(node):
        if isinstance(node, lark.Tree):
            if id(node) not in memo:
                memo[id(node)] = (node, capped(meaning1(node)))
            return memo[id(node)][1]
        return meaning1(node)

    def meaning1(node):
        if node is None:
            return const("")
        if isinstance(node, lark.Token):
            return const(str(node))
        if node.data == "_ambig":
            return set().union(*(meaning(c) for c in node.children))
        if node.data == "plain":
            return const(str(node.children[0]))
        if node.data == "scheduled":
            before, after, _, number, _ = node.children
            v = float(number)
            when = min(steps, int(v * steps if "." in number else v))
            extra = frozenset([when]) if when >= 1 else frozenset()
            out = set()
            for tb, pb in meaning(before):
                for ta, pa in meaning(after):
                    out.add((tuple(tb[t - 1] if t <= when else ta[t - 1] for t in range(1, steps + 1)), pb | pa | extra))
            return out
        if node.data == "alternate":
            opts = [meaning(c) for c in node.children]
            out = set()
            if eval_size(opts) > cap:
                raise TooAmbiguous(prompt)
            for combo in itertools.product(*opts):
                texts = tuple(combo[(t - 1) % len(combo)][0][t - 1] for t in range(1, steps + 1))
                out.add((texts, frozenset(range(1, steps + 1)).union(*(c[1] for c in combo))))
            return out
        return concat([meaning(c) for c in node.children])

    readings = []
    for texts, points in meaning(tree):
        sched = [[t, texts[t - 1]] for t in sorted(points | {steps})]
        if sched not in readings:
            readings.append(sched)
    return sorted(readings, key=json.dumps)


def schedules_under_hash_seeds(root):
    """lark's Earley parser resolves some ambiguous prompts differently depending on Python's
    string-hash seed (so A1111 itself answers differently from one start to the next): run every
    schedule case under several seeds and keep the set of distinct answers."""
    import subprocess

    answers = []
    for hs in HASH_SEEDS:
        env = dict(os.environ, PYTHONHASHSEED=str(hs))
        cmd = [sys.executable, os.path.abspath(__file__), "--a1111", root, "--schedules-child"]
        res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        answers.append(json.loads(res.stdout))
    cases = []
    too_ambiguous = []
    for k, (p, steps, hires, old) in enumerate(schedule_jobs()):
        distinct = []
        for a in answers:
            if a[k] not in distinct:
                distinct.append(a[k])
        case = {"prompt": p, "steps": steps, "hires": hires, "old": old}
        if len(distinct) == 1:
            case.update(distinct[0])
        else:
            # Seed-dependent: list every reading of the prompt; the seeds' answers must be among them.
            assert hires is None and not old
            try:
                readings = all_readings(p, steps)
            except TooAmbiguous:
                too_ambiguous.append(p)
                continue
            missing = [d["result"] for d in distinct if d["result"] not in readings]
            assert not missing, (p, missing, readings)
            case["results"] = readings
        cases.append(case)
    print(f"left out {len(too_ambiguous)} prompts with too many readings to list", file=sys.stderr)
    return cases


def main():
    ap = argparse.ArgumentParser(description="Write test/fixtures/a1111-prompts.json from A1111's own prompt parsing.")
    ap.add_argument("--a1111", required=True, help="A1111 checkout (or a folder with its modules/prompt_parser.py, sd_emphasis.py and sd_hijack_clip.py)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--schedules-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    load_a1111(args.a1111)
    if args.schedules_child:
        print(json.dumps([{k: v for k, v in schedule_case(*job).items() if k in ("result", "error")} for job in schedule_jobs()]))
        return
    schedules = schedules_under_hash_seeds(args.a1111)
    data = {
        "about": "Made by test/scripts/make_a1111_prompt_fixtures.py from A1111's prompt_parser.py / sd_hijack_clip.py / sd_emphasis.py (lark " + __import__("lark").__version__ + ").",
        "attention": [attention_case(t) for t in ATTENTION],
        "hashSeeds": HASH_SEEDS,
        "schedules": schedules,
        "multicond": [{"prompts": ps, "result": multicond(ps)} for ps in MULTICOND],
        "chunks": [chunk_case(c) for c in CHUNKS],
        "emphasis": emphasis_case(),
        "fuzz": [],
    }
    for p in fuzz_prompts():
        att = attention_case(p)
        data["fuzz"].append({"prompt": p, "attention": att.get("result"), "attentionError": att.get("error"), "multicond": multicond([p])})
    with open(args.out, "w", encoding="utf8") as f:
        json.dump(data, f, ensure_ascii=False, indent=0)
        f.write("\n")
    n = sum(len(data[k]) for k in ["attention", "schedules", "multicond", "chunks"])
    print(f"wrote {os.path.normpath(args.out)}: {n} cases ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
