import argparse
import json
import subprocess
import sys

import pytest
from torchvision.models import segmentation

import atrous
from atrous.cli import main
from atrous.models import TORCHVISION_DEEPLABV3
from atrous.models.summary import count_flops


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
    v2 = [row for row in rows if row["model"] == "deeplabv2" and not row["backbone"].startswith("hrnet")]
    assert {row["output_stride"] for row in v2} == {8}  # the HRNets' stride is theirs: 4
    v3 = [row for row in rows if row["model"] == "deeplabv3" and row["backbone"] == "resnet50"]
    assert {row["output_stride"] for row in v3} == {8, 16}
    # OS8 costs more than OS16 on the same network.
    by_stride = {row["output_stride"]: row["gflops"] for row in v3}
    assert by_stride[8] > by_stride[16] > 0


def test_models_table_from_the_console_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "atrous", "models", "--size", "65"], capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "backbone", "OS"]
    assert any(line.split()[:3] == ["deeplabv3plus", "mobilenet_v3_large", "16"] for line in lines)


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
