"""CUDA-graph replay of GPU inference (atrous.cuda_graphs): when a shape is captured, which graphs are kept, the
eager fallback, and — where CUDA is present — the replayed logits against the eager forward's. The bookkeeping runs
everywhere (a recording stand-in for the capture); the graphs themselves only on a GPU."""

from typing import ClassVar

import pytest
import torch

from atrous import cuda_graphs
from atrous.cuda_graphs import CudaGraphed
from atrous.models import build_model
from atrous.runtime import prepare_inference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class _RecordedGraph:
    """Stands in for a captured graph on a machine without CUDA: remembers what it was built from, runs eagerly."""

    built: ClassVar[list[tuple]] = []

    def __init__(self, forward, images, pool):
        self.forward, self.shape = forward, tuple(images.shape)
        _RecordedGraph.built.append(self.shape)

    def __call__(self, images):
        return self.forward(images) + 1000  # marks a replayed result


@pytest.fixture
def recorded(monkeypatch):
    _RecordedGraph.built = []
    monkeypatch.setattr(cuda_graphs, "_Graph", _RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    return _RecordedGraph.built


def test_a_shape_is_captured_on_its_second_sighting_and_replayed_after(recorded):
    graphed = CudaGraphed(lambda images: images * 2)
    image = torch.ones(1, 3, 4, 4)
    assert graphed(image).max() == 2 and recorded == []  # first sighting: eager
    assert graphed(image).max() == 1002 and recorded == [(1, 3, 4, 4)]  # second: captured, replayed
    assert graphed(image).max() == 1002 and recorded == [(1, 3, 4, 4)]  # then replayed, never captured again
    assert graphed(torch.ones(1, 3, 5, 4)).max() == 2  # another shape starts eager


def test_only_the_most_recently_used_graphs_are_kept(recorded):
    graphed = CudaGraphed(lambda images: images, max_graphs=2)
    shapes = [(1, 3, 4, 4), (1, 3, 5, 5), (1, 3, 6, 6)]
    for shape in shapes[:2] * 2:
        graphed(torch.zeros(shape))
    graphed(torch.zeros(shapes[0]))  # the first is used again: the second is now the oldest
    for _ in range(2):
        graphed(torch.zeros(shapes[2]))
    assert [key[0] for key in graphed.graphs] == [shapes[0], shapes[2]]
    assert recorded == [shapes[0], shapes[1], shapes[2]]


def test_a_forward_that_cannot_be_captured_runs_eagerly_for_that_shape(monkeypatch, caplog):
    def refuse(forward, images, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "_Graph", refuse)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    graphed = CudaGraphed(lambda images: images * 2)
    image = torch.ones(2, 3, 4, 4)
    results = [graphed(image) for _ in range(3)]
    assert all(torch.equal(result, image * 2) for result in results)
    assert graphed.graphs == {} and len(graphed.uncapturable) == 1
    assert "(2, 3, 4, 4) runs without a CUDA graph: capture failed" in caplog.text


def test_the_cpu_runtimes_are_not_graphed():
    model = build_model("deeplabv3", backbone="resnet18", num_classes=3, output_stride=16)
    for runtime in ("eager", "channels_last", "bf16"):
        assert not isinstance(prepare_inference(model, runtime, device=torch.device("cpu"))._logits, CudaGraphed)


@needs_cuda
@pytest.mark.parametrize("runtime", ["eager", "channels_last", "fp16"])
def test_replayed_graphs_give_the_eager_logits_and_outputs_that_stay_put(runtime):
    """Every GPU runtime: the replayed logits are the eager forward's; a result is a copy, not the graph's buffer
    (the next replay leaves it as it was); a new shape still runs."""
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", backbone="resnet18", num_classes=5, output_stride=16).eval()
    device = torch.device("cuda")
    graphed = prepare_inference(model, runtime, device=device)
    assert isinstance(graphed._logits, CudaGraphed)
    eager = graphed._logits.forward
    first, second = (torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(s)).to(device) for s in (1, 2))
    graphed(first), graphed(first)  # the second call captures
    assert len(graphed._logits.graphs) == 1
    replayed_first = graphed(first).logits
    replayed_second = graphed(second).logits
    tolerance = {"atol": 1e-2, "rtol": 1e-2} if runtime == "fp16" else {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(replayed_first, eager(first).float(), **tolerance)
    torch.testing.assert_close(replayed_second, eager(second).float(), **tolerance)
    assert not torch.allclose(replayed_first, replayed_second)  # the first result was not overwritten
    other = torch.randn(1, 3, 64, 80, device=device)
    torch.testing.assert_close(graphed(other).logits, eager(other).float(), **tolerance)
