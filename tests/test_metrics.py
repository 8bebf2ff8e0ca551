"""Metrics against a NumPy reference and torchmetrics on randomised inputs; exactness under DDP."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atrous.metrics import ConfusionMatrix, scores_from_matrix


def numpy_reference(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    valid = target != 255
    p, t = prediction[valid], target[valid]
    iou, accuracy = [], []
    for c in range(num_classes):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        accuracy.append(tp / (tp + fn) if tp + fn else math.nan)
    return {
        "per_class_iou": iou,
        "mIoU": float(np.nanmean(iou)) if not all(map(math.isnan, iou)) else math.nan,
        "pixel_accuracy": float(np.mean(p == t)) if len(t) else math.nan,
        "mean_class_accuracy": float(np.nanmean(accuracy)) if not all(map(math.isnan, accuracy)) else math.nan,
    }


@st.composite
def labelled_batches(draw):
    num_classes = draw(st.integers(1, 12))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 20)), draw(st.integers(1, 20)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # Some classes absent on purpose: draw from a random subset.
    used = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    target = rng.choice(used, size=shape)
    target[rng.random(shape) < draw(st.floats(0, 0.5))] = 255
    prediction = np.where(rng.random(shape) < 0.6, np.where(target == 255, 0, target), rng.integers(0, num_classes, shape))
    return prediction, target, num_classes


@settings(max_examples=150, deadline=None)
@given(labelled_batches())
def test_scores_match_numpy_reference(batch):
    prediction, target, num_classes = batch
    matrix = ConfusionMatrix(num_classes)
    half = prediction.shape[0] // 2
    matrix.update(torch.from_numpy(prediction[:half]), torch.from_numpy(target[:half]))  # streaming: two updates
    matrix.update(torch.from_numpy(prediction[half:]), torch.from_numpy(target[half:]))
    scores, reference = matrix.scores(), numpy_reference(prediction, target, num_classes)
    np.testing.assert_allclose(scores["per_class_iou"], reference["per_class_iou"], equal_nan=True)
    for key in ("mIoU", "pixel_accuracy", "mean_class_accuracy"):
        assert scores[key] == pytest.approx(reference[key], nan_ok=True), key


@settings(max_examples=60, deadline=None)
@given(labelled_batches())
def test_per_class_iou_and_accuracy_match_torchmetrics(batch):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    prediction, target, num_classes = batch
    if num_classes < 2:
        return
    p, t = torch.from_numpy(prediction), torch.from_numpy(target)
    matrix = ConfusionMatrix(num_classes)
    matrix.update(p, t)
    scores = matrix.scores()
    jaccard = MulticlassJaccardIndex(num_classes, average="none", ignore_index=255)(p, t)
    present = ~torch.tensor(scores["per_class_iou"], dtype=torch.float64).isnan()
    torch.testing.assert_close(torch.tensor(scores["per_class_iou"], dtype=torch.float64)[present], jaccard.double()[present])
    if (t != 255).any():
        accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=255)(p, t)
        assert scores["pixel_accuracy"] == pytest.approx(accuracy.item(), abs=1e-6)


def test_absent_classes_are_nan_and_left_out_of_the_means():
    matrix = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    scores = scores_from_matrix(matrix)
    assert math.isnan(scores["per_class_iou"][2])
    assert scores["mIoU"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert scores["fwIoU"] == pytest.approx(6 / 11 * 5 / 8 + 5 / 11 * 3 / 6)
    assert scores["per_class_dice"][0] == pytest.approx(10 / 13)


def test_out_of_range_ground_truth_raises():
    matrix = ConfusionMatrix(21)
    target = torch.zeros(4, 4, dtype=torch.long)
    target[1, 1] = 40
    with pytest.raises(ValueError, match=r"ground-truth values \[40\] are outside \[0, 21\)"):
        matrix.update(torch.zeros(4, 4, dtype=torch.long), target)
    target[1, 1] = -1
    with pytest.raises(ValueError, match=r"\[-1\]"):
        matrix.update(torch.zeros(4, 4, dtype=torch.long), target)
    assert matrix.matrix.sum() == 0  # nothing was counted


def _ddp_worker(rank, world_size, port, dataset_size, queue):
    import torch.distributed as dist

    from atrous.evaluation import evaluate

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    result = evaluate(_Threshold(), _Images(dataset_size), device=torch.device("cpu"), rank=rank,
                      world_size=world_size, progress=False)  # fmt: skip
    if rank == 0:
        queue.put(result.matrix.matrix.tolist())
    dist.destroy_process_group()


class _Images(torch.utils.data.Dataset):
    """Deterministic uint8 images and masks, as datasets give them; sample i differs from every other sample."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (6, 7, 3), generator=generator, dtype=torch.uint8).numpy()
        mask = torch.randint(0, 3, (6, 7), generator=generator, dtype=torch.uint8).numpy()
        mask[0, 0] = 255
        return image, mask


class _Threshold(torch.nn.Module):
    num_classes = 3

    @staticmethod
    def normalization(images):
        return images.float() / 255

    def forward(self, images):
        from atrous.models.segmenter import SegmentationOutput

        return SegmentationOutput(images * torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1), None)


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_is_exact_under_ddp(world_size):
    import multiprocessing
    import socket

    from atrous.evaluation import evaluate

    reference = evaluate(_Threshold(), _Images(7), device=torch.device("cpu"), progress=False).matrix
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_ddp_worker, args=(r, world_size, port, 7, queue)) for r in range(world_size)]
    for process in processes:
        process.start()
    result = queue.get(timeout=120)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert result == reference.matrix.tolist()
    assert sum(map(sum, result)) == 7 * (6 * 7 - 1)  # every valid pixel counted exactly once
