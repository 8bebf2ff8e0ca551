"""A new publisher is one folder plus one registry line: a toy publisher, written here as a package of its own (a
backbone, a head variant, an architecture, a format that recognises its keys, a preset and a zoo entry), registered
with ``atrous.registry.register`` (the line ``PUBLISHERS`` would get), then read with ``from_pretrained`` (its file
and its zoo entry), trained two steps and exported, through atrous's own code paths only."""

import sys
import textwrap

import pytest
import torch

import atrous
from atrous import registry
from atrous.cli import main
from atrous.config import config_from_dict
from atrous.data import SynthSpec, write_synthetic
from atrous.engine import train

NETWORK = '''
from torch import nn

from atrous.models.backbones.base import Backbone, dilate


class ToyNet(Backbone):
    """Four strided 3x3 convs (strides 4, 8, 16, 32 before dilation)."""

    def __init__(self, *, output_stride, multi_grid=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.stage4 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        strides = dilate([[self.stage2], [self.stage3], [self.stage4]], input_stride=4, output_stride=output_stride,
                         multi_grid=multi_grid)
        self.channels = {"low": 8, "aux": 16, "out": 24}
        self.strides = {"low": 4, "aux": strides[1], "out": strides[2]}
        self.output_stride = output_stride

    def forward(self, images):
        low = self.stem(images)
        aux = self.stage3(self.stage2(low))
        return {"low": low, "aux": aux, "out": self.stage4(aux)}
'''

HEAD = '''
import torch
import torch.nn.functional as F
from torch import nn

from atrous.models.layers import ASPP, ConvBNReLU


class ToyHead(nn.Module):
    """ASPP on "out", added (not concatenated) to the projected "low" feature, then a 1x1 classifier."""

    def __init__(self, *, channels, num_classes, atrous_rates):
        super().__init__()
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, out_channels=16)
        self.low_project = ConvBNReLU(channels["low"], 16, 1)
        self.classifier = nn.Conv2d(16, num_classes, 1)

    def forward(self, features):
        low = self.low_project(features["low"])
        context = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(low + context)
'''

FORMAT = '''
from atrous.models.normalization import IMAGENET_RGB
from atrous.models.spec import ModelSpec
from atrous.weights.format import Format
from atrous.weights.keys import classes, rename_all

# Their names -> atrous's: the trunk is the backbone, "seg" the head.
KEYS = [(r"^trunk\\.", "backbone."), (r"^seg\\.", "head.")]


def _recognise(state, source):
    return any(key.startswith("trunk.") for key in state) and "seg.classifier.weight" in state


def _describe(state, contents, source):
    return ModelSpec(name="toyseg", backbone="toy_net", num_classes=classes(state, "seg.classifier.weight")), []


def _translate(state, model):
    return rename_all(state, KEYS), ""


FORMATS = [Format("toy_toyseg", _recognise, _translate, _describe, IMAGENET_RGB)]
'''

FACE = '''
from atrous.models.architecture import Architecture
from atrous.models.backbones.base import BackboneEntry
from atrous.models.heads.deeplab import FCNHead
from atrous.models.normalization import IMAGENET_RGB
from atrous.models.spec import ModelSpec
from atrous.publishers import Publisher, zoo_beside

from .format import FORMATS
from .head import ToyHead
from .network import ToyNet

PUBLISHER = Publisher(
    "toy/toy-seg",
    backbones={"toy_net": BackboneEntry(build=ToyNet, normalization=IMAGENET_RGB)},
    architectures={"toyseg": Architecture(ToyHead, FCNHead, backbone="toy_net", output_stride=16, separable=False)},
    formats=FORMATS,
    presets={"toyseg_toy_net": ModelSpec(name="toyseg", backbone="toy_net", num_classes=3)},
    zoo=zoo_beside(__file__),
)
'''

ZOO = '''
toyseg_demo:
  publisher: toy/toy-seg
  url: https://example.invalid/toyseg_demo.pth
  hash: null
  dataset: a toy's
  spec: toyseg_toy_net
'''


@pytest.fixture
def toy_publisher(tmp_path, monkeypatch):
    """The toy publisher's folder, imported and registered; the registries are put back afterwards."""
    folder = tmp_path / "publishers" / "toypub"
    folder.mkdir(parents=True)
    for name, text in {"network.py": NETWORK, "head.py": HEAD, "format.py": FORMAT, "__init__.py": FACE,
                       "zoo.yaml": ZOO}.items():  # fmt: skip
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(folder.parent))
    saved = {name: getattr(registry, name).copy() for name in ("BACKBONES", "MODELS", "PRESETS", "FORMATS",
                                                                 "_PUBLISHERS_FORMATS", "PUBLISHERS")}  # fmt: skip
    import toypub

    registry.register(toypub.PUBLISHER)  # the one registry line
    yield toypub
    for name, value in saved.items():  # in place: the modules that imported the tables hold these objects
        table = getattr(registry, name)
        if isinstance(table, dict):
            table.clear()
            table.update(value)
        else:
            table[:] = value
    registry.zoo.cache_clear()
    sys.modules.pop("toypub", None)
    for module in [name for name in sys.modules if name.startswith("toypub.")]:
        sys.modules.pop(module)


def _their_file(path, num_classes=3, seed=0):
    """A file as the toy publisher writes it: its own key names, no atrous description; and the model it holds."""
    torch.manual_seed(seed)
    model = atrous.build_model("toyseg", num_classes=num_classes).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.2 + (1.0 if tensor.ndim == 1 else 0.0))
    theirs = {key.replace("backbone.", "trunk.", 1).replace("head.", "seg.", 1): value
              for key, value in model.state_dict().items() if not key.startswith("aux_head.")}  # fmt: skip
    torch.save({"state_dict": theirs, "meta": {"epoch": 3}}, path)
    return model


def test_a_toy_publisher_is_one_folder_plus_one_registry_line(toy_publisher, tmp_path, monkeypatch, capsys):
    assert "toyseg" in atrous.list_models() and "toy_net" in atrous.list_backbones()
    image = torch.rand(1, 3, 64, 64)

    path = tmp_path / "toyseg_demo.pth"
    reference = _their_file(path)
    model = atrous.from_pretrained(path)  # recognised by its keys, described by its format, translated, loaded
    assert model.spec.name == "toyseg" and model.spec.backbone == "toy_net" and model.num_classes == 3
    with torch.no_grad():
        torch.testing.assert_close(model(image).logits, reference(image).logits, rtol=0, atol=1e-5)
        wrong = atrous.build_model("toyseg", num_classes=3).eval()
        assert (wrong(image).logits - reference(image).logits).abs().max() > 1e-3  # negative control: fresh weights

    # Its zoo entry, from the torch hub cache (as a download would leave it; nothing is downloaded).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "toyseg_demo.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded a cached file"))
    assert "toyseg_demo" in registry.zoo()
    with torch.no_grad():
        torch.testing.assert_close(atrous.from_pretrained("toyseg_demo")(image).logits, reference(image).logits)

    # Two training steps from the publisher's file (its classifier replaced for the dataset's 7 classes), then export.
    root = tmp_path / "synthetic"
    write_synthetic(root, SynthSpec(seed=4, train=8, val=3, size=40), progress=False)
    config = config_from_dict({
        "name": "run", "out_dir": str(tmp_path / "runs"),
        "model": {"name": "toyseg", "backbone": "toy_net", "num_classes": 7, "aux": True, "weights": str(path)},
        "data": {"dataset": "synthetic", "root": str(root), "crop_size": 32, "batch_size": 4, "val_batch_size": 1,
                 "workers": 0},
        "train": {"iterations": 2, "val_every": 2, "save_every": 2, "log_every": 1, "device": "cpu"},
    })  # fmt: skip
    assert train(config)["iteration"] == 2
    checkpoint = config.run_dir / "checkpoints" / "last.pt"
    assert main(["export", "--weights", str(checkpoint), "--out", str(tmp_path / "toy.onnx")]) == 0
    assert "parity OK" in capsys.readouterr().out


def test_a_publisher_cannot_take_a_name_already_registered(toy_publisher):
    with pytest.raises(atrous.ConfigError, match=r"registers names already taken: \['toy_net', 'toyseg'"):
        registry.register(toy_publisher.PUBLISHER)
