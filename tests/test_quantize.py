"""The int8 helpers a Python user calls as the commands do: which images calibrate (``calibration_images``,
``calibration_files``) and how often the int8 graph predicts the fp32 graph's class (``int8_agreement``, the one
figure ``atrous eval --runtime int8`` and ``atrous export --int8`` print)."""

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.models.segmenter import SegmentationOutput
from atrous.quantize import (
    CALIBRATION_IMAGES,
    calibration_files,
    calibration_images,
    evenly_spaced,
    int8_agreement,
)


@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (1, 3, 4, 5), (2, 7, 6, 3), (3, 21, 9, 11)])
def test_int8_agreement_is_the_fraction_of_pixels_given_the_same_class(shape):
    rng = np.random.default_rng(sum(shape))
    fp32 = rng.normal(size=shape).astype(np.float32)
    int8 = (fp32 + rng.normal(scale=0.5, size=shape)).astype(np.float32)  # some classes change, most stay
    expected = float(np.mean(fp32.argmax(1) == int8.argmax(1)))
    images = torch.zeros(shape[0], 3, *shape[2:])
    got = int8_agreement(lambda _: torch.from_numpy(int8), lambda _: torch.from_numpy(fp32), images)
    assert got == pytest.approx(expected, abs=1e-12)
    assert int8_agreement(lambda _: torch.from_numpy(fp32), lambda _: torch.from_numpy(fp32), images) == 1.0
    # Negative control: every pixel's class moved to the next one (logits rolled along the class axis) agrees nowhere.
    rolled = np.roll(fp32, 1, axis=1)
    assert int8_agreement(lambda _: torch.from_numpy(rolled), lambda _: torch.from_numpy(fp32), images) == 0.0


def test_int8_agreement_gives_each_graph_its_own_input_and_reads_outputs_that_carry_logits():
    images, photos = torch.randn(2, 3, 4, 4), torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    seen = {}

    def graph(name, logits):
        def run(inputs):
            seen[name] = inputs
            return SegmentationOutput(logits, None) if name == "fp32" else logits

        return run

    logits = torch.randn(2, 5, 4, 4)
    assert int8_agreement(graph("int8", logits), graph("fp32", logits), images, int8_images=photos) == 1.0
    assert seen["int8"] is photos and seen["fp32"] is images
    int8_agreement(graph("int8", logits), graph("fp32", logits), images)
    assert seen["int8"] is images
    with pytest.raises(ValueError, match="differ in shape"):
        int8_agreement(graph("int8", logits[:, :, :2]), graph("fp32", logits), images)


def test_calibration_images_are_spread_evenly_over_a_dataset():
    dataset = [(np.full((2, 3, 3), index, dtype=np.uint8), None) for index in range(100)]
    chosen = calibration_images(dataset)
    assert len(chosen) == CALIBRATION_IMAGES
    assert [int(image[0, 0, 0]) for image in chosen] == evenly_spaced(CALIBRATION_IMAGES, 100)
    assert chosen[0][0, 0, 0] == 0 and chosen[-1][0, 0, 0] == 99  # first and last included
    few = dataset[:5]
    assert [int(image[0, 0, 0]) for image in calibration_images(few)] == [0, 1, 2, 3, 4]


def test_calibration_files_are_read_as_uint8_rgb(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    paths = []
    for index, array in enumerate(arrays):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(array).save(paths[-1])
    read = calibration_files(paths)
    assert len(read) == 3 and all(image.dtype == np.uint8 and image.shape == (5, 7, 3) for image in read)
    assert all(np.array_equal(image, array) for image, array in zip(read, arrays))
