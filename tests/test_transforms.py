"""Joint augmentation: image and mask stay aligned, mask values survive, padding is 255, shapes are right."""

import random

import numpy as np
import pytest
import torch

from atrous.data.transforms import (
    GaussianBlur,
    PhotometricDistortion,
    RandomScaleCrop,
    ToTensor,
    eval_transforms,
    train_transforms,
)
from atrous.models.normalization import CAFFE_BGR, IMAGENET_RGB

COLORS = np.array([[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10], [200, 200, 200]], np.uint8)


def blocks(height=150, width=200, block=25, seed=0):
    """A mask of constant blocks (with some void blocks) and an image whose colour is a function of the class."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, len(COLORS), (height // block + 1, width // block + 1)).astype(np.uint8)
    grid[rng.random(grid.shape) < 0.1] = 255
    mask = np.kron(grid, np.ones((block, block), np.uint8))[:height, :width]
    image = COLORS[np.where(mask == 255, 0, mask)]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def interior(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood holds one label: bilinear blending cannot touch them."""
    m = mask.float()[None, None]
    high = torch.nn.functional.max_pool2d(m, 2 * radius + 1, 1, radius)
    low = -torch.nn.functional.max_pool2d(-m, 2 * radius + 1, 1, radius)
    return (high == low)[0, 0]


@pytest.mark.parametrize("seed", range(25))
def test_image_and_mask_stay_aligned_and_mask_values_survive(seed):
    random.seed(seed)
    image, mask = blocks(seed=seed)
    transform = train_transforms(normalization=None, crop_size=(97, 131), scale_range=(0.5, 2.0))
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 97, 131) and out_image.dtype == torch.uint8
    assert out_mask.shape == (97, 131) and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= set(np.unique(mask).tolist()) | {255}
    inside = interior(out_mask) & (out_mask != 255)
    assert inside.sum() > 100
    expected = torch.from_numpy(COLORS[out_mask[inside].numpy()]).T.int()
    assert (out_image[:, inside].int() - expected).abs().max() <= 3


def test_nearest_crop_equals_resize_then_crop_for_the_mask():
    random.seed(3)
    _, mask = blocks()
    image = np.zeros((*mask.shape, 3), np.uint8)
    crop = RandomScaleCrop((64, 64), (1.6, 1.6))
    state = random.getstate()
    _, out = crop(*ToTensor()(image, mask))
    random.setstate(state)
    random.uniform(1.6, 1.6)
    window = round(64 / 1.6)
    top, left = random.randint(0, 150 - window), random.randint(0, 200 - window)
    full = torch.nn.functional.interpolate(
        torch.from_numpy(mask)[None, None, top : top + window, left : left + window], size=(64, 64), mode="nearest-exact"
    )[0, 0]
    assert torch.equal(out, full)


def test_small_scales_are_padded_with_ignore_and_zero():
    random.seed(0)
    image, mask = blocks(60, 80)
    transform = train_transforms(normalization=IMAGENET_RGB, crop_size=101, scale_range=(0.5, 0.5), flip=False)
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 101, 101) and out_image.dtype == torch.float32
    assert (out_mask[30:, :] == 255).all() and (out_mask[:, 40:] == 255).all()
    assert (out_image[:, 30:, :] == 0).all() and (out_image[:, :, 40:] == 0).all()  # 0 = the mean, normalised
    assert (out_mask[:30, :40] != 255).any()


def test_flip_mirrors_image_and_mask_together():
    image, mask = blocks(40, 60)
    random.seed(1)
    plain = train_transforms(normalization=None, crop_size=200, scale_range=(1.0, 1.0), flip=False)(image, mask)
    flipped_transform = train_transforms(normalization=None, crop_size=200, scale_range=(1.0, 1.0))
    for seed in range(10):
        random.seed(seed)
        out = flipped_transform(image, mask)
        if not torch.equal(out[1], plain[1]):
            assert torch.equal(out[1][:40, :60], plain[1][:40, :60].flip(-1))
            assert torch.equal(out[0][:, :40, :60], plain[0][:, :40, :60].flip(-1))
            return
    pytest.fail("no flip in 10 draws")


def test_eval_transform_keeps_full_resolution_and_normalises_like_the_model():
    image, mask = blocks(37, 53)
    out_image, out_mask = eval_transforms(normalization=CAFFE_BGR)(image, mask)
    assert out_image.shape == (3, 37, 53) and out_mask.shape == (37, 53)
    torch.testing.assert_close(out_image, CAFFE_BGR(torch.from_numpy(image).permute(2, 0, 1)))
    assert torch.equal(out_mask, torch.from_numpy(mask).long())


def test_photometric_and_blur_touch_only_the_image():
    random.seed(0)
    image, mask = blocks(40, 40)
    tensor_image, tensor_mask = ToTensor()(image, mask)
    changed = 0
    for _ in range(10):
        out_image, out_mask = GaussianBlur(p=1.0)(*PhotometricDistortion()(tensor_image, tensor_mask))
        assert out_mask is tensor_mask and out_image.dtype == torch.uint8 and out_image.shape == tensor_image.shape
        changed += not torch.equal(out_image, tensor_image)
    assert changed >= 9
    full = train_transforms(normalization=IMAGENET_RGB, crop_size=48, photometric=True, blur=True)
    out_image, out_mask = full(image, mask)
    assert out_image.shape == (3, 48, 48) and set(out_mask.unique().tolist()) <= set(np.unique(mask).tolist()) | {255}


def test_normalisation_never_modifies_its_input():
    images = torch.rand(3, 4, 5) * 255
    before = images.clone()
    IMAGENET_RGB(images)
    assert torch.equal(images, before)
