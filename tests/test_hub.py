"""The Hugging Face Hub both ways, without a network: ``save_pretrained`` folders read back exactly, ``hf-hub:`` names
answered from a cache laid out as huggingface_hub lays it out, and uploads checked up to the commit they would send."""

import json
import socket
import typing
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

import atrous
from atrous.cli import main
from atrous.errors import ConfigError, WeightsError
from atrous.registry import MODELS
from atrous.weights import hub as hub_module
from atrous.weights.hub import hub_repo

REVISION = "0123456789abcdef0123456789abcdef01234567"
# The smallest backbone each architecture takes (its family's own where it has one).
SMALL_BACKBONES = {"deeplabv3_google": "mobilenet_v2_dm05_google", "deeplabv3_google_slim": "mobilenet_edgetpu_dm075_google",
                   "deeplabv3plus_mnv3_google": "mobilenet_v3_small_seg_google",
                   "deeplabv3plus_dpc_google": "mobilenet_v2_dm05_google", "deeplabv3_mmseg": "resnet18_v1c",
                   "deeplabv3plus_mmseg": "resnet18_v1c", "deeplabv1_kazuto": "resnet18", "deeplabv3_kazuto": "resnet18",
                   "deeplabv2": "resnet18", "deeplabv3plus_vainf": "resnet18", "deeplabv3plus_smp": "resnet18",
                   "deeplabv3_transformers_256": "mobilevit_xxs_hf", "deeplabv3_transformers_512": "mobilevitv2_050_hf"}  # fmt: skip


def small_model(name="deeplabv3plus", **fields):
    torch.manual_seed(0)
    fields.setdefault("backbone", SMALL_BACKBONES.get(name, "mobilenet_v3_large"))
    model = atrous.build_model(name, num_classes=3, **fields)
    with torch.no_grad():  # BatchNorm statistics that change the logits: a file missing them would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.set_labels(["sky", "road", "car"], None)
    return model.eval()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache, offline, where any connection attempt fails the test."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return cache


def cache_snapshot(cache, repo, model, *, revision=REVISION, ref="main"):
    """``model``'s save_pretrained folder where huggingface_hub keeps ``repo`` at ``revision`` (refs/ref -> it)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    model.save_pretrained(root / "snapshots" / revision)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(revision)
    return root


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_pretrained_reads_back_exactly_for_every_architecture(tmp_path, name):
    model = small_model(name)
    folder = model.save_pretrained(tmp_path / "model", card=atrous.ModelCard(dataset="voc", scores={"mIoU": 0.5}))
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = atrous.from_pretrained(folder)
    assert loaded.spec == model.spec.architecture() and loaded.class_names == ["sky", "road", "car"]
    images = torch.randn(1, 3, 67, 75)
    with torch.no_grad():
        assert torch.equal(loaded(images).logits, model(images).logits)


def test_the_folder_describes_the_model_for_people_and_tools(tmp_path):
    model = small_model()
    card = atrous.ModelCard(dataset="cityscapes", recipe={"iterations": 40000, "crop": "769x769"},
                            scores={"mIoU": 0.7712}, license="apache-2.0")  # fmt: skip
    folder = model.save_pretrained(tmp_path / "m", card=card, repo="me/city")
    config = json.loads((folder / "config.json").read_text())
    assert config["library"] == "atrous" and config["atrous_version"] == atrous.__version__
    assert config["spec"]["backbone"] == "mobilenet_v3_large" and config["id2label"] == {"0": "sky", "1": "road", "2": "car"}
    assert config["input"]["normalization"] == model.normalization.name
    text = (folder / "README.md").read_text()
    front = text.split("---")[1]
    assert "license: apache-2.0" in front and "library_name: atrous" in front and "value: 77.12" in front
    assert 'atrous.from_pretrained("hf-hub:me/city")' in text and "| mIoU | 77.12 |" in text and "iterations: 40000" in text


def test_a_changed_weight_in_a_saved_folder_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = small_model().save_pretrained(tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    weights["head.classifier.weight"] += 1e-3
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(WeightsError, match="do not match the checksum"):
        atrous.from_pretrained(folder)


def test_a_hub_name_is_read_from_the_cache_offline_without_a_connection(hub_cache):
    model = small_model()
    cache_snapshot(hub_cache, "me/roads", model)
    images = torch.randn(1, 3, 40, 52)
    for name in ("hf-hub:me/roads", "me/roads", f"hf-hub:me/roads@{REVISION}"):
        loaded = atrous.from_pretrained(name)
        with torch.no_grad():
            assert torch.equal(loaded(images).logits, model(images).logits)
    assert atrous.from_pretrained("hf-hub:me/roads", revision=REVISION).class_names == ["sky", "road", "car"]


def test_predict_takes_a_hub_name_as_weights(hub_cache, tmp_path):
    from PIL import Image

    cache_snapshot(hub_cache, "me/roads", small_model())
    images = tmp_path / "photos"
    images.mkdir()
    Image.new("RGB", (48, 40), (90, 120, 30)).save(images / "a.png")
    assert main(["predict", "--weights", "hf-hub:me/roads", str(images), "--out", str(tmp_path / "pred"),
                 "--runtime", "eager"]) == 0  # fmt: skip
    assert (tmp_path / "pred" / "a.png").is_file()


def test_what_the_cache_lacks_offline_is_one_clear_error(hub_cache):
    cache_snapshot(hub_cache, "me/roads", small_model())
    with pytest.raises(WeightsError, match=r"hf-hub:me/other: config.json is not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        atrous.from_pretrained("hf-hub:me/other")
    with pytest.raises(WeightsError, match="hf-hub:me/roads@v2: config.json is not in the Hugging Face cache"):
        atrous.from_pretrained("hf-hub:me/roads", revision="v2")
    with pytest.raises(WeightsError, match="named hf-hub:ORG/NAME"):
        atrous.from_pretrained("hf-hub:not a name")
    with pytest.raises(WeightsError, match="runs/best: no such file or folder here; read as a Hugging Face Hub model: "
                                           "hf-hub:runs/best: config.json is not in the Hugging Face cache"):  # fmt: skip
        atrous.from_pretrained("runs/best")  # a mistyped local folder reads as a Hub name: both are said


def test_an_unreachable_hub_falls_back_on_the_cache_at_once(hub_cache, monkeypatch):
    # Not offline by the environment, but no connection: one quick look, then the cache alone (huggingface_hub
    # would retry each file for about 20 seconds).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    looked = []
    monkeypatch.setattr(hub_module, "_reachable", lambda endpoint: looked.append(endpoint) or False)
    cache_snapshot(hub_cache, "me/roads", small_model())
    assert atrous.from_pretrained("hf-hub:me/roads").num_classes == 3
    assert len(looked) == 1
    with pytest.raises(WeightsError, match="the Hub could not be reached"):
        atrous.from_pretrained("hf-hub:me/elsewhere")


def test_local_paths_and_weights_files_are_never_taken_for_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "best").mkdir()
    assert hub_repo("runs/best") is None  # exists: a folder
    assert hub_repo("runs/missing.pt") is None  # a mistyped weights file: its reader says it is missing
    assert hub_repo("runs/other") == ("runs/other", None)
    assert hub_repo("org/name@v1.0") == ("org/name", "v1.0")
    assert hub_repo("deeplabv3_resnet50") is None


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: what would be sent, kept."""

    calls: typing.ClassVar[list] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo, **kwargs):
        self.calls.append(("create_repo", repo, kwargs))

    def create_commit(self, repo, *, operations, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.calls.append(("create_commit", repo, files, kwargs))
        return type("Commit", (), {"commit_url": f"https://hub.test/{repo}/commit/1"})()


@pytest.fixture
def recording_api(monkeypatch):
    import huggingface_hub

    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return RecordingApi


def test_push_to_hub_sends_the_save_pretrained_folder_in_one_commit(recording_api, tmp_path):
    model = small_model()
    url = model.push_to_hub("me/roads", private=True, token="hf_test", card=atrous.ModelCard(dataset="voc"))
    assert url == "https://hub.test/me/roads/commit/1"
    (_, repo, created), (_, committed_to, files, options) = recording_api.calls
    assert repo == committed_to == "me/roads" and created == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert "deeplabv3plus" in options["commit_message"]
    folder = tmp_path / "sent"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    images = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        assert torch.equal(atrous.from_pretrained(folder)(images).logits, model(images).logits)


def test_push_is_refused_offline_or_without_a_token_before_anything_is_written(recording_api, monkeypatch):
    import huggingface_hub

    model = small_model()
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="no Hugging Face token: log in with `hf auth login`, set HF_TOKEN"):
        model.push_to_hub("me/roads")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set: nothing can be uploaded"):
        model.push_to_hub("me/roads", token="hf_test")
    with pytest.raises(ConfigError, match="ORG/NAME"):
        model.push_to_hub("roads", token="hf_test")
    assert recording_api.calls == []


def a_run(tmp_path, model):
    """A run directory as ``atrous train`` leaves it: config.yaml, metrics.jsonl with two validations, best.pt."""
    from atrous.checkpoint import model_checkpoint
    from atrous.config import Config, save_config

    run = tmp_path / "runs" / "roads"
    (run / "checkpoints").mkdir(parents=True)
    config = Config(name="roads")
    config.data.dataset, config.data.batch_size, config.train.iterations = "cityscapes", 16, 40000
    save_config(config, run / "config.yaml")
    rows = [{"iteration": 20, "loss": 1.5}, {"iteration": 1000, "val": {"mIoU": 0.61, "pixel_accuracy": 0.9}},
            {"iteration": 2000, "val": {"mIoU": 0.66, "pixel_accuracy": 0.93}}, {"iteration": 3000, "val": {"mIoU": 0.64}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"iteration": 31')  # cut short
    torch.save(model_checkpoint(model), run / "checkpoints" / "best.pt")
    return run


def test_atrous_push_sends_a_runs_best_model_with_its_recipe_and_scores(recording_api, tmp_path, capsys):
    model = small_model()
    run = a_run(tmp_path, model)
    assert main(["push", str(run), "me/roads", "--token", "hf_test", "--license", "mit", "--private"]) == 0
    assert "pushed to me/roads" in capsys.readouterr().out
    (_, _, created), (_, _, files, _) = recording_api.calls
    assert created["private"] is True
    card = files["README.md"].decode()
    assert "license: mit" in card and "| mIoU | 66.00 |" in card and "- validated at iteration: 2000" in card
    assert "- iterations: 40000" in card and "- batch size: 16" in card and "- cityscapes" in card
    assert json.loads(files["config.json"])["spec"]["backbone"] == "mobilenet_v3_large"


def test_atrous_push_refuses_before_reading_anything_without_a_token(recording_api, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["push", str(tmp_path / "no-such-run"), "me/roads"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err and recording_api.calls == []


def test_export_names_its_file_after_the_hub_model_in_the_current_folder(hub_cache, tmp_path, monkeypatch):
    cache_snapshot(hub_cache, "me/roads.v1", small_model())
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--weights", f"hf-hub:me/roads.v1@{REVISION}"]) == 0
    assert (tmp_path / "roads.v1.onnx").is_file()  # not "hf-hub:me/roads.onnx", a folder named hf-hub:me


def test_the_readmes_share_snippet_runs_as_written(recording_api, hub_cache, tmp_path, monkeypatch):
    """README's "Share your model" Python, with a model in ``model``: what it pushes is what it then reads back."""
    import re

    import huggingface_hub

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme.split("\n## Share your model\n", 1)[1], re.DOTALL)[1]
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    pushed = {}

    def commit_into_the_cache(self, repo, *, operations, **kwargs):  # the Hub, as the cache will hold it
        snapshot = hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / REVISION
        snapshot.mkdir(parents=True)
        for op in operations:
            (snapshot / op.path_in_repo).write_bytes(Path(op.path_or_fileobj).read_bytes())
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text(REVISION)
        pushed[repo] = sorted(op.path_in_repo for op in operations)
        return type("Commit", (), {"commit_url": "https://hub.test/commit"})()

    monkeypatch.setattr(RecordingApi, "create_commit", commit_into_the_cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # push refuses offline; reading goes to the cache
    monkeypatch.setattr(hub_module, "_reachable", lambda endpoint: False)
    monkeypatch.chdir(tmp_path)
    model = small_model()
    namespace = {"atrous": atrous, "model": model}
    exec(compile(snippet, "README.md (Share your model)", "exec"), namespace)  # noqa: S102 (our own README)
    assert pushed == {"me/roads-deeplab": ["README.md", "config.json", "model.safetensors"]}
    assert (tmp_path / "roads-deeplab" / "README.md").read_text().count("license: apache-2.0") == 1
    read_back = atrous.from_pretrained("hf-hub:me/roads-deeplab")
    images = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(read_back(images).logits, model(images).logits)


def test_without_huggingface_hub_the_error_gives_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed: importing it raises
    with pytest.raises(WeightsError, match=r"hf-hub:me/roads: reading models from the Hugging Face Hub needs "
                                           r"huggingface_hub: python -m pip install .*hub"):  # fmt: skip
        atrous.from_pretrained("hf-hub:me/roads")
    with pytest.raises(ConfigError, match="publishing to the Hugging Face Hub needs huggingface_hub"):
        small_model().push_to_hub("me/roads", token="hf_test")
