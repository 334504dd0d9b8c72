#!/usr/bin/python3
"""Parses infotexts with AUTOMATIC1111's own parse_generation_parameters and quote, imported from an
A1111 checkout; used by test/scripts/make-infotext-fixtures.ts (to write
test/fixtures/a1111-infotext.json) and by test/infotext.test.ts (its live cross-check, when the
environment variable A1111_WEBUI_DIR names a checkout).

    /usr/bin/python3 test/scripts/run_a1111_infotext.py --a1111 DIR < texts.json > parsed.json

texts.json is a JSON list of infotexts. The answer is {"parsed": [...], "quoted": [...]}: for each
text, the dict parse_generation_parameters returns as an ordered list of [key, value] pairs, and
quote(text).

DIR is an A1111 checkout (the committed fixture names the version it was made from), or any folder
holding just its modules/infotext_utils.py, modules/infotext_versions.py, modules/prompt_parser.py and
modules/processing.py. A1111 is AGPL-3.0, so none of its code lives in this repository:
infotext_utils.py, infotext_versions.py and prompt_parser.py are imported from DIR as they are, and
processing.py's old_hires_fix_first_pass_dimensions (the only thing the parser uses from it) is read
out of DIR's processing.py and run on its own, since importing processing.py would start the whole
web UI. What else they import is replaced by stand-ins written here (install_stand_ins): Gradio
(touched only at import time), the settings object with A1111's default settings (no prompt styles
defined, infotext_styles "Apply if any", use_old_hires_fix_width_height off, auto_backcompat on,
nothing in infotext_skip_pasting), and empty modules for the UI helpers the parser does not call.
A1111 prints a field it cannot parse to stdout; that message goes to stderr here, so stdout is JSON.

Needs Debian's python3 with python3-packaging and python3-lark (A1111 needs both).
"""
import argparse
import ast
import contextlib
import json
import math
import os
import sys
import types


def first_pass_dimensions_from(processing_py):
    """A1111's old_hires_fix_first_pass_dimensions, taken from the checkout's processing.py: the
    function's own lines, compiled alone (it needs only `math`)."""
    with open(processing_py, encoding="utf8") as f:
        lines = f.read().splitlines(keepends=True)
    head = "def old_hires_fix_first_pass_dimensions("
    starts = [i for i, line in enumerate(lines) if line.startswith(head)]
    if len(starts) != 1:
        sys.exit(f"{processing_py}: expected one top-level `{head}...`, found {len(starts)}; is this A1111's modules/processing.py?")
    end = starts[0] + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    namespace = {"math": math}
    exec(compile(ast.parse("".join(lines[starts[0]:end])), processing_py, "exec"), namespace)
    return namespace["old_hires_fix_first_pass_dimensions"]


class NoStyles:
    """Plays shared.prompt_styles with no styles defined (a fresh install): nothing is found and the
    prompts come back unchanged."""

    def extract_styles_from_prompt(self, prompt, negative_prompt):
        return [], prompt, negative_prompt


def install_stand_ins(root):
    """Register the stand-ins in sys.modules before infotext_utils.py is imported."""
    opts = types.SimpleNamespace(
        infotext_skip_pasting=[],
        infotext_styles="Apply if any",
        use_old_hires_fix_width_height=False,
        auto_backcompat=True,
        send_seed=True,
        send_size=True,
    )
    shared = types.ModuleType("modules.shared")
    shared.opts = opts
    shared.prompt_styles = NoStyles()
    processing = types.ModuleType("modules.processing")
    processing.old_hires_fix_first_pass_dimensions = first_pass_dimensions_from(os.path.join(root, "modules", "processing.py"))
    paths = types.ModuleType("modules.paths")
    paths.data_path = os.path.abspath(root)
    stand_ins = [shared, processing, paths]
    stand_ins += [types.ModuleType("modules." + name) for name in ("ui_tempdir", "script_callbacks", "images", "errors")]

    gradio = types.ModuleType("gradio")
    gradio.update = lambda **kwargs: dict(kwargs, __type__="update")
    for name in ("Button", "Gallery", "Dropdown"):
        setattr(gradio, name, type(name, (), {}))
    gradio.components = types.SimpleNamespace(Component=type("Component", (), {}))
    sys.modules["gradio"] = gradio
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        pil = types.ModuleType("PIL")
        pil.Image = types.ModuleType("PIL.Image")
        pil.Image.Image = type("Image", (), {})
        sys.modules["PIL"], sys.modules["PIL.Image"] = pil, pil.Image

    sys.path.insert(0, os.path.abspath(root))
    import modules  # noqa: E402  (the checkout's package)

    for mod in stand_ins:
        sys.modules[mod.__name__] = mod
        setattr(modules, mod.__name__.split(".", 1)[1], mod)


def load_a1111(root):
    """Import A1111's modules/infotext_utils.py from the checkout at `root`."""
    for name in ("infotext_utils.py", "infotext_versions.py", "prompt_parser.py", "processing.py"):
        path = os.path.join(root, "modules", name)
        if not os.path.isfile(path):
            sys.exit(f"--a1111 {root}: {path} is missing; give an A1111 checkout or a folder with its modules/{name}")
    install_stand_ins(root)
    import modules.infotext_utils as infotext_utils  # noqa: E402

    return infotext_utils


def main():
    ap = argparse.ArgumentParser(description="Parse infotexts (a JSON list on stdin) with A1111's parse_generation_parameters.")
    ap.add_argument("--a1111", required=True, help="A1111 checkout (or a folder with the modules/ files named above)")
    args = ap.parse_args()
    infotext_utils = load_a1111(args.a1111)
    texts = json.load(sys.stdin)
    with contextlib.redirect_stdout(sys.stderr):
        parsed = [list(map(list, infotext_utils.parse_generation_parameters(t).items())) for t in texts]
        quoted = [infotext_utils.quote(t) for t in texts]
    json.dump({"parsed": parsed, "quoted": quoted}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
