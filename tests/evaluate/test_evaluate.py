import numpy as np
import pytest
import torch

import deepshrink as ds
from deepshrink.evaluate import accuracy, kl_divergence, measure_latency, param_count
from deepshrink.evaluate.bench import bench
from deepshrink.evaluate.flops import flops


def test_flops_agree_between_torch_and_onnx(digits_mlp, tmp_path):
    h = ds.load(digits_mlp, input_shapes=["x:1x64"])
    want = 2 * (64 * 300 + 300 * 100 + 100 * 10)
    assert flops(h) == want
    ds.convert(h, tmp_path / "mlp.onnx")
    assert flops(ds.load(str(tmp_path / "mlp.onnx"))) == want
    assert param_count(h) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_accuracy_and_kl():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert kl_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(logits, logits[:, ::-1]) > 0.1


def test_measure_latency_interleaves_and_reports_ratio():
    import time

    stats = measure_latency({"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.004)},
                            warmup=1, repeats=8)
    assert stats["fast"].ratio == 1.0 and stats["slow"].ratio > 2.0  # about 3-4 seen
    assert stats["slow"].repeats == 8 and stats["slow"].threads == 2


def test_bench_digits_torch_vs_onnx(digits_cnn, cnn_onnx):
    h = ds.load(digits_cnn, input_shapes=["x:1x1x8x8"])
    res = bench([h, str(cnn_onnx)], data="digits:test", repeats=5, warmup=1)
    torch_row, onnx_row = res.rows
    assert torch_row.accuracy == pytest.approx(onnx_row.accuracy) and onnx_row.accuracy > 0.97  # 0.992 seen
    assert onnx_row.cos_min > 0.99999 and onnx_row.max_abs < 1e-4 and onnx_row.top1_agreement == 1.0
    assert onnx_row.size_bytes > 100_000 and res.samples == 256


def test_bench_counts_the_parameters_a_pytorch_model_s_output_depends_on(minilm_dir):
    """A sentence encoder's BERT pooler never reaches the mean-pooled output (its ONNX export drops it): the
    torch row leaves it out, as prune's and distill's summaries do, and agrees with the ONNX file's weights."""
    h = ds.load(str(minilm_dir))
    res = bench([h], data="sentences:4", repeats=1, warmup=0)
    every = sum(p.numel() for p in h.model.parameters())
    assert res.rows[0].params == every - (384 * 384 + 384) == 22_565_376
    got = ds.info(str(minilm_dir))  # info counts as bench does (was every parameter, the pooler's included)
    assert got["parameters"] == 22_565_376 and 0 < got["nonzero"] <= got["parameters"]


def test_bench_warns_when_not_faster(cnn_onnx, tmp_path):
    res = bench([str(cnn_onnx), str(cnn_onnx)], repeats=5, warmup=1)
    # the same file twice is not a smaller model (a trial's .pt2 of the same weights, 92 parameters fewer, and
    # optimize's unchanged graph were told "a smaller model is not automatically a faster one")
    assert res.warnings == []
    import onnx

    from deepshrink.quantize import Int8DynamicConfig

    small = tmp_path / "int8.onnx"
    ds.quantize(onnx.load(str(cnn_onnx)), Int8DynamicConfig(op_types=["Conv", "Gemm"])).save(small)  # ConvInteger
    res = bench([str(cnn_onnx), str(small)], repeats=5, warmup=1)
    assert res.rows[1].size_bytes < 0.5 * res.rows[0].size_bytes
    assert any("not faster" in w for w in res.warnings) == (res.rows[1].ratio > 0.95)


def test_bench_does_not_warn_about_a_bigger_model(digits_cnn, cnn_onnx):
    h = ds.load(digits_cnn, input_shapes=["x:1x1x8x8"])
    res = bench([str(cnn_onnx), h], repeats=3, warmup=1)  # torch is slower here, but it is no compressed model
    assert res.rows[1].params > res.rows[0].params and res.warnings == []


def test_bench_warns_when_a_model_degrades(digits_mlp, digits):
    import copy

    import torch

    import deepshrink as ds

    bad = copy.deepcopy(digits_mlp)
    with torch.no_grad():
        bad.fc3.weight.mul_(-1)  # the classifier flipped: accuracy collapses
    d = digits.flat()
    good_h, bad_h = (ds.load(m, input_shapes=["x:1x64"]) for m in (digits_mlp, bad))
    res = ds.bench([good_h, bad_h], data={"x": d.x_test, "labels": d.y_test}, repeats=2, names=["fp32", "broken"])
    assert any(w.startswith("broken lost") and "degraded" in w for w in res.warnings), res.warnings
    same = ds.bench([good_h, good_h], data={"x": d.x_test, "labels": d.y_test}, repeats=2)
    assert not any("degraded" in w for w in same.warnings)
    unlabelled = ds.bench([good_h, bad_h], data={"x": d.x_test}, repeats=2, names=["fp32", "broken"])
    assert any("worst cosine fidelity" in w for w in unlabelled.warnings), unlabelled.warnings


def test_bench_fidelity_is_the_worst_output_of_a_model_with_several():
    """A face detector's box/landmark heads beside its class scores: a change to the second output alone shows in
    the fidelity columns (the first output alone was compared before), and the row names that output."""
    import copy

    import torch

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body, self.cls, self.box = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3), torch.nn.Linear(16, 4)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.cls(h), self.box(h)

    good = TwoHeads().eval()
    bad = copy.deepcopy(good)
    with torch.no_grad():
        bad.box.weight.mul_(-1)  # the second head flipped, the first untouched
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    handles = [ds.load(m, input_shapes=["x:1x8"]) for m in (good, bad)]
    res = ds.bench(handles, data={"x": x}, repeats=2, names=["fp32", "box flipped"])
    row = res.rows[1]
    assert row.worst_output is not None and row.cos_min < 0 and row.max_abs > 0.1
    assert row.top1_agreement == 1.0  # the class scores themselves did not move
    assert any("worst cosine fidelity" in w for w in res.warnings), res.warnings
    same = ds.bench([handles[0], handles[0]], data={"x": x}, repeats=2).rows[1]
    assert same.cos_min > 0.9999 and same.worst_output is None
    # with labels, accuracy judges the first output and the fidelity gate still judges the others
    from deepshrink.evaluate.gate import FidelityPolicy, judge

    labels = good(torch.from_numpy(x))[0].argmax(1).numpy()
    labelled = ds.bench(handles, data={"x": x, "labels": labels}, repeats=2, names=["fp32", "box flipped"])
    assert labelled.rows[1].accuracy == 1.0 and any("output" in w and "degraded" in w for w in labelled.warnings)
    verdict = judge(labelled, FidelityPolicy())
    assert not verdict.passed and labelled.rows[1].worst_output in verdict.reason


def test_flops_count_recurrent_and_encoder_layers(tmp_path, gru_classifier):
    import torch

    import deepshrink as ds

    ds.convert(ds.load(gru_classifier, input_shapes=["x:1x8x8"]), tmp_path / "gru.onnx")
    # 8 steps x 3 gates x 48 x (8 + 48) MACs, plus the 48x10 head; x2 for FLOPs
    assert ds.info(tmp_path / "gru.onnx")["flops"] == 2 * (8 * 3 * 48 * (8 + 48) + 480)
    # the PyTorch module too (torch's counter saw the Linear head alone)
    assert ds.info(ds.load(gru_classifier, input_shapes=["x:1x8x8"]))["flops"] == 2 * (8 * 3 * 48 * (8 + 48) + 480)
    # a 2-layer bidirectional LSTM: layer 2 reads both directions of layer 1
    lstm = torch.nn.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)
    rnn_macs = 8 * 2 * 4 * 16 * ((8 + 16) + (32 + 16))
    assert ds.info(ds.load(lstm.eval(), input_shapes=["input:1x8x8"]))["flops"] == 2 * rnn_macs
    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.TransformerEncoderLayer(32, 4, 128, batch_first=True, dropout=0.0)

        def forward(self, x):
            return self.layer(x)

    # q/k/v and output projections, two attention matmuls over 4 heads of 8, the FFN 32-128-32; 8 tokens
    macs = 8 * 32 * 96 + 8 * 32 * 32 + 2 * 4 * 8 * 8 * 8 + 2 * 8 * 32 * 128
    assert ds.info(ds.load(Enc().eval(), input_shapes=["x:1x8x32"]))["flops"] == 2 * macs  # the fast path too


def test_info_says_when_dynamic_dims_were_counted_as_1(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import deepshrink as ds

    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])], [w])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    res = ds.info(path)  # an image input (fixed C, dynamic H/W): counted at 224x224 and said so, not at 1x1
    assert res["flops"] == 2 * 224 * 224 * 4 * 9 and res["flops_shape"] == "x at 1x1x224x224 (the default for image inputs)"
    sized = ds.info(path, input_shapes=["x:1x1x32x32"])
    assert "flops_note" not in sized and "flops_shape" not in sized and sized["flops"] == 2 * 32 * 32 * 4 * 9
    w2 = numpy_helper.from_array(np.ones((8, 4), np.float32), "w2")  # not an image: a sequence of vectors
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w2"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "seq", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "seq", 4])], [w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    res = ds.info(path)
    assert "x" in res["flops_note"] and "--input-shape" in res["flops_note"] and res["flops"] == 2 * 8 * 4


def test_a_matmul_whose_shape_inference_cannot_know_is_counted_from_a_run():
    """Static inference leaves NonZero's count unknown (as it lost a MiniLM's ``[1, 1, 384]`` at one token:
    1.8 M FLOPs counted where a run does 21 M): the counted ops' shapes come from one ONNX Runtime run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deepshrink.evaluate.flops import onnx_macs

    w = numpy_helper.from_array(np.ones((2, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["nz"]),
                               helper.make_node("Cast", ["nz"], ["c"], to=TensorProto.FLOAT),
                               helper.make_node("Transpose", ["c"], ["t"]),
                               helper.make_node("MatMul", ["t", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.zeros((1, 8), np.float32)
    x[0, :5] = 1.0  # five non-zeros: t is [5, 2], y [5, 4]
    assert onnx_macs(m, {"x": x}) == 5 * 4 * 2
    assert onnx.load_from_string(m.SerializeToString()).graph.output[0].name == "y"  # the model itself untouched


def test_an_input_not_given_takes_the_sizes_of_its_named_axes_from_those_given(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import deepshrink as ds

    w = numpy_helper.from_array(np.ones((1, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["ids", "mask"], ["p"]),
                               helper.make_node("Cast", ["p"], ["f"], to=TensorProto.FLOAT),
                               helper.make_node("Unsqueeze", ["f", "ax"], ["u"]),
                               helper.make_node("MatMul", ["u", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"]),
                               helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "sequence"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4])],
                              [w, numpy_helper.from_array(np.array([2], np.int64), "ax")])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    h = ds.load(path, input_shapes=["ids:1x16"])
    assert h.example_inputs["mask"].shape == (1, 16)  # was (1, 1): the graph would not run
    assert ds.info(path, input_shapes=["ids:1x16"])["flops"] == 2 * 16 * 4
    res = ds.info(path)  # counted at one token, and the note names a size of the input's own rank
    assert res["flops"] == 2 * 4 and "--input-shape ids:1x128" in res["flops_note"]


def test_bench_feeds_a_graph_whose_state_input_fixes_the_batch_one_sample_at_a_time():
    """silero VAD v6 declares ``input: [n, 576]`` but ``h: [1, 1, 128]``: the first input's batch is free, so
    bench fed 16 samples at once and ONNX Runtime refused h ("Got invalid dimensions for input: h")."""
    import onnx

    from cli_helpers import state_input_graph

    m = state_input_graph()
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((6, 4)).astype(np.float32), "h": rng.standard_normal((6, 1, 3)).astype(np.float32)}
    res = ds.bench([onnx.ModelProto.FromString(m.SerializeToString()), m], data=data, repeats=2)
    assert res.samples == 6 and res.rows[1].cos_min == pytest.approx(1.0)


def test_bench_without_data_draws_many_samples_for_a_graph_fixed_at_batch_1():
    """Without data, bench (and so every verb's table and gate) judges random samples; a graph fixed at batch 1
    (every TFLite-born model) got one draw of batch 1 — "1 samples of random", a cosine from one sample. Draws
    of its batch are joined instead, each a different sample."""
    import onnx

    from cli_helpers import state_input_graph

    m = state_input_graph()  # x: [n, 4], h: [1, 1, 3] — the graph's batch is 1
    h = ds.load(onnx.ModelProto.FromString(m.SerializeToString()))
    drawn = h.random_samples(16, seed=1)
    assert drawn["x"].shape == (16, 4) and drawn["h"].shape == (16, 1, 3)
    assert len({row.tobytes() for row in drawn["h"]}) == 16  # 16 different draws, not one repeated
    res = ds.bench([m, onnx.ModelProto.FromString(m.SerializeToString())], repeats=2, samples=16)
    assert res.samples == 16 and res.data == "random"


def test_info_on_a_pt2_names_outputs_flops_and_aten_ops(tmp_path, digits_cnn):
    """A torch.export archive with a dynamic batch: info said "ops Module×9, GuardsFn×1" and nothing else."""
    h = ds.load(digits_cnn, input_shapes=["x:1x1x8x8"])
    ds.convert(h, tmp_path / "cnn.pt2")
    got, want = ds.info(tmp_path / "cnn.pt2"), ds.info(h)
    assert [o.split(":")[1].strip() for o in got["outputs"]] == ["float32[d0x10]"]
    assert got["flops"] == want["flops"] > 0
    assert got["ops"]["aten.conv2d"] == sum(1 for m in digits_cnn.modules() if isinstance(m, torch.nn.Conv2d))
    assert "Module" not in got["ops"]


def test_info_with_weights_gives_the_weights_file_s_size(tmp_path, digits_mlp):
    from safetensors.torch import save_file

    path = tmp_path / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in digits_mlp.state_dict().items()}, str(path))
    got = ds.info("deepshrink.examples.digits:DigitsMLP", weights=str(path))
    assert got["weights_file"] == str(path) and got["file_bytes"] == path.stat().st_size  # was None (a factory)
    plain = ds.info("deepshrink.examples.digits:DigitsMLP")
    assert plain["weights_file"] is None and plain["file_bytes"] is None


def test_info_layers_lists_recurrent_nodes_of_an_onnx_file(tmp_path, gru_classifier):
    """`--include`/`--exclude` names for an ONNX speaker encoder: its LSTM nodes were missing from `info --layers`."""
    ds.convert(ds.load(gru_classifier, input_shapes=["x:1x8x8"]), tmp_path / "gru.onnx")
    rows = ds.info(tmp_path / "gru.onnx", layer_names=True)["layers"]
    assert [r["op"] for r in rows] == ["GRU", "Gemm"]  # graph order
    assert rows[0]["params"] == 3 * 48 * (8 + 48) and rows[0]["node"]


def test_a_pt2_counts_the_parameters_its_output_depends_on_as_its_module_does(tmp_path):
    """A `.pt2` graph refuses ``eval()``; the count fell back to every parameter (MiniLM's unused pooler in:
    22,713,216 against its folder's 22,565,376)."""
    import torch
    from torch import nn

    import deepshrink as ds

    class WithPooler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)
            self.pooler = nn.Linear(4, 4)  # computed by nothing the output reads

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    torch.manual_seed(0)
    m = WithPooler().eval()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(2, 8),)), str(path))
    assert ds.info(path)["parameters"] == 8 * 4 + 4  # the pooler's 20 left out
    assert ds.info(m, input_shapes=["x:1x8"])["parameters"] == 8 * 4 + 4


def test_bench_rows_of_two_files_of_one_name_keep_their_folders(cnn_onnx, tmp_path):
    import shutil

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(cnn_onnx, tmp_path / d / "model.onnx")
    res = bench([str(tmp_path / "a" / "model.onnx"), str(tmp_path / "b" / "model.onnx"), str(cnn_onnx)], repeats=1,
                warmup=0)
    assert [r.name for r in res.rows] == [str(tmp_path / "a" / "model.onnx"), str(tmp_path / "b" / "model.onnx"),
                                          cnn_onnx.name]  # a unique name stays short


def test_a_dynamically_quantized_model_is_scored_at_the_batch_it_is_timed_at(digits_mlp, digits, tmp_path):
    """DynamicQuantizeLinear sets one range per call: 32 samples together compute other values than one alone.
    The table said "batch 1" over fidelity measured at batch 32 (trial u: 0.99991 against 0.99971 alone)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from deepshrink.convert.parity import compare_outputs

    ds.convert(ds.load(digits_mlp, input_shapes=["x:1x64"]), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    x = digits.x_test.reshape(len(digits.x_test), -1)[:96].astype(np.float32)
    res = bench([str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")], data={"x": x}, repeats=1, batch=1)

    def run(path, step):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {"x": x[i:i + step]})[0] for i in range(0, len(x), step)])

    alone = compare_outputs(run(tmp_path / "f.onnx", 1), run(tmp_path / "q.onnx", 1))
    together = compare_outputs(run(tmp_path / "f.onnx", 32), run(tmp_path / "q.onnx", 32))
    assert alone.cos_mean != together.cos_mean  # the batch changes the figure: the test can tell them apart
    assert res.rows[1].cos_mean == pytest.approx(alone.cos_mean, abs=1e-9)
