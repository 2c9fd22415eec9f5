"""Hypothesis strategies and properties for the input fuzzing of issue 17 (recipes, configs, ONNX files).

Shared by ``tests/test_fuzz_inputs.py`` (a few seconds per target, derandomized) and
``benchmarks/fuzz_inputs.py`` (the long run). Each property accepts a value or a
``deepshrink.errors.DeepshrinkError`` with a non-empty message; any other exception is a defect.
"""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path
from typing import Any

import onnx
from hypothesis import strategies as st

from deepshrink.errors import DeepshrinkError

# ---------------------------------------------------------------------------------------------
# outcome bookkeeping


def rss_bytes() -> int:
    """This process's peak RSS so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def outcome(fn: Any, *args: Any, **kwargs: Any) -> str:
    """``"ok"`` or the DeepshrinkError's class name; anything else propagates (the property fails)."""
    try:
        fn(*args, **kwargs)
    except DeepshrinkError as exc:
        one_line(exc)
        return type(exc).__name__
    return "ok"


def one_line(exc: BaseException) -> None:
    """The CLI prints the message as it is: it must be one non-empty line."""
    msg = str(exc).strip()
    assert msg, f"{type(exc).__name__} with an empty message"
    assert "\n" not in msg, f"{type(exc).__name__} message spans lines: {msg[:300]!r}"


# ---------------------------------------------------------------------------------------------
# values, configs, recipes


def _field_names() -> list[str]:
    import deepshrink.codec.config  # noqa: F401 - registers the config types
    import deepshrink.distill.config  # noqa: F401
    import deepshrink.optimize  # noqa: F401
    import deepshrink.prune.config  # noqa: F401
    import deepshrink.quantize.configs  # noqa: F401
    from deepshrink.core.config import config_types

    names = {f for cls in config_types().values() for f in cls.model_fields}
    return sorted(names | {"scheme", "method", "sparsity", "format", "exporter", "opset", "type"})


FIELDS = _field_names()
WORDS = ["int8-dynamic", "int8-static", "int4-weight", "kmeans", "log2", "auto", "qat", "ptq", "mixed",
         "structured", "magnitude", "gradual", "nm", "deep-compression", "lossless", "minmax", "mse", "entropy",
         "percentile", "moving_average", "gptq", "rtn", "taylor", "activation", "l1", "l2", "onnx", "pt2",
         "dynamo", "torchscript", "layers=2", "width=0.5", "layers=0", "width=2", "width=nan", "*", "fc*", "",
         "nan", "inf", "-1", "1e308", "None", "QDQ", "QOperator", "bert", "none", "fast", "all", "2:4", "0:0"]
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, 4, 7, 8, 16, 128, -1, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 0.999, 1.0, -0.0, 1e-12, float("nan"), float("inf")]),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8), st.integers(-3, 3), st.none(), st.booleans())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(KEYS, inner, max_size=4),
    st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)), max_leaves=10)
PARAMS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), VALUES, max_size=5)


@st.composite
def config_dicts(draw: Any) -> dict[str, Any]:
    """A ``{"type": ..., field: value}`` dict, mostly of a known config type with its own fields."""
    from deepshrink.core.config import config_types

    types = config_types()
    name = draw(st.sampled_from(sorted(types)) | st.text(max_size=10))
    own = sorted(types[name].model_fields) if name in types else []
    own = own or FIELDS  # an unknown name, or a field-less type some test registered
    if name in DEFAULTS and draw(st.booleans()):  # a valid config with one or two fields changed: reaches the validators
        data = dict(DEFAULTS[name])
        for key in draw(st.lists(st.sampled_from(own), min_size=1, max_size=2)):
            data[key] = draw(VALUES | st.sampled_from(VALID_VALUES.get(key, [None])))
        return data
    data = draw(st.dictionaries(st.sampled_from(own), VALUES, max_size=5))
    data.update(draw(st.dictionaries(KEYS, VALUES, max_size=1)))
    if draw(st.booleans()):
        data["type"] = name
    return data


def _defaults() -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
    """Each config type built with its defaults, as a dict; and every field's default values seen."""
    from deepshrink.core.config import config_types

    out: dict[str, dict[str, Any]] = {}
    values: dict[str, list[Any]] = {}
    for name, cls in config_types().items():
        try:
            out[name] = cls().to_dict()
        except Exception:  # noqa: BLE001 - a type with required fields has no default form
            continue
        for k, v in out[name].items():
            if v not in values.setdefault(k, []):
                values[k].append(v)
    return out, values


DEFAULTS, VALID_VALUES = _defaults()


VERBS = ["prune", "quantize", "distill", "pack", "convert", "evaluate", "optimize"]
STEP = st.one_of(
    st.dictionaries(st.sampled_from(VERBS), st.one_of(PARAMS, st.none(), VALUES), min_size=1, max_size=1),
    st.sampled_from(VERBS),
    VALUES)
@st.composite
def builtin_recipe_edits(draw: Any) -> dict[str, Any]:
    """A built-in recipe with one step's parameter changed, added or removed."""
    import copy

    from deepshrink.recipe.steps import BUILTIN

    raw = copy.deepcopy(BUILTIN[draw(st.sampled_from(sorted(BUILTIN)))][1])
    steps = raw["steps"]
    i = draw(st.integers(0, len(steps) - 1))
    step = steps[i] if isinstance(steps[i], dict) else {steps[i]: {}}
    verb = next(iter(step))
    params = dict(step[verb] or {})
    key = draw(st.sampled_from(sorted(params) + FIELDS))
    if draw(st.integers(0, 4)) == 0:
        params.pop(key, None)
    else:
        params[key] = draw(VALUES | st.sampled_from(VALID_VALUES.get(key, [None]) + WORDS))
    steps[i] = {verb: params}
    if draw(st.integers(0, 5)) == 0:
        steps.insert(draw(st.integers(0, len(steps))), draw(STEP))
    return raw


RECIPES = st.one_of(
    builtin_recipe_edits(), builtin_recipe_edits(),
    st.fixed_dictionaries({"steps": st.lists(STEP, max_size=4)},
                          optional={"name": VALUES, "description": VALUES, "extra": VALUES}),
    VALUES)


def check_config_dict(data: dict[str, Any]) -> str:
    """``config_from_dict`` builds a config or refuses with a DeepshrinkError; a built config round-trips."""
    from deepshrink.core.config import config_from_dict

    try:
        cfg = config_from_dict(data)
    except DeepshrinkError as exc:
        one_line(exc)
        return type(exc).__name__
    again = config_from_dict(cfg.to_dict())
    assert again == cfg, (cfg, again)
    assert config_from_dict(__import__("json").loads(cfg.to_json())) == cfg
    return "ok"


def check_verb_config(verb: str, name: str, params: dict[str, Any]) -> str:
    """Each verb's own config entry point (as the CLI and recipes call it) on arbitrary parameters."""
    from deepshrink.codec.config import DeepCompressionConfig, PackConfig
    from deepshrink.core.config import check_keys
    from deepshrink.distill.config import DistillConfig
    from deepshrink.optimize import OptimizeConfig
    from deepshrink.prune.config import config_for_method
    from deepshrink.quantize.configs import config_for_scheme

    def build(cls: Any) -> Any:
        check_keys(params, cls, what=verb)
        return cls.build(**params)

    fns = {"quantize": lambda: config_for_scheme(name, dict(params)),
           "prune": lambda: config_for_method(name, dict(params)),
           "pack": lambda: build(DeepCompressionConfig if name == "deep-compression" else PackConfig),
           "distill": lambda: build(DistillConfig), "optimize": lambda: build(OptimizeConfig)}
    return outcome(fns[verb])


def check_recipe(raw: Any) -> str:
    """``parse_recipe`` builds every step or refuses; a parsed recipe re-parses from its resolved form,
    and ``check_chain`` answers for every source kind."""
    from deepshrink.recipe.steps import check_chain, parse_recipe

    try:
        recipe = parse_recipe(raw, name="fuzz")
    except DeepshrinkError as exc:
        one_line(exc)
        return type(exc).__name__
    again = parse_recipe(recipe.resolved(), name="fuzz")
    assert [s.config for s in again.steps] == [s.config for s in recipe.steps]
    for kind in ("torch", "onnx", "dsz"):
        for has_data, has_labels in ((False, False), (True, False), (True, True)):
            outcome(check_chain, recipe, kind, has_data=has_data, has_labels=has_labels)
    return "ok"


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["steps: [", "steps:\n  - quantize: {scheme: int8-dynamic}\n", "!!python/object:os.system {}",
                     "steps: !!python/object/apply:os.system ['true']", "a: &a [*a]", "steps: &x\n  - *x",
                     "\t", "steps: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                     "%YAML 9.9\n---\nsteps: []", "\ufeffsteps: []", "steps: 1e999", "? [a]\n: b"]))


def check_recipe_file(folder: Path, text: str | bytes) -> str:
    """``load_recipe`` on a file holding ``text`` (YAML, or junk bytes)."""
    from deepshrink.recipe.steps import load_recipe

    path = folder / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        recipe = load_recipe(path)
    except DeepshrinkError as exc:
        one_line(exc)
        return type(exc).__name__
    assert recipe.steps
    return "ok"


# ---------------------------------------------------------------------------------------------
# ONNX files


class OnnxSeeds:
    """The valid models every mutation starts from: a tiny decoder (``examples.decoder_onnx``) with its
    weights in external data, and the same model self-contained."""

    def __init__(self) -> None:
        from deepshrink.backends.onnx import load_onnx
        from deepshrink.examples.decoder_onnx import write_decoder_onnx

        self.folder = Path(tempfile.mkdtemp(prefix="ds_fuzz_onnx."))
        seed = self.folder / "seed.onnx"
        write_decoder_onnx(seed, d_model=16, layers=1, heads=2, vocab=32)
        self.external = onnx.load(str(seed), load_external_data=False)
        self.data = (self.folder / "seed.onnx.data").read_bytes()
        self.inline = load_onnx(seed)
        self.work = self.folder / "case"
        self.work.mkdir()


INTERESTING_INTS = [-1, 0, 1, 2, 3, 7, 16, 32, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1]
LOCATIONS = ["case.onnx.data", "../seed.onnx.data", "/etc/passwd", "", ".", "sub/../case.onnx.data",
             "C:\\x", "case.onnx.data\x00", "nope.data", "case.onnx", "\\\\host\\share", "./case.onnx.data"]
EXT_VALUES = LOCATIONS + ["0", "-1", "4096", "99999999999999999999", "1e3", "0x10", " 1", "١"]
OPS = ["MatMul", "Gemm", "Conv", "Gather", "Add", "Relu", "Reshape", "LayerNormalization", "Softmax", "Loop", "If",
       "Scan", "Constant", "NoSuchOp", "", "MatMulNBits", "QuantizeLinear"]


def _pick(draw: Any, seq: Any) -> Any:
    return seq[draw(st.integers(0, len(seq) - 1))] if len(seq) else None


def _edit(draw: Any, m: onnx.ModelProto) -> str:
    """One field edit through the protobuf API; returns its name."""
    g = m.graph
    kind = draw(st.sampled_from(["dims", "dtype", "drop_init", "dangling", "ext_entry", "ext_location",
                                 "raw_data", "input_type", "input_dim", "op_type", "attribute", "opset", "ir",
                                 "output", "no_nodes", "dup_init", "sparse", "const_attr", "value_info",
                                 "subgraph", "function"]))
    init = _pick(draw, g.initializer)
    node = _pick(draw, g.node)
    if kind == "dims" and init is not None:
        del init.dims[:]
        init.dims.extend(draw(st.lists(st.sampled_from(INTERESTING_INTS), max_size=4)))
    elif kind == "dtype" and init is not None:
        init.data_type = draw(st.integers(0, 30))
    elif kind == "drop_init" and init is not None:
        g.initializer.remove(init)
    elif kind == "dangling" and node is not None and len(node.input):
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(["", "nope", "input_ids"]))
    elif kind == "ext_entry" and init is not None:
        e = init.external_data.add()
        e.key = draw(st.sampled_from(["location", "offset", "length", "checksum", "basepath", "__class__", "x", ""]))
        e.value = draw(st.sampled_from(EXT_VALUES) | st.text(max_size=10))
    elif kind == "ext_location" and init is not None:
        init.data_location = draw(st.sampled_from([0, 1]))  # a closed proto2 enum: no other value can be set
        for e in init.external_data:
            if draw(st.booleans()):
                e.value = draw(st.sampled_from(EXT_VALUES))
    elif kind == "raw_data" and init is not None:
        init.raw_data = draw(st.binary(max_size=64))
    elif kind == "input_type" and len(g.input):
        g.input[0].type.tensor_type.elem_type = draw(st.integers(0, 30))
    elif kind == "input_dim" and len(g.input):
        shape = g.input[0].type.tensor_type.shape
        d = shape.dim.add()
        if draw(st.booleans()):
            d.dim_value = draw(st.sampled_from(INTERESTING_INTS))
        else:
            d.dim_param = draw(st.text(max_size=5))
    elif kind == "op_type" and node is not None:
        node.op_type = draw(st.sampled_from(OPS))
        node.domain = draw(st.sampled_from(["", "", "com.microsoft", "ai.onnx.ml", "bogus"]))
    elif kind == "attribute" and node is not None:
        node.attribute.append(onnx.helper.make_attribute(
            draw(st.sampled_from(["axis", "perm", "to", "value", "x"])),
            draw(st.one_of(st.integers(-5, 2**40), st.floats(allow_nan=True), st.lists(st.integers(-3, 5), min_size=1,
                                                                                           max_size=4)))))
    elif kind == "opset":
        for o in m.opset_import:
            o.version = draw(st.sampled_from([0, 1, 7, 11, 13, 17, 21, 22, 99, 2**40]))
    elif kind == "ir":
        m.ir_version = draw(st.sampled_from([0, 1, 3, 4, 7, 8, 10, 11, 99]))
    elif kind == "output" and len(g.output):
        g.output[0].name = draw(st.sampled_from(["", "nope", "input_ids", "embed"]))
    elif kind == "no_nodes":
        del g.node[:]
    elif kind == "dup_init" and init is not None:
        g.initializer.add().CopyFrom(init)
    elif kind == "sparse":
        s = g.sparse_initializer.add()
        s.values.CopyFrom(onnx.helper.make_tensor("sp", onnx.TensorProto.FLOAT, [2], [1.0, 2.0]))
        s.indices.CopyFrom(onnx.helper.make_tensor("sp_i", onnx.TensorProto.INT64, [2],
                                                   draw(st.lists(st.sampled_from(INTERESTING_INTS), min_size=2,
                                                                 max_size=2))))
        s.dims.extend(draw(st.lists(st.sampled_from(INTERESTING_INTS), max_size=3)))
    elif kind == "const_attr" and node is not None:
        t = onnx.TensorProto(name="c", data_type=draw(st.integers(0, 20)),
                             dims=draw(st.lists(st.sampled_from(INTERESTING_INTS), max_size=3)))
        t.raw_data = draw(st.binary(max_size=16))
        node.attribute.append(onnx.helper.make_attribute("value", t))
    elif kind == "value_info":
        g.value_info.append(onnx.helper.make_tensor_value_info(
            draw(st.sampled_from(["embed", "logits", "x"])), draw(st.integers(0, 30)),
            draw(st.lists(st.sampled_from(INTERESTING_INTS), max_size=3))))
    elif kind == "subgraph" and node is not None:
        sub = onnx.GraphProto(name="sub")
        sub.initializer.add().CopyFrom(init if init is not None else onnx.TensorProto(name="z"))
        node.attribute.append(onnx.helper.make_attribute("then_branch", sub))
    elif kind == "function":
        f = m.functions.add()
        f.name, f.domain = "F", "local"
        if node is not None:
            f.node.add().CopyFrom(node)
    return kind


class Case(tuple):
    """(description, .onnx bytes, external-data bytes or None); printed short when hypothesis reports it."""

    def __repr__(self) -> str:
        return f"Case({self[0]!r}, {len(self[1])} model bytes, {None if self[2] is None else len(self[2])} data bytes)"


@st.composite
def onnx_cases(draw: Any, seeds: OnnxSeeds) -> Case:
    """(description, .onnx bytes, external-data bytes or None): a seed model mutated once or a few times."""
    external = draw(st.booleans())
    m = onnx.ModelProto()
    m.CopyFrom(seeds.external if external else seeds.inline)
    if external:  # the seed names seed.onnx.data; the case is written as case.onnx + case.onnx.data
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "case.onnx.data"
    data = seeds.data if external else None
    how = draw(st.sampled_from(["proto", "proto", "bytes", "data"] if external else ["proto", "proto", "bytes"]))
    if how == "proto":
        kinds = [_edit(draw, m) for _ in range(draw(st.integers(1, 3)))]
        note = "proto:" + "+".join(kinds)
        return Case((note, m.SerializeToString(), data))
    blob = bytearray(m.SerializeToString() if how == "bytes" else data or b"")
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "overwrite", "insert"]))
        ops.append(op)
        if not blob:
            break
        pos = draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del blob[pos:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            blob[pos:pos + len(chunk)] = chunk
        else:
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    if how == "bytes":
        return Case(("bytes:" + "+".join(ops), bytes(blob), data))
    return Case(("data:" + "+".join(ops), m.SerializeToString(), bytes(blob)))


def write_case(seeds: OnnxSeeds, model: bytes, data: bytes | None) -> Path:
    path = seeds.work / "case.onnx"
    path.write_bytes(model)
    side = seeds.work / "case.onnx.data"
    if data is not None:
        side.write_bytes(data)
    elif side.exists():
        side.unlink()
    return path


def check_onnx(seeds: OnnxSeeds, model: bytes, data: bytes | None) -> str:
    """``deepshrink info`` (load, then parameter/size/FLOP counts) on the mutated file: a result or a
    DeepshrinkError."""
    from deepshrink.evaluate.info import info

    return outcome(info, write_case(seeds, model, data))


def mutate_bytes(b: bytes, pos: int, data: bytes, op: str) -> bytes:
    """``b`` with ``data`` written over (``replace``) or inserted at (``insert``) position ``pos`` (taken
    modulo ``len(b) + 1``), or ``max(len(data), 1)`` bytes removed there (``delete``)."""
    pos %= len(b) + 1
    if op == "replace":
        return b[:pos] + data + b[pos + len(data):]
    if op == "insert":
        return b[:pos] + data + b[pos:]
    return b[:pos] + b[pos + max(len(data), 1):]
