"""PyTorch reference of bloom's MIL heads and their training (eval/mil.ts).

Run with Debian's python3 (torch 1.13, numpy):

    /usr/bin/python3 scripts/oracles/mil_reference.py

Writes tests/fixtures/eval/mil.json (committed; the tests read it and never
need Python). For each head, on a handful of small random bags:

- the initial weights (float32, drawn here with numpy),
- the logits and cross-entropy of every bag (forward),
- the gradient of the summed bag losses w.r.t. every parameter (backward),
- the weights after two epochs of bag-by-bag torch.optim.SGD (momentum 0.9,
  Nesterov) with CosineAnnealingLR(T_max=2) stepped per epoch (optimiser).

Plus the learning rates CosineAnnealingLR gives for lr 1e-3, T_max 150.

The heads are written as the reference writes them: the multi-column head
with one classifier per class in an nn.ModuleList, the gated head after
Ilse et al. (2018) with a linear D -> C classifier. bloom stores the
per-class classifiers stacked ([C, Hc, D], ...); `stacked()` maps names.
Small hidden widths (A=6, Hc=4) keep the fixture small; the maths does not
depend on them.
"""
import json
import os

import numpy as np
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "eval", "mil.json")

D, C, A, HC = 5, 3, 6, 4
BAG_SIZES = [3, 5, 1, 4]
BAG_CODES = [0, 2, 1, 2]
LR, MOMENTUM, EPOCHS = 0.1, 0.9, 2


class MultiColumn(nn.Module):
    """Per-class attention columns and one small classifier per class."""

    def __init__(self):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(D, A), nn.Tanh(), nn.Linear(A, C))
        self.classifier = nn.ModuleList(
            [nn.Sequential(nn.Linear(D, HC), nn.ReLU(), nn.Linear(HC, 1)) for _ in range(C)]
        )

    def forward(self, h):  # h [n, D]
        a = torch.softmax(self.attention(h).transpose(0, 1), dim=1)  # [C, n]
        z = a @ h  # [C, D]
        return torch.cat([self.classifier[c](z[c:c + 1]) for c in range(C)], dim=1)  # [1, C]


class Gated(nn.Module):
    """Gated attention (Ilse et al.) with a linear classifier over C classes."""

    def __init__(self):
        super().__init__()
        self.attention_V = nn.Linear(D, A)
        self.attention_U = nn.Linear(D, A)
        self.attention_w = nn.Linear(A, 1)
        self.classifier = nn.Linear(D, C)

    def forward(self, h):
        s = self.attention_w(torch.tanh(self.attention_V(h)) * torch.sigmoid(self.attention_U(h)))
        a = torch.softmax(s.transpose(0, 1), dim=1)  # [1, n]
        return self.classifier(a @ h)  # [1, C]


def stacked(model, kind, grads=False):
    """bloom's parameter names and layouts (flat float lists)."""
    def val(p):
        t = p.grad if grads else p.data
        return t.detach().numpy().astype(np.float32)

    out = {}
    if kind == "multicolumn":
        sd = dict(model.attention.named_parameters())
        out["attention.0.weight"] = val(sd["0.weight"])
        out["attention.0.bias"] = val(sd["0.bias"])
        out["attention.2.weight"] = val(sd["2.weight"])
        out["attention.2.bias"] = val(sd["2.bias"])
        for i in (0, 2):
            out[f"classifier.{i}.weight"] = np.stack([val(m[i].weight) for m in model.classifier])
            out[f"classifier.{i}.bias"] = np.stack([val(m[i].bias) for m in model.classifier])
    else:
        for name, p in model.named_parameters():
            out[name] = val(p)
    return {k: [float(x) for x in v.ravel()] for k, v in out.items()}


def load(model, kind, flat):
    """Sets the model's parameters from bloom-layout flat lists."""
    with torch.no_grad():
        if kind == "multicolumn":
            att = dict(model.attention.named_parameters())
            for i in (0, 2):
                for part in ("weight", "bias"):
                    p = att[f"{i}.{part}"]
                    p.copy_(torch.tensor(flat[f"attention.{i}.{part}"]).view_as(p))
            for i in (0, 2):
                w = np.array(flat[f"classifier.{i}.weight"], dtype=np.float32)
                b = np.array(flat[f"classifier.{i}.bias"], dtype=np.float32)
                for c, m in enumerate(model.classifier):
                    m[i].weight.copy_(torch.tensor(w.reshape(C, -1)[c]).view_as(m[i].weight))
                    m[i].bias.copy_(torch.tensor(b.reshape(C, -1)[c]).view_as(m[i].bias))
        else:
            for name, p in model.named_parameters():
                p.copy_(torch.tensor(flat[name]).view_as(p))


def case(kind, rng, bags):
    model = MultiColumn() if kind == "multicolumn" else Gated()
    # Weights drawn here (not torch's init) so the fixture fixes them exactly.
    init = {}
    for name, v in stacked(model, kind).items():
        init[name] = [float(x) for x in rng.uniform(-0.6, 0.6, len(v)).astype(np.float32)]
    load(model, kind, init)

    targets = [torch.tensor([c]) for c in BAG_CODES]
    ce = nn.CrossEntropyLoss()
    logits, losses = [], []
    model.zero_grad()
    total = 0
    for h, t in zip(bags, targets):
        z = model(h)
        loss = ce(z, t)
        logits.append([float(x) for x in z.detach().numpy().ravel()])
        losses.append(float(loss))
        total = total + loss
    total.backward()
    grads = stacked(model, kind, grads=True)

    load(model, kind, init)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    lrs = []
    for _ in range(EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        for h, t in zip(bags, targets):
            opt.zero_grad()
            ce(model(h), t).backward()
            opt.step()
        sched.step()
    return {
        "init": init,
        "logits": logits,
        "losses": losses,
        "grads": grads,
        "sgd": {"lrs": lrs, "after": stacked(model, kind)},
    }


def cosine_lrs():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150)
    out = []
    for _ in range(150):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def main():
    torch.manual_seed(0)
    rng = np.random.RandomState(7)
    bags_np = [rng.normal(0, 1, (n, D)).astype(np.float32) for n in BAG_SIZES]
    bags = [torch.tensor(b) for b in bags_np]
    fixture = {
        "meta": {"torch": torch.__version__, "numpy": np.__version__},
        "dim": D,
        "classes": C,
        "attentionHidden": A,
        "classifierHidden": HC,
        "bags": [[float(x) for x in b.ravel()] for b in bags_np],
        "codes": BAG_CODES,
        "lr": LR,
        "momentum": MOMENTUM,
        "epochs": EPOCHS,
        "heads": {k: case(k, rng, bags) for k in ("multicolumn", "gated")},
        "cosine": cosine_lrs(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
