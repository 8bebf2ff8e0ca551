"""Any timm model with ``features_only`` as a DeepLab backbone: ``backbone="timm:<model name>"``.

timm (PyTorch Image Models) builds the network, dilates it to the output stride (``output_stride=8|16``, for the
CNN families that support it) and reports each feature's channels and reduction (``feature_info``). The heads
take features by reduction: "low" is the first at stride 4 (the V3+ decoder's), "out" the deepest (ASPP's), "aux"
the one before it (the nominal stride-16 stage, the aux head's). The input normalisation is what timm's
``pretrained_cfg`` declares for the model (e.g. 0.5/0.5 for ``xception65``, ImageNet's for most).

``pretrained_backbone="imagenet"`` reads timm's pretrained file for the model (``timm:<model>.<tag>`` picks a tag,
e.g. ``timm:xception65.tf_in1k``, the TF-DeepLab port): a copy in the torch hub cache named
``<model>.<tag>.safetensors`` first, else timm's download through the Hugging Face hub cache. The file is read by atrous's safe reader
(no code from it runs) and its keys renamed to the ``features_only`` network's (``to_body_keys``).

timm is an optional extra (``atrous.install.extra_command`` says how to add it), imported only when a ``timm:``
backbone is asked for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from ...errors import ConfigError, MissingDependencyError, WeightsError
from ...install import extra_command
from ...paths import hub_checkpoints
from ..normalization import IMAGENET_RGB, InputNormalization
from .base import Backbone, BackboneEntry

log = logging.getLogger(__name__)

PREFIX = "timm:"
# Families whose timm models take output_stride (by dilation); named in the error for one that does not.
DILATABLE_FAMILIES = "ResNet/ResNet-D/ResNeXt/ResNeSt, RegNet, EfficientNet, MobileNetV2/V3/V4, ConvNeXt, Xception"


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError as error:
        raise MissingDependencyError(
            f"timm backbones need the timm package: {extra_command('timm', 'timm')}"
        ) from error
    return timm


@functools.cache
def timm_entry(name: str) -> BackboneEntry:
    """The registry entry of ``timm:<model>``; ``ConfigError`` for a name timm does not know."""
    timm = _timm()
    model_name = name[len(PREFIX) :]
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:8]
        raise ConfigError(f"unknown timm model {model_name!r} (backbone {name!r}); "
                          f"{'similar: ' + ', '.join(close) + '; ' if close else ''}list them with "
                          "timm.list_models('*pattern*')")  # fmt: skip
    try:
        config = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError as error:  # timm's "Invalid pretrained tag (x) for y."
        architecture = model_name.split(".", 1)[0]
        raise ConfigError(f"backbone {name!r}: {error} Its tags: {', '.join(timm.list_pretrained(architecture + '.*'))}"
                          ) from error  # fmt: skip
    mean = getattr(config, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(config, "std", None) or (0.229, 0.224, 0.225)
    normalization = InputNormalization(
        name=f"timm_{model_name}", mean=tuple(255 * value for value in mean), std=tuple(255 * value for value in std),
        channel_order="RGB",
    )  # fmt: skip
    if (normalization.mean, normalization.std) == (IMAGENET_RGB.mean, IMAGENET_RGB.std):
        normalization = IMAGENET_RGB  # the same numbers: one name, so weights made for either are recognised
    return BackboneEntry(
        build=functools.partial(TimmBackbone, model_name), normalization=normalization, output_strides=(8, 16, 32),
        imagenet_hint=f"pretrained_backbone='imagenet' reads timm's pretrained file for {model_name}",
    )  # fmt: skip


def _pretrained_source(model_name: str) -> tuple[str, str, str]:
    """(timm's "<architecture>.<tag>" of the weights, the URL of its file, the name atrous looks for in the torch hub
    cache) for ``model_name`` (a tag in the name picks those weights, else timm's default)."""
    config = _timm().models.get_pretrained_cfg(model_name)
    weights = f"{config.architecture}.{config.tag}" if config.tag else config.architecture
    if config.hf_hub_id:
        url = f"https://huggingface.co/{config.hf_hub_id}/resolve/main/{config.hf_hub_filename or 'model.safetensors'}"
    elif config.url:
        url = config.url
    else:
        raise WeightsError(f"timm has no pretrained weights for {model_name!r} (its tags: "
                           f"{', '.join(_timm().list_pretrained(config.architecture + '.*')) or 'none'})")  # fmt: skip
    return weights, url, f"{weights}{Path(url).suffix or '.safetensors'}"


def imagenet_file(model_name: str) -> Path:
    """The file of timm's pretrained weights for ``model_name``: the copy in the torch hub cache when there is one,
    else downloaded (Hugging Face hub cache for timm's hub-hosted weights, the torch hub cache for the others).
    Offline, ``WeightsError`` names the file's URL and where to put it."""
    weights, url, filename = _pretrained_source(model_name)
    for local in (hub_checkpoints() / filename, hub_checkpoints() / f"{weights}.safetensors"):
        if local.is_file():
            log.info("timm's %s weights from %s", weights, local)
            return local
    try:
        if url.startswith("https://huggingface.co/"):
            import huggingface_hub

            repo, file = url.removeprefix("https://huggingface.co/").split("/resolve/main/")
            return Path(huggingface_hub.hf_hub_download(repo, file))
        hub_checkpoints().mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(hub_checkpoints() / filename), progress=True)
        return hub_checkpoints() / filename
    except Exception as error:  # requests', huggingface_hub's and urllib's own error types, all "could not download"
        raise WeightsError(
            f"could not download timm's {weights} weights, {url} ({type(error).__name__}: {str(error)[:200]}). "
            f"Offline? Put that file at {hub_checkpoints() / filename} (the torch hub cache, where atrous looks for "
            f"it first; set TORCH_HOME to move it), or pass its path: model.pretrained_backbone=PATH "
            "(pretrained_backbone=PATH in Python)"
        ) from error


def to_body_keys(state: Mapping[str, torch.Tensor], body: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A whole timm model's tensors (its pretrained file: classifier included) under the keys of its ``features_only``
    network ``body``. timm's feature wrappers keep the model's names, except that a flattened sequential's child
    ``stages.0`` becomes ``stages_0``; keys the body does not have (the classifier) are left out, and keys of the body
    that the file lacks stay absent, for the loader to report as missing."""
    renamed = {}
    for key in body.state_dict():
        first, _, rest = key.partition(".")
        unflattened = [f"{first[:i]}.{first[i + 1:]}.{rest}" for i, char in enumerate(first) if char == "_"]
        source = next((name for name in (key, *unflattened) if name in state), None)
        if source is not None:
            renamed[key] = state[source]
    return renamed


class TimmBackbone(Backbone):
    """``timm.create_model(model_name, features_only=True, output_stride=...)`` as ``body``; returns its "low",
    "aux" and "out" features (see the module's docstring)."""

    def __init__(self, model_name: str, *, output_stride: int, multi_grid=None, **_rules):
        super().__init__()
        if multi_grid:
            raise ConfigError(f"multi_grid is not an option of timm backbones (timm:{model_name}): leave it unset")
        timm = _timm()
        stride = {} if output_stride == 32 else {"output_stride": output_stride}
        try:
            self.body = timm.create_model(model_name, features_only=True, pretrained=False, **stride)
        except (TypeError, AssertionError, RuntimeError) as error:
            if not stride:
                raise ConfigError(f"timm model {model_name!r} cannot give features (features_only): {error}") from error
            raise ConfigError(
                f"timm model {model_name!r} does not reach output_stride {output_stride} ({error}); families that "
                f"do (by dilation): {DILATABLE_FAMILIES}. Transformers with fixed patching keep their own stride"
            ) from error
        reductions = list(self.body.feature_info.reduction())
        channels = list(self.body.feature_info.channels())
        if reductions[-1] != output_stride:
            raise ConfigError(f"timm model {model_name!r} built for output_stride {output_stride} reaches stride "
                              f"{reductions[-1]} (its features: strides {reductions}): choose another output_stride")  # fmt: skip
        if len(reductions) < 3 or 4 not in reductions:
            raise ConfigError(f"timm model {model_name!r} has features at strides {reductions}: DeepLab's heads need "
                              "a stride-4 feature and two deeper stages")  # fmt: skip
        self.indices = {"low": reductions.index(4), "aux": len(reductions) - 2, "out": len(reductions) - 1}
        self.channels = {key: channels[index] for key, index in self.indices.items()}
        self.strides = {key: reductions[index] for key, index in self.indices.items()}
        self.output_stride = output_stride

    @property
    def activation_checkpointing(self) -> bool:
        return getattr(self, "_checkpointing", False)

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        """timm's own gradient checkpointing of the body's stages (recomputed in the backward pass)."""
        self.body.set_grad_checkpointing(enabled)
        self._checkpointing = enabled

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised -> {"low", "aux", "out"} feature maps."""
        features = self.body(images)
        return {key: features[index] for key, index in self.indices.items()}
