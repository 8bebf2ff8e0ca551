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
