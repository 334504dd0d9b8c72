#!/usr/bin/python3
"""Runs AUTOMATIC1111's prompt parser (copied in a1111_prompt_parser_ref.py) on tricky prompts
and writes test/fixtures/a1111-prompts.json for test/a1111-prompts.test.ts.

Run with Debian's python3 (python3-lark, python3-torch):
    /usr/bin/python3 test/scripts/make_a1111_prompt_fixtures.py

Sections:
* "attention": parse_prompt_attention(text) → [[text, weight], ...] or {"error": ...}
* "schedules": get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps, old), for the
  cases above, the fuzz prompts and every short combination of brackets (enumerated_prompts); each
  run under 12 PYTHONHASHSEEDs — where lark's answer depends on the seed (so A1111 answers
  differently from one start to the next), "results" lists every reading the grammar allows
  (all_readings; the seeds' answers are checked to be among them)
* "multicond": get_multicond_prompt_list(prompts)
* "chunks": tokenize_line with a toy word tokenizer (see toy_tokenize; the test has the same one)
* "emphasis": EmphasisOriginal on a random hidden state
* "fuzz": 300 random prompts through the AND and attention parsers (their schedules are in "schedules")
"""
import base64
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import a1111_prompt_parser_ref as ref  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "a1111-prompts.json")

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


def b64(t):
    return base64.b64encode(t.detach().numpy().astype("<f4").tobytes()).decode("ascii")


def attention_case(text):
    try:
        return {"text": text, "result": ref.parse_prompt_attention(text)}
    except ValueError as e:
        return {"text": text, "error": str(e)}


def schedule_case(prompt, steps, hires=None, old=False):
    try:
        res = ref.get_learned_conditioning_prompt_schedules([prompt], steps, hires, old)[0]
        return {"prompt": prompt, "steps": steps, "hires": hires, "old": old, "result": res}
    except (ValueError, OverflowError) as e:
        return {"prompt": prompt, "steps": steps, "hires": hires, "old": old, "error": f"{type(e).__name__}: {e}"}


def chunk_case(c):
    chunks, count = ref.tokenize_line(
        c["line"], toy_tokenize, toy_id(","), 49406, 49407, toy_find_embedding,
        emphasis=c.get("emphasis", "Original"), comma_padding_backtrack=c.get("backtrack", 20))
    return {**c, "tokenCount": count, "chunks": [{"tokens": ch.tokens, "multipliers": ch.multipliers, "fixes": ch.fixes} for ch in chunks]}


def emphasis_case():
    torch.manual_seed(0)
    per_line = [ref.tokenize_line(line, toy_tokenize, toy_id(","), 49406, 49407, toy_find_embedding)[0] for line in EMPHASIS_LINES]
    n = max(len(c) for c in per_line)
    out = []
    for k in range(n):  # A1111 encodes chunk k of every prompt together and normalises them together
        mults = [c[k].multipliers if k < len(c) else [1.0] * 77 for c in per_line]
        z = torch.randn(len(per_line), 77, 8)
        res = ref.emphasis_original(z, torch.asarray(mults))
        out.append({"multipliers": mults, "z": b64(z), "result": b64(res)})
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
        _EXPLICIT = lark.Lark(ref.schedule_parser.source_grammar, ambiguity="explicit")

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


def schedules_under_hash_seeds():
    """lark's Earley parser resolves some ambiguous prompts differently depending on Python's
    string-hash seed (so A1111 itself answers differently from one start to the next): run every
    schedule case under several seeds and keep the set of distinct answers."""
    import subprocess

    answers = []
    for hs in HASH_SEEDS:
        env = dict(os.environ, PYTHONHASHSEED=str(hs))
        res = subprocess.run([sys.executable, __file__, "--schedules-child"], env=env, check=True, capture_output=True, text=True)
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
    if "--schedules-child" in sys.argv:
        print(json.dumps([{k: v for k, v in schedule_case(*job).items() if k in ("result", "error")} for job in schedule_jobs()]))
        return
    schedules = schedules_under_hash_seeds()
    data = {
        "about": "Made by test/scripts/make_a1111_prompt_fixtures.py from a copy of A1111's prompt_parser.py / sd_hijack_clip.py / sd_emphasis.py (lark " + __import__("lark").__version__ + ").",
        "attention": [attention_case(t) for t in ATTENTION],
        "hashSeeds": HASH_SEEDS,
        "schedules": schedules,
        "multicond": [{"prompts": ps, "result": list(ref.get_multicond_prompt_list(ps)[:2])} for ps in MULTICOND],
        "chunks": [chunk_case(c) for c in CHUNKS],
        "emphasis": emphasis_case(),
        "fuzz": [],
    }
    for p in fuzz_prompts():
        att = attention_case(p)
        data["fuzz"].append({"prompt": p, "attention": att.get("result"), "attentionError": att.get("error"), "multicond": list(ref.get_multicond_prompt_list([p])[:2])})
    with open(OUT, "w", encoding="utf8") as f:
        json.dump(data, f, ensure_ascii=False, indent=0)
        f.write("\n")
    n = sum(len(data[k]) for k in ["attention", "schedules", "multicond", "chunks"])
    print(f"wrote {OUT}: {n} cases ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
