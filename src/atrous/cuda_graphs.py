"""Inference on a GPU replayed as CUDA graphs, one per input shape seen more than once.

A DeepLab forward launches a few hundred kernels; on a GPU each launch costs the host some microseconds, and a
ResNet-101 DeepLab at 513x513 in fp16 on an H100 took the same time at batch 1 as at batch 8 (about 15 ms, the
host's launch rate, not the GPU, set it). A CUDA graph records the launches once and replays them in one call, with
the very same kernels, so the logits are those of the eager forward.

A graph is captured for a shape on its second sighting: a folder of images of all different sizes then runs
eagerly at no extra cost, while fixed shapes (evaluation crops, sliding windows, a camera's frames, a batch)
replay. Graphs share one memory pool (they run one at a time and their outputs are copied out at once), and the
``MAX_GRAPHS`` most recently used are kept. A forward that cannot be captured runs eagerly for that shape.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

MAX_GRAPHS = 4
MAX_SIGHTINGS = 1024  # shapes seen once that are remembered (a folder of images of all different sizes)
WARMUP_CALLS = 2  # before a capture, on a side stream: cuDNN's algorithm choice and lazy set-up stay out of the graph


class _Graph:
    """One captured forward: the graph, the input buffer it reads and the output buffer it writes."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, pool):
        self.input = images.clone()
        side = torch.cuda.Stream(images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                forward(self.input)
        torch.cuda.current_stream(images.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = forward(self.input)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.input.copy_(images)
        self.graph.replay()
        return self.output.clone()  # the next replay, of any graph in the pool, overwrites the buffer


class CudaGraphed:
    """``forward`` (images -> tensor, on a CUDA device, no autograd) replayed as a CUDA graph per input shape."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], *, max_graphs: int = MAX_GRAPHS):
        self.forward = forward
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.sightings: Counter = Counter()
        self.uncapturable: set[tuple] = set()
        self._pool = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        key = (tuple(images.shape), images.dtype, images.stride(), images.device)
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            return graph(images)
        if len(self.sightings) >= MAX_SIGHTINGS:
            self.sightings.clear()
        self.sightings[key] += 1
        if self.sightings[key] < 2 or key in self.uncapturable:
            return self.forward(images)
        graph = self._capture(key, images)
        return graph(images) if graph is not None else self.forward(images)

    def _capture(self, key: tuple, images: torch.Tensor) -> _Graph | None:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            graph = _Graph(self.forward, images, self._pool)
        except RuntimeError as error:  # an operation that cannot be recorded (a host sync, say)
            log.warning("input shape %s runs without a CUDA graph: capture failed (%s)", key[0], error)
            self.uncapturable.add(key)
            return None
        self.graphs[key] = graph
        del self.sightings[key]
        if len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return graph
