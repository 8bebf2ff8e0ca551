import pytest
import torch

from atrous.bench.agreement import fit_synthetic_model
from atrous.bench.models import randomise_batchnorm  # noqa: F401  (tests import it from here)


@pytest.fixture(scope="module")
def fitted():
    """A DeepLabV3+ ResNet-18 fitted to synthetic images (7 classes), and 8 held-out normalised images: the trained
    network the int8 paths are held to."""
    return fit_synthetic_model(iterations=120, held_out=8)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _inference_cache(tmp_path_factory):
    """Exported ONNX graphs go to a temporary cache, never the user's ~/.cache/atrous."""
    import os

    previous = os.environ.get("ATROUS_CACHE")
    os.environ["ATROUS_CACHE"] = str(tmp_path_factory.mktemp("atrous-cache"))
    yield
    if previous is None:
        os.environ.pop("ATROUS_CACHE", None)
    else:
        os.environ["ATROUS_CACHE"] = previous


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A torch hub cache in ``tmp_path`` (returned: its checkpoints folder) on a machine whose downloads all fail."""
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub" / "checkpoints"
