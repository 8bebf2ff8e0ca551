import argparse
import json
import subprocess
import sys

import pytest
from torchvision.models import segmentation

import atrous
from atrous import model_table as summary
from atrous.cli import main
from atrous.model_table import count_flops
from atrous.models import TORCHVISION_DEEPLABV3


@pytest.mark.parametrize(
    "tv_name, weights",
    [
        ("deeplabv3_resnet50", segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
        ("deeplabv3_resnet101", segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1),
        ("deeplabv3_mobilenet_v3_large", segmentation.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1),
    ],
)
def test_param_and_flop_counts_match_torchvisions_published_ones(tv_name, weights):
    # torchvision's model cards: parameters and "GFLOPS" (multiply-accumulates) at 520x520 with the aux head.
    params, flops = count_flops(520, TORCHVISION_DEEPLABV3[tv_name])  # 21 classes and the aux head
    assert params == weights.meta["num_params"]
    assert flops / 2e9 == pytest.approx(weights.meta["_ops"], abs=1e-3)


def test_models_command_lists_every_architecture_and_backbone(capsys):
    assert main(["models", "--json", "--size", "129"]) == 0
    rows = json.loads(capsys.readouterr().out)
    pairs = {(row["model"], row["backbone"]) for row in rows}
    assert pairs == {(m, b) for m in atrous.list_models() for b in atrous.list_backbones()}
    # The HRNets' stride is theirs (4), KerasHub's ResNet has no dilation (32).
    v2 = [row for row in rows if row["model"] == "deeplabv2" and not row["backbone"].startswith("hrnet")
          and not row["backbone"].endswith("keras_hub")]  # fmt: skip
    assert {row["output_stride"] for row in v2} == {8}
    v3 = [row for row in rows if row["model"] == "deeplabv3" and row["backbone"] == "resnet50"]
    assert {row["output_stride"] for row in v3} == {8, 16}
    # OS8 costs more than OS16 on the same network.
    by_stride = {row["output_stride"]: row["gflops"] for row in v3}
    assert by_stride[8] > by_stride[16] > 0


def test_models_table_from_the_console_entry_point():
    # The size of the test above: its counts come from the cache the suite's ATROUS_CACHE holds (35 s otherwise).
    result = subprocess.run(
        [sys.executable, "-m", "atrous", "models", "--size", "129"], capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "backbone", "OS"]
    assert any(line.split()[:3] == ["deeplabv3plus", "mobilenet_v3_large", "16"] for line in lines)


def test_the_model_table_is_counted_once_per_model_code_and_torch_version(tmp_path, monkeypatch):
    specs = [("deeplabv3", "resnet18", 8), ("deeplabv3", "resnet18", 16)]
    monkeypatch.setattr(summary, "_table_specs", lambda: specs)
    counted = []
    real_count = summary._count_or_reason

    def count(name, backbone, output_stride, *args):
        counted.append(output_stride)
        return real_count(name, backbone, output_stride, *args)

    monkeypatch.setattr(summary, "_count_or_reason", count)
    rows = summary.model_rows(size=65, num_classes=5, cache_dir=tmp_path)
    assert counted == [8, 16] and [row["output_stride"] for row in rows] == [8, 16]
    assert rows[0]["gflops"] > rows[1]["gflops"] > 0
    assert summary.model_rows(size=65, num_classes=5, cache_dir=tmp_path) == rows and counted == [8, 16]
    summary.model_rows(size=97, num_classes=5, cache_dir=tmp_path)  # another size is counted, beside the first
    assert counted == [8, 16, 8, 16] and len(list((tmp_path / "model_table").iterdir())) == 1
    (cached,) = (tmp_path / "model_table").iterdir()
    cached.write_text("{damaged")
    assert summary.model_rows(size=65, num_classes=5, cache_dir=tmp_path) == rows and counted[4:] == [8, 16]
    monkeypatch.setattr(summary, "_code_fingerprint", lambda: "changed-model-code")
    assert summary.model_rows(size=65, num_classes=5, cache_dir=tmp_path) == rows and counted[6:] == [8, 16]
    assert [path.name for path in (tmp_path / "model_table").iterdir()] == ["changed-model-code.json"]


def test_the_fingerprint_follows_the_model_code(tmp_path, monkeypatch):
    models, publisher = tmp_path / "models", tmp_path / "publishers" / "toy"
    models.mkdir()
    publisher.mkdir(parents=True)
    (models / "heads.py").write_text("RATES = (6, 12, 18)\n")
    (publisher / "head.py").write_text("WIDTH = 256\n")
    monkeypatch.setattr(summary, "__file__", str(tmp_path / "model_table.py"))
    before = summary._code_fingerprint()
    assert summary._code_fingerprint() == before
    (models / "heads.py").write_text("RATES = (12, 24, 36)\n")
    changed_core = summary._code_fingerprint()
    assert changed_core != before
    (publisher / "head.py").write_text("WIDTH = 512\n")  # a publisher's network is model code too
    assert summary._code_fingerprint() != changed_core


def _subcommands(parser: argparse.ArgumentParser, path: str = "atrous"):
    """(command path, parser) for every (sub)command under ``parser``."""
    yield path, parser
    for action in parser._actions:  # argparse keeps its tree private; this test only reads it
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subcommands(child, f"{path} {name}")


def test_every_option_of_every_command_says_what_it_does():
    from atrous.cli import build_parser

    silent = []
    for path, parser in _subcommands(build_parser()):
        for action in parser._actions:
            hidden = action.help == argparse.SUPPRESS
            if action.option_strings and not hidden and not action.help and action.dest != "help":
                silent.append(f"{path} {action.option_strings[0]}")
            elif not action.option_strings and action.dest not in ("command", "action", "run") and not action.help:
                silent.append(f"{path} <{action.dest}>")
    assert silent == []


def test_the_table_counts_each_backbone_once_and_as_the_whole_model_does():
    """A backbone runs once for all the heads counted on it; the sums equal counting each whole model."""
    from atrous.model_table import _Bodies, _count_or_reason

    bodies = _Bodies(65)
    for name in ("deeplabv3", "deeplabv3plus", "deeplabv2", "deeplabv3_google"):
        assert _count_or_reason(name, "resnet18", 16, 65, 5, bodies) == list(
            count_flops(65, name=name, backbone="resnet18", output_stride=16, num_classes=5))
    assert list(bodies.built) == [("resnet18", 16)]
