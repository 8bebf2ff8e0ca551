"""README's Python: the Models snippet runs as written, and every `atrous.<module>.<name>` it uses resolves after a
plain `import atrous`."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_models_snippet_runs_as_written():
    section = README.split("\n## Models\n", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]
    namespace: dict = {}
    exec(compile(snippet, "README.md (Models)", "exec"), namespace)  # noqa: S102 (our own README)
    assert tuple(namespace["out"].logits.shape) == (2, 21, 513, 513)
    assert tuple(namespace["out"].aux_logits.shape) == (2, 21, 513, 513)


def test_every_module_path_readme_names_resolves_after_import_atrous():
    paths = sorted(set(re.findall(r"\batrous\.([a-z_]+)\.([A-Za-z_]+)", README)))
    assert ("runtime", "prepare_inference") in paths
    check = "import atrous\n" + "".join(f"atrous.{module}.{name}\n" for module, name in paths)
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_an_unknown_attribute_is_still_an_attribute_error():
    import atrous

    with pytest.raises(AttributeError, match="no_such_module"):
        atrous.no_such_module  # noqa: B018


def _run_onnx_snippet(folder, monkeypatch) -> dict:
    """Run README's ONNX snippet as written in ``folder`` (which holds best.onnx and photo.jpg); its namespace."""
    snippet = re.search(r"```python\n(import numpy as np\nimport onnxruntime.*?)```", README, re.DOTALL)[1]
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(snippet, "README.md (ONNX)", "exec"), namespace)  # noqa: S102 (our own README)
    return namespace


def _labelled_model_and_photo(folder):
    import numpy as np
    from PIL import Image

    import atrous

    # ResNet-18: a randomly initialised MobileNetV3 DeepLabV3 gives the same logits whatever the input (measured),
    # which would let a wrong normalisation pass.
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3).eval()
    model.set_labels(["sky", "road", "car"], None)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    return model


def test_the_onnx_snippet_runs_an_exported_file_as_written(tmp_path, monkeypatch):
    from atrous.export import export_model

    model = _labelled_model_and_photo(tmp_path)
    export_model(model, tmp_path / "best.onnx", format="onnx")
    namespace = _run_onnx_snippet(tmp_path, monkeypatch)
    assert namespace["labels"].shape == (40, 52)
    with torch.no_grad():
        expected = model(model.normalization(torch.from_numpy(namespace["photo"].transpose(2, 0, 1).copy())[None]))
    torch.testing.assert_close(torch.from_numpy(namespace["logits"]), expected.logits, rtol=1e-3, atol=1e-3)
    assert (namespace["labels"] == expected.logits.argmax(1)[0].numpy()).mean() > 0.99


def test_the_onnx_snippet_runs_the_int8_deployment_file_unchanged(tmp_path, monkeypatch):
    """README: the exported int8 file takes uint8 images as the fp32 export does, so the same snippet runs it."""
    from atrous.export import onnxruntime_logits, with_uint8_input
    from atrous.runtime import cached_int8_onnx

    model = _labelled_model_and_photo(tmp_path)
    photos = torch.randint(0, 256, (2, 3, 40, 52), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    network = cached_int8_onnx(model, model.normalization(photos), tmp_path / "cache")
    with_uint8_input(network, model, tmp_path / "best.onnx")
    namespace = _run_onnx_snippet(tmp_path, monkeypatch)
    assert "sky" in namespace["session"].get_modelmeta().custom_metadata_map["class_names"]
    photo = torch.from_numpy(namespace["photo"].transpose(2, 0, 1).copy())[None]
    expected = onnxruntime_logits(network)(model.normalization(photo))
    torch.testing.assert_close(torch.from_numpy(namespace["logits"]), expected, rtol=0, atol=1e-5)
