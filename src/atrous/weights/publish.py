"""An atrous model as a Hugging Face Hub repository: ``save_pretrained`` writes the folder (``config.json`` with the
``ModelSpec``, labels, input normalisation and atrous version; ``model.safetensors``; a ``README.md`` model card), and
``push_to_hub`` uploads it in one commit through ``huggingface_hub`` (an optional extra). ``from_pretrained`` reads
the folder, or the repository, back exactly (``read.read_folder``: the checksum in config.json is checked).

A model only: nothing here builds or loads one (``Segmenter`` calls in; ``atrous.sharing`` adds a run's facts)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..atomic import write_text_whole, written_whole
from ..errors import ConfigError
from ..install import extra_command
from ..version import __version__
from .torch_file import weights_checksum

FOLDER_FILES = ("config.json", "model.safetensors", "README.md")
FORMAT_VERSION = 1


@dataclass
class ModelCard:
    """What the model card says beyond the model itself: where it was trained and how, and what it scored.

    dataset: the training data's name ("voc", "cityscapes", a folder's name). recipe: training settings worth citing
    (iterations, batch size, crop, learning rate...). scores: validation scores ({"mIoU": 0.71, ...}: fractions).
    license: an identifier of the Hub's list ("apache-2.0", "mit", "cc-by-4.0"; "other" when unknown).
    """

    dataset: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    license: str = "other"
    notes: Sequence[str] = ()


def save_pretrained(model, folder: str | Path, *, card: ModelCard | None = None, repo: str | None = None) -> Path:
    """Write ``model`` (a ``Segmenter`` with a spec) into ``folder`` as ``FOLDER_FILES``; each file is written whole
    (a crash leaves the previous one or none). ``repo`` ("org/name") is the name the card's loading line uses."""
    if getattr(model, "spec", None) is None:
        raise ConfigError("save_pretrained needs a model that knows its spec (made by build_model or from_pretrained): "
                          "a Segmenter composed by hand cannot be rebuilt from a folder")  # fmt: skip
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file: save_pretrained writes a folder")
    folder.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with written_whole(folder / "model.safetensors") as temporary:
        save_file(weights, str(temporary), metadata={"format": "pt", "library": "atrous"})
    write_text_whole(folder / "config.json", json.dumps(folder_config(model, weights), indent=2) + "\n")
    write_text_whole(folder / "README.md", model_card(model, card or ModelCard(), repo=repo))
    return folder


def folder_config(model, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """config.json: what rebuilds the model (its spec), names and colours its classes, and says what input it takes;
    ``id2label`` as the Hub's widgets read it."""
    normalization = model.normalization
    names = model.class_names
    return {
        "library": "atrous",
        "atrous_version": __version__,
        "format_version": FORMAT_VERSION,
        "spec": model.spec.architecture().to_dict(),
        "num_classes": model.num_classes,
        "class_names": names,
        "palette": model.palette.tolist() if model.palette is not None else None,
        "id2label": {str(i): name for i, name in enumerate(names)} if names is not None else None,
        "input": {
            "normalization": normalization.name,
            "mean": list(normalization.mean),
            "std": list(normalization.std),
            "channel_order": normalization.channel_order,
            "values": "0..255",
        },
        "checksum": weights_checksum(weights),
    }


def model_card(model, card: ModelCard, *, repo: str | None = None) -> str:
    """README.md for the Hub: YAML front matter (library, license, tags, datasets, scores) and what a user needs to
    run the model in one line."""
    spec = model.spec
    name = repo or "ORG/NAME"
    title = f"{spec.name} on {spec.backbone or 'its default backbone'}"
    front = ["---", "library_name: atrous", f"license: {card.license}", "pipeline_tag: image-segmentation",
             "tags:", "- image-segmentation", "- semantic-segmentation", "- deeplab", "- atrous"]  # fmt: skip
    if card.dataset:
        front += ["datasets:", f"- {card.dataset}"]
    if card.scores:
        front += ["model-index:", f"- name: {name}", "  results:", "  - task:", "      type: image-segmentation",
                  "    dataset:", f"      name: {card.dataset or 'validation set'}", f"      type: {card.dataset or 'custom'}",
                  "    metrics:"]  # fmt: skip
        front += [f"    - type: {metric}\n      value: {100 * value:.2f}" for metric, value in card.scores.items()]
    summary = f"A DeepLab model saved by atrous {__version__}: {_architecture(spec)}, {model.num_classes} classes."
    normalised = (f"Input: RGB images with values 0..255; the model normalises them as `{model.normalization.name}` "
                  "(atrous applies it).")  # fmt: skip
    lines = [*front, "---", "", f"# {title}", "", summary, "", "## Use it", "", "```python", "import atrous", "",
             f'model = atrous.from_pretrained("hf-hub:{name}")', "```", "", "or on the command line:", "", "```",
             f"atrous predict --weights hf-hub:{name} photos/ --out predictions/", "```", "", normalised, ""]  # fmt: skip
    if card.dataset or card.recipe:
        lines += ["## Training", ""]
        lines += [f"- data: {card.dataset}"] if card.dataset else []
        lines += [f"- {key}: {value}" for key, value in card.recipe.items()]
        lines.append("")
    if card.scores:
        lines += ["## Validation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {metric} | {100 * value:.2f} |" for metric, value in card.scores.items()]
        lines.append("")
    if model.class_names:
        lines += ["## Classes", "", ", ".join(f"{i}: {n}" for i, n in enumerate(model.class_names)), ""]
    lines += [*(f"{note}\n" for note in card.notes)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _architecture(spec) -> str:
    parts = [f"`{spec.name}`", f"backbone `{spec.backbone}`" if spec.backbone else None,
             f"output stride {spec.output_stride}" if spec.output_stride else None]  # fmt: skip
    return ", ".join(part for part in parts if part)


# ------------------------------------------------------------------------------------------------------ upload


def hub_api(token: str | None):
    """``huggingface_hub.HfApi`` with a token, once the upload can happen: installed, online, logged in. Raises
    ``ConfigError`` saying what to do otherwise, before any work is done."""
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(f"publishing to the Hugging Face Hub needs huggingface_hub: "
                          f"{extra_command('hub', 'huggingface_hub')}") from None  # fmt: skip
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ConfigError("HF_HUB_OFFLINE is set: nothing can be uploaded offline (unset it, or save the folder "
                          "with save_pretrained and upload it later)")  # fmt: skip
    token = token or huggingface_hub.get_token()
    if not token:
        raise ConfigError("no Hugging Face token: log in with `hf auth login`, set HF_TOKEN, or pass token= "
                          "(--token): uploading needs a token with write access")  # fmt: skip
    return huggingface_hub.HfApi(token=token)


def push_to_hub(model, repo: str, *, private: bool | None = None, token: str | None = None,
                card: ModelCard | None = None, commit_message: str | None = None) -> str:  # fmt: skip
    """Upload ``model``'s ``save_pretrained`` folder to ``repo`` ("org/name", created when missing) in one commit;
    returns the commit's URL. Refused with ``ConfigError`` offline or without a token, before anything is written."""
    if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"{repo!r}: a Hub repository is named ORG/NAME (your user name or an organisation)")
    api = hub_api(token)
    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="atrous-push-") as folder:
        save_pretrained(model, folder, card=card, repo=repo)
        operations = [huggingface_hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(folder) / name))
                      for name in FOLDER_FILES]  # fmt: skip
        try:
            api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            commit = api.create_commit(repo, operations=operations, repo_type="model",
                                       commit_message=commit_message or f"atrous {__version__}: {model.spec.name}")  # fmt: skip
        except huggingface_hub.errors.HfHubHTTPError as error:
            raise ConfigError(f"the Hugging Face Hub refused the upload to {repo}: {error}") from None
        except OSError as error:  # no connection
            raise ConfigError(f"could not reach the Hugging Face Hub to upload {repo}: {error}") from None
    return getattr(commit, "commit_url", str(commit))
