"""Writes tests/fixtures/atrous-0.1.0-c372e5e-*: a checkpoint written by the landed main before the publisher folders
(c372e5e) with that version's own ``model_checkpoint``, and the logits that version computes on a fixed image, for
tests/test_checkpoint_compat.py. Run it with that version on the path, not this one:

    git worktree add /tmp/oldmain c372e5e
    PYTHONPATH=/tmp/oldmain/src python tools/make_checkpoint_fixture.py tests/fixtures
"""
import gzip
import io
import sys

import numpy as np
import torch

import atrous
from atrous.checkpoint import model_checkpoint

torch.manual_seed(0)
model = atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=3, aux=True, output_stride=16)
with torch.no_grad():
    generator = torch.Generator().manual_seed(0)
    for index, (name, tensor) in enumerate(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        if tensor.ndim > 1:  # sparse +-s weights (5% non-zero, He-scaled): random structure that gzip keeps small
            fan_in = tensor[0].numel()
            mask = torch.rand(tensor.shape, generator=generator) < 0.05
            signs = torch.randint(0, 2, tensor.shape, generator=generator) * 2 - 1
            tensor.copy_(mask * signs * (2.0 / (fan_in * 0.05)) ** 0.5)
        elif name.endswith("running_var"):
            tensor.fill_(1.0 + 0.05 * (index % 5))
        elif name.endswith("weight"):
            tensor.fill_(1.0 - 0.05 * (index % 3))
        else:  # biases and running means: one value per tensor, different for each
            tensor.fill_(0.01 * ((index % 7) - 3))
model.set_labels(["background", "cat", "dog"], np.array([[0, 0, 0], [200, 30, 30], [30, 30, 200]], dtype=np.uint8))
contents = model_checkpoint(model)
buffer = io.BytesIO(); torch.save(contents, buffer)
out = sys.argv[1]
with gzip.open(out + "/atrous-0.1.0-c372e5e-deeplabv3plus-r18.pt.gz", "wb", compresslevel=9) as f:
    f.write(buffer.getvalue())
image = torch.linspace(0, 1, 3 * 40 * 48).reshape(1, 3, 40, 48)
with torch.no_grad():
    logits = model.eval()(image).logits
np.savez_compressed(out + "/atrous-0.1.0-c372e5e-deeplabv3plus-r18.logits.npz", image=image.numpy(), logits=logits.numpy())
print(logits.abs().max(), logits.std())
