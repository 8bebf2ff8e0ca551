"""Print, per Hugging Face Hub layout atrous reads, how far its logits are from the publisher's own library: the
largest |atrous - publisher| over the largest logit (at the head's resolution and, for transformers, at the input's
after transformers' post-processing upsampling), and the same with one BatchNorm permuted (the control that must
fail). The publishers' libraries are the test suite's (README's test command installs them: transformers, and
keras-hub on Keras's torch backend without TensorFlow); the models are the tests' random-weight ones.

    python tools/compare_hub_layouts.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch

import atrous


def _permuted(model: atrous.Segmenter, norm: torch.nn.BatchNorm2d) -> None:
    with torch.no_grad():
        for tensor in (norm.running_mean, norm.running_var, norm.weight, norm.bias):
            tensor.copy_(tensor.flip(0))


def transformers_rows() -> list[str]:
    import test_transformers_models as reference

    rows = []
    for kind, output_stride in reference.STRIDES:
        hf = reference.randomised(reference.MODELS[kind](output_stride))
        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder)
            ours = atrous.from_pretrained(folder)
        worst = [reference.worst(hf, ours, kind, size) for size in ((65, 81), (64, 96), (97, 75))]
        head, full = max(w[0] for w in worst), max(w[1] for w in worst)
        last = [module for module in ours.backbone.modules() if isinstance(module, torch.nn.BatchNorm2d)][-1]
        _permuted(ours, last)
        control = max(reference.worst(hf, ours, kind, (64, 96)))
        rows.append(f"| transformers {kind} | OS{output_stride} | {head:.2e} | {full:.2e} | {control:.2e} |")
    return rows


def keras_rows() -> list[str]:
    import test_keras_hub as reference

    rows = []
    for pre_activation in (False, True):
        model = reference.segmenter(pre_activation)
        with tempfile.TemporaryDirectory() as folder:
            model.save_to_preset(folder)
            ours = atrous.from_pretrained(folder)
        result = reference.worst(model, ours)
        _permuted(ours, ours.backbone.stacks[2][0].bn1)
        control = reference.worst(model, ours)
        name = "ResNet-50 v2" if pre_activation else "ResNet-50 v1"
        rows.append(f"| KerasHub DeepLabV3+ {name} (preset folder) | OS32 | {result:.2e} | (same) | {control:.2e} |")
    return rows


if __name__ == "__main__":
    print("| layout | stride | max diff / max logit (head) | (input size) | permuted BN (control) |")
    print("|---|---|---|---|---|")
    for row in transformers_rows() + keras_rows():
        print(row)
