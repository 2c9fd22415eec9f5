"""Long fuzz run of the input parsers (issue 17): recipes, config loaders, mutated ONNX files.

The strategies and properties are the test suite's (``tests/fuzz_helpers.py``; the suite runs a
few hundred derandomized examples per target in seconds): here hypothesis draws fresh random
examples, target after target, until the time is up. Property: every input gives a value or a
``deepshrink.errors.DeepshrinkError`` — any other exception, a hypothesis deadline overrun (a
hang), or a peak-RSS jump of more than 512 MiB on one input is a failure, reported with
hypothesis's shrunk falsifying example.

    python benchmarks/fuzz_inputs.py --seconds 600
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from _common import md_table, this_command, write_result  # noqa: E402

RSS_GROWTH = 512 << 20


def _targets(counts: Counter) -> dict:
    from hypothesis import strategies as st

    from fuzz_helpers import (
        PARAMS,
        RECIPES,
        YAML_TEXT,
        OnnxSeeds,
        check_config_dict,
        check_onnx,
        check_recipe,
        check_recipe_file,
        check_verb_config,
        config_dicts,
        onnx_cases,
        rss_bytes,
    )

    seeds = OnnxSeeds()
    folder = Path(tempfile.mkdtemp(prefix="fuzz_recipe."))
    names = {"quantize": ["int8-dynamic", "int8-static", "int4-weight", "kmeans", "log2", "auto", "qat", "ptq",
                          "mixed", "bogus"],
             "prune": ["magnitude", "gradual", "nm", "structured", "bogus"],
             "pack": ["deep-compression", "lossless"], "distill": ["-"], "optimize": ["-"]}

    def config_from_dict(data):
        counts[("config_from_dict", check_config_dict(data))] += 1

    def verb_configs(verb, data):
        params = {str(k): v for k, v in data.draw(PARAMS).items()}
        counts[(f"{verb} config", check_verb_config(verb, data.draw(st.sampled_from(names[verb])), params))] += 1

    def parse_recipe(raw):
        counts[("parse_recipe", check_recipe(raw))] += 1

    def load_recipe_file(text):
        counts[("load_recipe (YAML file)", check_recipe_file(folder, text))] += 1

    def onnx_info(case):
        before = rss_bytes()
        what, model, side = case
        counts[(f"ONNX {what.split(':')[0]}", check_onnx(seeds, model, side))] += 1
        assert rss_bytes() - before < RSS_GROWTH, f"peak RSS grew by {(rss_bytes() - before) >> 20} MiB"

    yaml_text = st.one_of(YAML_TEXT, st.binary(max_size=64),
                          RECIPES.map(lambda r: __import__("yaml").safe_dump(r, allow_unicode=True)))
    return {"config_from_dict": (config_from_dict, (config_dicts(),)),
            "verb configs": (verb_configs, (st.sampled_from(sorted(names)), st.data())),
            "parse_recipe": (parse_recipe, (RECIPES,)), "load_recipe": (load_recipe_file, (yaml_text,)),
            "onnx": (onnx_info, (onnx_cases(seeds),))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--batch", type=int, default=200, help="examples per hypothesis run")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from hypothesis import HealthCheck, given, settings

    counts: Counter = Counter()
    targets = _targets(counts)
    cfg = settings(max_examples=args.batch, deadline=10000, derandomize=False, database=None,
                   suppress_health_check=list(HealthCheck))
    failures: list[str] = []
    end = time.time() + args.seconds
    runs = 0
    while time.time() < end:
        for name, (fn, strategies) in targets.items():
            if time.time() >= end:
                break
            try:
                cfg(given(*strategies)(fn))()
            except Exception as exc:  # noqa: BLE001 - a property failure, shrunk by hypothesis
                for e in getattr(exc, "exceptions", [exc]):
                    notes = " | ".join(getattr(e, "__notes__", []))[:600]
                    first = str(e).splitlines()[0][:200] if str(e) else ""
                    failures.append(f"{name}: {type(e).__name__}: {first} — {notes}")
                    print(failures[-1], flush=True)
            runs += 1
    total = sum(counts.values())
    rows = [[target, outcome, f"{c:,}"] for (target, outcome), c in sorted(counts.items())]
    body = (f"{total:,} generated inputs in {args.seconds:.0f} s ({runs} hypothesis runs of up to {args.batch} "
            f"examples, random seeds); failures: {len(failures)}.\n\n"
            "Targets: `config_from_dict` (every registered config type, own and foreign fields, arbitrary "
            "values; built configs must round-trip through `to_dict` and JSON), each verb's config entry point "
            "(`config_for_scheme`, `config_for_method`, pack / distill / optimize configs), `parse_recipe` on "
            "arbitrary structures (a parsed recipe must re-parse from `resolved()` to the same configs; "
            "`check_chain` for every source kind), `load_recipe` on YAML text / junk bytes / hostile YAML tags, "
            "and `deepshrink info` on a small decoder ONNX (with and without external data) mutated by protobuf "
            "field edits (dims, dtypes, dangling inputs, external-data entries, opsets, subgraphs, functions, "
            "sparse initializers), bit flips / truncations / inserted bytes of the .onnx, or of its external "
            "data file. Outcome `ok` = loaded or built; otherwise the DeepshrinkError raised (its message must be "
            "one line).\n\n"
            "Defects the fuzzer found while this run was built, each fixed with a regression test in "
            "`tests/test_fuzz_inputs.py`: an initializer whose raw bytes disagree with its dims (a scalar shape, "
            "a huge dim) or dtype (STRING or UNDEFINED as raw or external data) loaded, and `info` then failed "
            "inside numpy (ValueError, TypeError); `info` on a graph ONNX Runtime's symbolic shape inference "
            "cannot complete left `sym_shape_infer_temp.onnx` and one uuid-named `.data` file per tensor in the "
            "current folder; `config_from_dict` with a non-string `type` raised TypeError; a recipe with a "
            "control character printed a two-line YAML error; an `evaluate` step with a non-string key and a "
            "`pack` step whose method is a list raised TypeError; a name or external-data entry holding invalid "
            "UTF-8 (protobuf returns bytes) raised TypeError in the external-data check.\n\n"
            + md_table(["target", "outcome", "count"], rows)
            + ("\n\nFailures:\n" + "\n".join(f"- {f}" for f in failures[:30]) if failures else ""))
    if args.no_write:
        print(body)
    else:
        write_result("fuzz_inputs", "Input fuzzing: recipes, configs, mutated ONNX files (issue 17)", this_command(),
                     body)
        print(body)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
