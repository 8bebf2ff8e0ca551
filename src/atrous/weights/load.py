"""Loading weights of every format DeepLab users hold into a model, with a report: the layout recognised by its keys
(``atrous.registry.FORMATS``, each publisher's reader), its keys translated to atrous's, the tensors checked and
loaded. Reading the file is ``atrous.weights.read``'s.
"""

from __future__ import annotations

import urllib.error
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

from ..errors import WeightsError
from ..models.backbones.timm import PREFIX, imagenet_file, is_timm, to_body_keys
from ..models.segmenter import Segmenter
from ..paths import hub_checkpoints
from ..registry import BACKBONES, FORMATS, backbone_entry, detect, find_format, locate_weights, zoo
from .read import first, read_source, unwrap_state_dict
from .zoo import zoo_file


@dataclass
class WeightsReport:
    """What ``load_weights`` did. Keys are the model's (atrous) names."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        summary = (
            f"weights from {self.source} (format {self.format}): {len(self.loaded)} tensors loaded, "
            f"{len(self.skipped)} skipped, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} shape-mismatched"
        )
        lines = [summary]
        lines += [f"  {message}" for message in self.messages]
        if self.missing:
            lines.append(f"  missing: {first(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {first(self.unexpected)}")
        if self.mismatched:
            shown = [f"{key} file {list(src)} vs model {list(dst)}" for key, src, dst in self.mismatched]
            lines.append(f"  shape-mismatched: {first(shown)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ recognising, translating


def formats() -> list[str]:
    """The layouts atrous reads, in detection order (see ``atrous.registry.FORMATS``)."""
    return [fmt.name for fmt in FORMATS]


def detect_format(state: Mapping[str, torch.Tensor], *, source: str = "<state dict>") -> str:
    """Name the layout of a state dict from its keys; see ``formats()``."""
    found = detect(state, source=source)
    if found is None:
        raise WeightsError(f"{source}: unrecognised weights layout ({_key_groups(state)}){_nearest(state)}; "
                           f"atrous reads {formats()}")  # fmt: skip
    return found.name


def _key_groups(state: Mapping[str, torch.Tensor]) -> str:
    """Where the keys are, by first name: "312 keys under 'backbone.', 20 under 'classifier.'"."""
    groups = Counter(key.split(".", 1)[0] for key in state)
    shown = [f"{count} under {name + '.'!r}" for name, count in groups.most_common(4)]
    more = f" and {len(groups) - 4} more groups" if len(groups) > 4 else ""
    return f"{len(state)} key{'s' if len(state) != 1 else ''}: " + ", ".join(shown) + more


def _closest_format(state: Mapping[str, torch.Tensor]) -> str:
    """The format whose key tables name the most of these keys as head parts, and the keys it leaves unnamed: where
    a file differs from a known layout (a renamed or extra module) rather than which keys come first."""
    ours = ("backbone.", "head.", "aux_head.")
    best, best_named, best_unnamed = None, 0, []
    for fmt in FORMATS:
        if fmt.name == "atrous":
            continue
        try:
            translated, _ = fmt.translate(state, None)
        except (WeightsError, KeyError, IndexError, ValueError, TypeError, AttributeError):
            continue  # a table that cannot read these keys is simply not the nearest
        named = sum(1 for key in translated if key.startswith(("head.", "aux_head.")))
        if named > best_named:
            unnamed = [key for key in translated if not key.startswith(ours)]  # left as they were
            best, best_named, best_unnamed = fmt.name, named, unnamed
    if best is None:
        return ""
    differs = f"; the keys it does not name: {first(best_unnamed)}" if best_unnamed else ""
    return f"; the nearest is {best} (its tables name {best_named} head keys here){differs}"


def _nearest(state: Mapping[str, torch.Tensor]) -> str:
    """A true hint for an unrecognised layout: a prefix on every key that hides a known format."""
    prefixes = {key.split(".", 1)[0] for key in state}
    if len(prefixes) == 1 and all("." in key for key in state):
        prefix = f"{prefixes.pop()}."
        found = detect({key[len(prefix) :]: value for key, value in state.items()})
        if found is not None:
            return f"; without the prefix {prefix!r} on every key it is {found.name}: pass {{k.removeprefix({prefix!r}): v}}"
    return _closest_format(state)


def translate(state: Mapping[str, torch.Tensor], fmt: str, model: Segmenter) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a state dict of format ``fmt`` to atrous keys. Returns (state, scope prefix of required keys)."""
    return find_format(fmt).translate(state, model)


def _architecture_problem(fmt: str, model: Segmenter) -> str | None:
    """Mismatches that keys and shapes cannot show (a Caffe ResNet and torchvision's have identical shapes)."""
    expected = find_format(fmt).normalization
    if expected is not None and model.normalization != expected:
        fitting = sorted(name for name, entry in BACKBONES.items() if entry.normalization == expected)
        return (
            f"the file is {fmt} (weights for {expected.name} input) but the model's backbone expects "
            f"{model.normalization.name} input; build the model with backbone one of {fitting}"
        )
    return None


# --------------------------------------------------------------------------------------------- loading


def _is_classifier(key: str) -> bool:
    return any(part in ("classifier", "classifiers") for part in key.split("."))


def _head_of(key: str) -> str:
    """``head.aspp.project.conv.weight`` -> ``head``; ``aux_head.classifier.bias`` -> ``aux_head``."""
    return key.split(".", 1)[0]


def _require_trained_classifier(
    model_state: Mapping[str, torch.Tensor],
    to_load: Mapping[str, torch.Tensor],
    skipped_classifiers: Mapping[str, tuple[int, int]],
    *,
    name: str,
    held: str,
) -> None:
    """A model that predicts as trained needs the file's own main classifier: a fresh one answers at random."""
    for module, (theirs, ours) in skipped_classifiers.items():
        if _head_of(module) == "head":
            raise WeightsError(
                f"{name}'s classifier predicts {theirs} classes but the model was built for {ours}: build it with "
                f"num_classes={theirs} (--num-classes {theirs}) to use it as trained, or fine-tune from it "
                f"(model.weights={name}; in Python new_classifier_ok=True)"
            )
    classifier = [key for key in model_state if _head_of(key) == "head" and _is_classifier(key)]
    if not all(key in to_load for key in classifier):
        raise WeightsError(
            f"{name} holds no classifier for the model's head ({held}), so the model would predict from a random "
            f"one: pass a trained segmentation model, or start training from this file (model.weights=PATH, or "
            f"model.pretrained_backbone=PATH for its backbone only)"
        )


def _dtype_kind(tensor: torch.Tensor) -> str:
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.is_complex():
        return "complex"
    return "floating" if tensor.is_floating_point() else "integer"


def _require_usable_values(
    to_load: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], *, name: str
) -> None:
    """Refuse what ``load_state_dict`` would silently cast or copy into garbage: an integer, bool or complex tensor
    where the model holds floats (BatchNorm's integer ``num_batches_tracked`` stays legitimate), and NaN or inf."""
    problems = []
    for key, value in to_load.items():
        ours = model_state[key]
        if _dtype_kind(value) != _dtype_kind(ours):
            problems.append(f"{key} is {str(value.dtype).removeprefix('torch.')} (the model's is "
                            f"{str(ours.dtype).removeprefix('torch.')})")  # fmt: skip
        elif value.is_floating_point() and not torch.isfinite(value).all():
            count = int((~torch.isfinite(value)).sum())
            problems.append(f"{key} has {count} NaN/inf value{'s' if count != 1 else ''} of {value.numel()}")
    if problems:
        raise WeightsError(
            f"{name}: {len(problems)} tensor{'s' if len(problems) != 1 else ''} cannot be the model's weights: "
            f"{first(problems)} (keys as atrous names them): a damaged file, a training run that diverged (NaN/inf), "
            "or not a model's weights"
        )


def load_weights(
    model: Segmenter,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    new_classifier_ok: bool = True,
    name: str | None = None,
    inert: list[str] | tuple[str, ...] = (),
    format_name: str | None = None,
) -> WeightsReport:
    """Load weights of any supported format into ``model`` and report what happened.

    source: a weights file path (``atrous.weights.read``), or what one holds (a state dict or a training-run dict);
    ``name`` and ``inert`` then say, for the report, where it was read and which of its objects were placeholders;
    ``format_name``, the layout's name when the caller has recognised it already (``from_pretrained``: once per file).
    The format is recognised by its keys.
    new_classifier_ok: whether the model's classifier may keep its fresh init, as fine-tuning to other classes
    wants: a classifier in the file whose class count differs from the model's is then skipped, and a file with
    none (a backbone) loads too. False, for a model that will predict as the file trained it, raises
    ``WeightsError`` instead.
    Aux-head weights are skipped when the model has no aux head (and vice versa). Anything else missing, unexpected
    or shape-mismatched raises ``WeightsError`` naming the first offending keys, unless ``strict=False``. Tensors that
    cannot be the model's values (another kind of dtype: integer, bool or complex for a float parameter; NaN or
    inf) always raise ``WeightsError``; float16/bfloat16/float64 are cast to the model's dtype.
    """
    if isinstance(source, (str, Path)):
        read = read_source(locate_weights(source))
        name, source, inert = str(source), read.contents, read.inert
    name = name or "<state dict>"
    state = unwrap_state_dict(source, source=name)
    fmt = format_name or detect_format(state, source=name)
    report = WeightsReport(source=name, format=fmt)
    if inert:
        report.messages.append(f"other objects in the file were read as inert placeholders, nothing of them ran: "
                               f"{first(sorted(set(inert)))}")  # fmt: skip
    problem = _architecture_problem(fmt, model)
    if problem is not None:
        if strict:
            raise WeightsError(f"{name}: wrong architecture: {problem} (strict=False loads it anyway)")
        report.messages.append(f"warning: {problem}")

    aside = find_format(fmt).aside
    if aside is not None:
        state, notes = aside(state)
        report.messages += notes
    translated, scope = translate(state, fmt, model)
    model_state = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    skipped_classifiers: dict[str, tuple[int, int]] = {}
    for key, value in translated.items():
        if key not in model_state:
            if _head_of(key) == "aux_head" and model.aux_head is None:
                report.skipped.append(key)
            else:
                report.unexpected.append(key)
        elif value.shape != model_state[key].shape:
            if _is_classifier(key) and value.shape[0] != model_state[key].shape[0]:
                report.skipped.append(key)
                skipped_classifiers[key.rsplit(".", 1)[0]] = (value.shape[0], model_state[key].shape[0])
            else:
                report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            to_load[key] = value
    # A classifier is skipped whole: never its bias without its weight.
    for key in list(to_load):
        if key.rsplit(".", 1)[0] in skipped_classifiers:
            report.skipped.append(key)
            del to_load[key]
    for module, (theirs, ours) in skipped_classifiers.items():
        report.messages.append(f"{module}: the file has {theirs} classes, the model {ours}; it keeps its fresh init")

    for key in model_state:
        if key in translated or not key.startswith(scope) or key.endswith("num_batches_tracked"):
            continue
        if _head_of(key) == "aux_head" and not any(_head_of(k) == "aux_head" for k in translated):
            continue
        report.missing.append(key)
    if model.aux_head is not None and not any(_head_of(k) == "aux_head" for k in translated) and scope == "":
        report.messages.append("the file has no aux head; the model's aux head keeps its fresh init")
    if model.aux_head is None and any(_head_of(k) == "aux_head" for k in report.skipped):
        report.messages.append("aux-head weights in the file are ignored: the model was built with aux=False")
    hints = find_format(fmt).hints
    report.messages += hints(model) if hints is not None else []

    if strict and not report.ok:
        raise WeightsError(f"{name}: does not fit the model (strict=False loads what fits):\n{report}")
    if not new_classifier_ok:
        _require_trained_classifier(model_state, to_load, skipped_classifiers, name=name, held=_key_groups(translated))
    _require_usable_values(to_load, model_state, name=name)
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report


# ------------------------------------------------------------------------------------ ImageNet backbones


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights the registry names for ``backbone``, through torchvision's weights API (torch hub cache,
    then download). For torchvision's backbones these are the ones its own DeepLabV3 models start from."""
    entry = backbone_entry(backbone)
    if entry.imagenet_weights is None:
        raise WeightsError(f"backbone {backbone!r}: {entry.imagenet_hint}")
    weights = torchvision.models.get_weight(entry.imagenet_weights)
    filename = weights.url.rsplit("/", 1)[-1]
    cached = hub_checkpoints() / filename
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError) as error:
        raise WeightsError(
            f"could not download {weights.url} ({error}). Offline? Put the file {filename} at {cached} "
            f"(the torch hub cache; set TORCH_HOME to move it), or pass the path of a copy: "
            f"model.pretrained_backbone=PATH (pretrained_backbone=PATH in Python)"
        ) from error


def load_pretrained_backbone(model: Segmenter, source: str | Path) -> WeightsReport:
    """``source``: "imagenet" (the published weights of the model's backbone), a zoo entry of kind backbone_init
    (``atrous models --pretrained``) or a path to a weights file."""
    if is_timm(model.spec.backbone):
        return _load_timm_backbone(model, source)
    if source == "imagenet":
        return load_weights(model, imagenet_state_dict(model.spec.backbone))
    if isinstance(source, str) and source in zoo() and not Path(source).exists():
        return load_weights(model, zoo_file(zoo()[source]))
    return load_weights(model, source)


def _load_timm_backbone(model: Segmenter, source: str | Path) -> WeightsReport:
    """A timm backbone from timm's pretrained file ("imagenet") or a file of the same timm model (its whole state dict,
    as timm saves it), renamed to the ``features_only`` body's keys; an atrous file with the backbone loads as it is."""
    timm_name = model.spec.backbone.removeprefix(PREFIX)
    path = imagenet_file(timm_name) if source == "imagenet" else Path(source)
    read = read_source(locate_weights(path))
    state, inert = unwrap_state_dict(read.contents, source=str(path)), read.inert
    if all(key.startswith("backbone.") for key in state):
        return load_weights(model, state, name=str(path), inert=inert)
    body = {f"backbone.body.{key}": value for key, value in to_body_keys(state, model.backbone.body).items()}
    if not body:
        raise WeightsError(f"{path}: none of its keys ({_key_groups(state)}) are those of timm's {timm_name}: not "
                           "this timm model's weights")  # fmt: skip
    report = load_weights(model, body, name=str(path), inert=inert)
    report.messages.append(f"read as timm's {timm_name}: {len(state) - len(body)} of its tensors are not in the "
                           "features network (its classifier)")  # fmt: skip
    return report
