"""Inference modes: degenerate equivalences, sliding-window averaging, TTA, DenseCRF."""

import numpy as np
import pytest
import torch

import atrous
from atrous.inference import InferenceOptions, dense_crf, dense_crf_batch, predict, predict_probabilities, slide_logits


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=4).eval()


def test_sliding_window_covering_the_image_equals_whole_image(model):
    images = torch.randn(2, 3, 45, 61)
    whole = model(images).logits
    torch.testing.assert_close(slide_logits(model, images, crop=64, stride=32), whole)
    assert slide_logits(model, images, crop=61, stride=10).shape == whole.shape


def test_sliding_window_averages_overlapping_windows(model):
    images = torch.randn(1, 3, 40, 70)
    crop, stride = 40, 15
    result = slide_logits(model, images, crop=crop, stride=stride, window_batch=3)
    # Reference: every window separately, summed and counted by hand.
    lefts = [0, 15, 30]
    summed = torch.zeros_like(result)
    count = torch.zeros(1, 1, 40, 70)
    for left in lefts:
        summed[..., left : left + crop] += model(images[..., left : left + crop]).logits
        count[..., left : left + crop] += 1
    torch.testing.assert_close(result, summed / count)


def test_single_scale_without_flip_is_plain_inference(model):
    images = torch.randn(2, 3, 33, 47)
    probabilities = predict_probabilities(model, images, InferenceOptions(scales=(1.0,), flip=False))
    torch.testing.assert_close(probabilities, model(images).logits.softmax(1))
    assert torch.equal(predict(model, images, InferenceOptions()), model(images).logits.argmax(1))


class _Symmetric(torch.nn.Module):
    """A flip-symmetric model: logits depend on each column and its mirror alike."""

    def forward(self, images):
        from atrous.models.segmenter import SegmentationOutput

        symmetric = images + images.flip(-1)
        return SegmentationOutput(torch.cat([symmetric[:, :1], -symmetric[:, :1], symmetric[:, 1:2]], 1), None)


def test_flip_tta_of_a_flip_symmetric_model_is_plain_inference():
    images = torch.randn(2, 3, 20, 31)
    model = _Symmetric()
    flipped = predict_probabilities(model, images, InferenceOptions(flip=True))
    torch.testing.assert_close(flipped, model(images).logits.softmax(1))


def test_multi_scale_flip_outputs_original_resolution_probabilities(model):
    images = torch.randn(1, 3, 37, 53)
    options = InferenceOptions(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True, crop=32, stride=20)
    probabilities = predict_probabilities(model, images, options)
    assert probabilities.shape == (1, 4, 37, 53)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(1, 37, 53))


def _blocky_scene(seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros((60, 80), np.int64)
    for value in (1, 2):
        top, left = rng.integers(5, 30), rng.integers(5, 45)
        labels[top : top + 25, left : left + 30] = value
    colours = np.array([[40, 40, 40], [220, 60, 60], [60, 60, 220]], np.uint8)
    image = np.clip(colours[labels] + rng.normal(0, 8, (60, 80, 3)), 0, 255).astype(np.uint8)
    return image, labels


def _blurred_probabilities(labels, sigma=4.0):
    """Confident inside regions, blurred across boundaries: what an OS8 network's upsampled scores look like."""
    from scipy.ndimage import gaussian_filter

    onehot = np.stack([(labels == c).astype(np.float32) for c in range(3)])
    smooth = np.stack([gaussian_filter(channel, sigma) for channel in onehot]) + 0.05
    shifted = np.roll(smooth, 3, axis=2)  # boundaries displaced as well as blurred
    return shifted / shifted.sum(0, keepdims=True)


def test_dense_crf_improves_miou_on_blurred_boundaries():
    from atrous.metrics import ConfusionMatrix

    before, after = ConfusionMatrix(3), ConfusionMatrix(3)
    scenes = [_blocky_scene(seed) for seed in range(4)]
    probabilities = [_blurred_probabilities(labels) for _, labels in scenes]
    refined = dense_crf_batch([image for image, _ in scenes], probabilities, workers=2)
    for (image, labels), prob, crf_labels in zip(scenes, probabilities, refined):
        before.update(torch.from_numpy(prob.argmax(0)), torch.from_numpy(labels))
        after.update(torch.from_numpy(crf_labels), torch.from_numpy(labels))
    assert after.scores()["mIoU"] > before.scores()["mIoU"] + 0.02, (before.scores()["mIoU"], after.scores()["mIoU"])
    single = dense_crf(scenes[0][0], probabilities[0])
    assert np.array_equal(single, refined[0])


def test_crf_without_the_extra_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError("no pydensecrf")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    # The command that fits this copy (from this clone: its constraints and its [crf] extra), never 'atrous[crf]'.
    with pytest.raises(ImportError, match=r"pydensecrf2: python -m pip install -c .*constraints\.txt\" -e \".*\[crf\]\"$"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32))
