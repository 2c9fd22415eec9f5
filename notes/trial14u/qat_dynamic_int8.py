"""Feasibility: QAT (dynamic int8 simulated) restores the fused plain int8 MiniLM's fidelity?"""
import copy, os, shutil, sys, time, json
from pathlib import Path
import numpy as np, torch, onnx, onnxruntime as ort
from torch import nn
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("T", "2")))
import deepshrink as ds
from deepshrink.examples import minilm, minilm_dir, stdlib_sentences
from deepshrink.examples.text import training_sentences
from deepshrink.quantize import Int8DynamicConfig
from deepshrink.quantize.api import run_quantize, to_onnx_handle
from deepshrink.backends.onnx import save_onnx
from transformers import AutoTokenizer

W = Path(os.environ.get("WDIR", "/tmp/qat14"))
STEPS = int(os.environ.get("STEPS", "300")); LR = float(os.environ.get("LR", "2e-5")); BS = int(os.environ.get("BS", "32"))
tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
def enc(texts):
    e = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    return {k: np.asarray(e[k]).astype(np.int64) for k in ("input_ids", "attention_mask")}
eval_texts = stdlib_sentences(200, offset=1200)
calib = enc(stdlib_sentences(64))

def fq_act(x):  # DynamicQuantizeLinear per sample: uint8, range includes 0
    dims = tuple(range(1, x.dim()))
    lo = x.detach().amin(dim=dims, keepdim=True).clamp(max=0); hi = x.detach().amax(dim=dims, keepdim=True).clamp(min=0)
    s = ((hi - lo) / 255).clamp(min=1e-8); zp = torch.round(-lo / s).clamp(0, 255)
    q = (torch.clamp(torch.round(x / s) + zp, 0, 255) - zp) * s
    return x + (q - x).detach()
def fq_w(w, amax=None):
    s = ((w.detach().abs().max() if amax is None else amax) / 127).clamp(min=1e-8)
    q = torch.clamp(torch.round(w / s), -127, 127) * s
    return w + (q - w).detach()

class QLinear(nn.Module):
    def __init__(self, lin, group=None):
        super().__init__(); self.lin = lin; self.group = group
    def forward(self, x):
        amax = None
        if self.group is not None:
            amax = torch.stack([g.weight.detach().abs().max() for g in self.group])
            amax = amax.max()
        return nn.functional.linear(fq_act(x), fq_w(self.lin.weight, amax), self.lin.bias)

def add_fq(model):
    for layer in model.encoder.encoder.layer:
        a = layer.attention.self; grp = [a.query, a.key, a.value]
        a.query, a.key, a.value = (QLinear(m, grp) for m in grp)
        layer.attention.output.dense = QLinear(layer.attention.output.dense)
        layer.intermediate.dense = QLinear(layer.intermediate.dense)
        layer.output.dense = QLinear(layer.output.dense)
def strip_fq(model):
    for layer in model.encoder.encoder.layer:
        a = layer.attention.self
        a.query, a.key, a.value = a.query.lin, a.key.lin, a.value.lin
        for parent, name in ((layer.attention.output, "dense"), (layer.intermediate, "dense"), (layer.output, "dense")):
            setattr(parent, name, getattr(parent, name).lin)

def ort_eval(path, ref=None):
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    outs = []
    for t in eval_texts:
        e = enc([t]); outs.append(s.run(None, {n: e[n] for n in names})[0][0])
    outs = np.stack(outs)
    if ref is None: return outs
    c = (outs * ref).sum(1) / np.linalg.norm(outs, axis=1) / np.linalg.norm(ref, axis=1)
    return float(c.mean()), float(c.min())

def quant(folder, dest, per_channel):
    h = to_onnx_handle(ds.load(str(folder)))
    out = run_quantize(h, Int8DynamicConfig(fuse="bert", per_channel=per_channel), data=calib)
    save_onnx(out.handle.model, dest)
    return dest

teacher = minilm()
ref_path = W / "ref.onnx"
if not ref_path.exists(): save_onnx(to_onnx_handle(ds.load(str(minilm_dir()))).model, ref_path)
ref = ort_eval(ref_path)
res = {}
if os.environ.get("BASE", "1") == "1":
    for pc in (False, "auto"):
        p = quant(minilm_dir(), W / f"base_{pc}.onnx", pc); res[f"base pc={pc}"] = ort_eval(p, ref); print(res, flush=True)

student = copy.deepcopy(teacher); add_fq(student); student.train()
for m in student.modules():
    if isinstance(m, nn.Dropout): m.p = 0.0
for p in student.encoder.embeddings.parameters(): p.requires_grad_(False)
opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
train = training_sentences(STEPS * BS + 2000)[2000:]
rng = np.random.default_rng(0); order = rng.permutation(len(train))
t0 = time.time()
for step in range(STEPS):
    texts = [train[i] for i in order[step * BS:(step + 1) * BS]]
    e = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad(): t = teacher(e["input_ids"], e["attention_mask"])
    s = student(e["input_ids"], e["attention_mask"])
    loss = (1 - (s * t).sum(-1)).mean()
    for g in opt.param_groups: g["lr"] = LR * 0.5 * (1 + np.cos(np.pi * step / STEPS))
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 25 == 0: print(step, f"{loss.item():.5f}", f"{time.time()-t0:.0f}s", flush=True)
strip_fq(student); student.eval()
sd = W / "student"; shutil.rmtree(sd, ignore_errors=True); shutil.copytree(minilm_dir(), sd)
student.encoder.save_pretrained(str(sd), safe_serialization=True)
# float fidelity of the fine-tuned student itself
sf = W / "student_f32.onnx"; save_onnx(to_onnx_handle(ds.load(str(sd))).model, sf)
res["student float"] = ort_eval(sf, ref)
for pc in (False, "auto"):
    p = quant(sd, W / f"qat_{pc}.onnx", pc); res[f"qat pc={pc}"] = ort_eval(p, ref)
print(json.dumps(res, indent=1)); print("train s", time.time() - t0)
