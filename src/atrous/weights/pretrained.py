"""``from_pretrained``: a model built from what a weights file says about itself, with the weights loaded and the
labels the file carries. A model asked for that computes otherwise than the one the file implies is refused or warned
of, never built silently.

One straight line: locate the file (``registry.locate_weights``), read it once (``read.read_source``), check its
checksum, unwrap its tensors, recognise its format (``registry.detect``), describe the model it implies (the format's
``describe``), build it (``build_model``), translate and load (``load.load_weights``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..build import build_model
from ..data.labels import is_byte
from ..errors import ConfigError, WeightsError
from ..models.segmenter import Segmenter
from ..models.spec import ModelSpec
from ..paths import hub_checkpoints
from ..registry import PRESETS, atrous_rates, check_spec, find_format, locate_weights, resolved, zoo
from .format import Format, Undescribed
from .hub import HUB_PREFIX, hub_folder, hub_repo
from .load import detect_format, load_weights
from .read import read_source, unwrap_state_dict
from .torch_file import verify_checksum
from .zoo import zoo_file

log = logging.getLogger(__name__)

# The spec fields that decide what a model computes from its weights. The others are training settings (frozen_bn,
# head_lr_mult), where the weights come from, the aux head (its logits are not the model's output) and the class
# count (the classifier's shape says it, and loading checks it).
COMPUTING_FIELDS = ("name", "backbone", "output_stride", "atrous_rates", "multi_grid", "multi_grid_absolute",
                    "separable", "first_block_dilation", "align_corners")  # fmt: skip
# The command line's flag for the computing fields it sets one by one (--preset sets them all).
FLAGS = {"name": "--model", "backbone": "--backbone", "output_stride": "--output-stride", "atrous_rates": "--atrous-rates",
         "pad_to": "--pad-to"}  # fmt: skip
OTHER_ARCHITECTURE = ("warn", "refuse")


def _labels_in(contents, fmt) -> tuple[list | None, list | None]:
    """Class names and palette a file carries: atrous's keys, or what its format reads from it (mmseg's meta)."""
    if not isinstance(contents, Mapping):
        return None, None
    if contents.get("class_names") is not None:
        return contents.get("class_names"), contents.get("palette")
    return fmt.labels(contents) if fmt is not None and fmt.labels is not None else (None, None)


# Labels come from the file, outside its tensor checksum: untrusted input, checked before anything is built from them.
MAX_LABELS = 65536
MAX_NAME_LENGTH = 200


def _checked_labels(names, palette, *, source: str) -> tuple[list[str] | None, np.ndarray | None]:
    """(class names, (N, 3) uint8 palette) a file carries, once they are what they claim to be, else ``WeightsError``
    naming the file and the entry: names a list of short strings, the palette N rows of 3 integers 0-255, at most
    ``MAX_LABELS`` of each. Nothing is converted before its size and shape are known (a few hundred bytes of pickle
    can describe a list of a billion shared rows)."""
    problem = None
    if names is not None:
        if not isinstance(names, (list, tuple)) or len(names) > MAX_LABELS:
            problem = f"its class_names is a {type(names).__name__} of {_size(names)}, not a list of class names"
        else:
            bad = next((i for i, n in enumerate(names) if not isinstance(n, str) or len(n) > MAX_NAME_LENGTH), None)
            if bad is not None:
                problem = (f"its class_names[{bad}] is a {type(names[bad]).__name__} of {_size(names[bad])}, not a "
                           f"class name (a string of at most {MAX_NAME_LENGTH} characters)")  # fmt: skip
    if problem is None and palette is not None:
        rows = palette
        if isinstance(palette, np.ndarray) and palette.ndim == 2 and palette.size <= 3 * MAX_LABELS:
            rows = palette.tolist()
        if not isinstance(rows, (list, tuple)) or len(rows) > MAX_LABELS:
            problem = f"its palette is a {type(palette).__name__} of {_size(palette)}, not rows of [r, g, b]"
        else:
            bad = next((i for i, row in enumerate(rows) if not _is_rgb(row)), None)
            if bad is not None:
                problem = f"its palette[{bad}] is {str(rows[bad])[:40]}, not [r, g, b] with integers 0-255"
    if problem is not None:
        raise WeightsError(f"{source}: {problem}: the labels a file carries must be what they claim to be (the "
                           "weights were not loaded; a file whose labels are damaged or crafted is refused)")  # fmt: skip
    names = list(names) if names is not None else None
    return names, (np.asarray(palette, dtype=np.uint8) if palette is not None else None)


def _size(value) -> str:
    return f"length {len(value)}" if hasattr(value, "__len__") else "no length"


def _is_rgb(row) -> bool:
    return isinstance(row, (list, tuple)) and len(row) == 3 and all(is_byte(value) for value in row)


def _other_classes_asked(name: str, theirs: int, asked: int, *, weights: str | Path) -> str:
    return (
        f"{name}'s classifier predicts {theirs} classes; {asked} were asked (num_classes={asked}, --num-classes "
        f"{asked}): drop num_classes to use it as trained, or fine-tune it with model.weights={weights}"
    )


def _check_architecture(
    name: str, fmt: Format, implied: ModelSpec, assumed: list, asked: ModelSpec, *, spec: ModelSpec | None,
    overrides: Mapping[str, Any], refuse: bool,
) -> None:  # fmt: skip
    """Raise ``WeightsError`` (``refuse``) or log a warning when the model ``asked`` computes otherwise than the one the
    file ``implied``, in a field the file does not leave free (those it had to assume, its format's ``free_fields``):
    its outputs would be wrong without any error."""
    free = {field for field, _ in assumed} | set(fmt.free_fields)
    try:  # what the file implies, once the caller has answered what it leaves open
        implied = dataclasses.replace(implied, **{field: getattr(asked, field) for field in free})
    except ConfigError:  # an answer the implied backbone cannot take (another backbone was asked too): the file's own
        pass
    theirs, ours = _computed(implied), _computed(asked)
    departures = {field: (theirs[field], ours[field]) for field in COMPUTING_FIELDS if theirs[field] != ours[field]}
    if not departures:
        return
    asked_text = ", ".join(f"{field} {new} ({_given_as(field, new, spec=spec, overrides=overrides)}) where the file "
                           f"has {old}" for field, (old, new) in departures.items())  # fmt: skip
    message = (
        f"{name} does not fit the model asked: its {fmt.name} weights are for {_architecture_text(implied)}, and the "
        f"model asked has {asked_text}. Built so, it would compute otherwise than the model the weights were trained "
        f"in. To build the model the file implies: {_instead(implied, departures, spec=spec, overrides=overrides)}"
    )
    if refuse:
        raise WeightsError(message)
    log.warning("%s (built as asked)", message)


def _computed(spec: ModelSpec) -> dict[str, Any]:
    """``spec``'s ``COMPUTING_FIELDS`` as the model built from it has them: defaults written in, rates its stride's."""
    spec = resolved(spec)
    values = {field: getattr(spec, field) for field in COMPUTING_FIELDS}
    values["atrous_rates"] = atrous_rates(spec)
    return values


_IN_WORDS = ("name", "backbone", "output_stride", "atrous_rates")


def _architecture_text(spec: ModelSpec) -> str:
    """"deeplabv3 on resnet50 at output stride 8 with rates (12, 24, 36)", and the other fields that are set."""
    values = _computed(spec)
    rates = f" with rates {values['atrous_rates']}" if values["atrous_rates"] else ""
    extras = "".join(f", {field} {values[field]}" for field in COMPUTING_FIELDS
                     if field not in _IN_WORDS and values[field] not in (None, False))  # fmt: skip
    return f"{values['name']} on {values['backbone']} at output stride {values['output_stride']}{rates}{extras}"


def _flag(field: str, value: Any) -> str:
    """How the command line sets ``field`` to ``value`` (``--output-stride 8``, ``--atrous-rates 12,24,36``), or
    Python for a field it has no flag for."""
    if field not in FLAGS:
        return f"{field}={value!r}"
    return f"{FLAGS[field]} {','.join(map(str, value)) if isinstance(value, tuple) else value}"


def _preset_name(spec: ModelSpec, *, computing_as: bool = False) -> str | None:
    """The preset that is ``spec`` (or, ``computing_as``, that builds a model computing as ``spec``'s does)."""
    same = (lambda preset: _computed(preset) == _computed(spec)) if computing_as else (lambda preset: preset == spec)
    return next((name for name, preset in PRESETS.items() if same(preset)), None)


def _given_as(field: str, value: Any, *, spec: ModelSpec | None, overrides: Mapping[str, Any]) -> str:
    """How the caller asked for ``field``'s ``value``, in Python and on the command line."""
    if overrides.get(field) is not None:
        return f"{field}={value!r}" + (f", {_flag(field, value)}" if field in FLAGS else "")
    if spec is not None:
        preset = _preset_name(spec)
        return f"spec=PRESETS[{preset!r}], --preset {preset}" if preset else "the spec given"
    return "from the fields asked"


def _instead(implied: ModelSpec, departures: dict, *, spec: ModelSpec | None, overrides: Mapping[str, Any]) -> str:
    """What to ask instead: leave out what departs, or a preset or flags that build what the file implies."""
    typed = [_flag(field, new) for field, (_, new) in departures.items() if overrides.get(field) is not None]
    options = [f"leave out {' and '.join(typed)}"] if typed else []
    if spec is not None:
        preset = _preset_name(spec)
        options.append(f"leave out --preset {preset}" if preset else "pass no spec")
    matching = _preset_name(implied, computing_as=True)
    if matching is not None and (spec is None or spec != PRESETS[matching]):
        options.append(f"--preset {matching}")
    fixes = [_flag(field, old) for field, (old, _) in departures.items() if overrides.get(field) is not None]
    return "; or ".join(options + ([" ".join(fixes)] if fixes else []))


def _implied(
    fmt: Format, state: Mapping, contents, name: str, *, spec_given: bool, model_name: str | None
) -> tuple[ModelSpec | None, list[tuple[str, str]]]:
    """(the spec the file implies, the fields it had to assume), from ``fmt.describe``; (None, []) for a file that says
    nothing usable of its model when the caller says it: a spec, or a ``name`` override (--model) for a file without a
    description."""
    if fmt.describe is None:
        if spec_given:
            return None, []
        raise WeightsError(f"{name}: {fmt.name} weights hold a backbone only, not a segmentation model: start a "
                           f"training from it, model.pretrained_backbone={name} (in Python build_model(..., "
                           "pretrained_backbone=path))")  # fmt: skip
    try:
        try:
            implied, assumed = fmt.describe(state, contents, name)
            check_spec(implied)
        except ConfigError as error:  # a description that is no model atrous builds: damaged, crafted or foreign
            problem = str(error) if len(str(error)) <= 200 else f"{str(error)[:200]} ..."
            raise Undescribed(
                f"{name}: the model description stored in it is not valid ({problem}): "
                "the file was damaged or written by another tool; pass --preset NAME, or --model, --backbone and "
                "--num-classes to say which architecture the weights are for (spec= or name=, backbone=, "
                "num_classes= in Python)"
            ) from None
    except WeightsError as error:
        if spec_given or (isinstance(error, Undescribed) and model_name is not None):
            return None, []
        raise
    return implied, assumed


def from_pretrained(
    source: str | Path | Mapping,
    *,
    spec: ModelSpec | None = None,
    new_classifier_ok: bool = False,
    other_architecture: Literal["warn", "refuse"] = "warn",
    revision: str | None = None,
    token: str | None = None,
    **overrides,
) -> Segmenter:
    """A model in eval mode with the weights of ``source`` (a zoo name (``atrous models --pretrained``), a weights
    file, a ``save_pretrained`` folder (atrous's, smp's, transformers'), a KerasHub preset folder, a Hugging Face Hub
    model (``hf-hub:org/name``, or ``org/name`` where no such path exists; ``revision``: a branch, tag or commit,
    ``token`` for private ones), a state dict or a training-run dict),
    built as the file describes itself, with its class names and palette when it has them.

    The architecture is read from the keys, the shapes and any description the file carries, or is ``spec`` when
    given; ``overrides`` are ``ModelSpec`` fields for what a file cannot tell (e.g. ``output_stride=8``; None values
    change nothing; ``name`` with the others builds a file that holds no description). What was recognised and
    assumed is logged at INFO level with the loading report.
    new_classifier_ok: False (the model predicts as the file trained it) raises ``WeightsError`` when the file's
    classifier has another class count than the model's, or the file has none; True starts the model from the file
    with a fresh classifier, for fine-tuning (see ``load_weights``).
    other_architecture: when ``spec`` or ``overrides`` ask for a model that computes otherwise than the one the file
    implies (another head or backbone, torchvision's output stride 8 and rates (12, 24, 36), the stride an mmseg
    config records; not the fields the file could only assume), "warn" builds it and logs a warning, "refuse" (the
    command line) raises ``WeightsError`` naming what the file implies, what was asked and what to ask instead.
    """
    if other_architecture not in OTHER_ARCHITECTURE:
        raise ConfigError(f"unknown other_architecture {other_architecture!r}; choose from {list(OTHER_ARCHITECTURE)}")
    asked = overrides.get("num_classes")
    in_zoo = isinstance(source, str) and source in zoo() and not Path(source).exists()
    hub = None if in_zoo else hub_repo(source)
    if hub is not None:
        repo, named_revision = hub
        try:
            folder = hub_folder(repo, revision or named_revision, token=token)
        except WeightsError as error:
            if source.startswith(HUB_PREFIX):
                raise
            # A plain ORG/NAME may be a mistyped local path: say both readings.
            raise WeightsError(f"{source}: no such file or folder here; read as a Hugging Face Hub model: {error}") \
                from None  # fmt: skip
        return _from_file(folder, spec=spec, known=None, overrides=overrides, new_classifier_ok=new_classifier_ok,
                          refuse=other_architecture == "refuse", name=f"{HUB_PREFIX}{repo}")  # fmt: skip
    if in_zoo:
        entry = zoo()[source]
        if entry.kind == "backbone_init":
            raise WeightsError(f"{source} is the ImageNet init of the {entry.spec.backbone} backbone, not a segmentation "
                               f"model: start a training from it, model.pretrained_backbone={source} (in Python "
                               f"build_model({entry.spec.name!r}, pretrained_backbone={source!r}, num_classes=N))")  # fmt: skip
        if not new_classifier_ok and spec is None and asked not in (None, entry.spec.num_classes):
            # Said before the download: the file would not be usable as asked anyway.
            cached = hub_checkpoints() / entry.filename  # where zoo_file puts it
            raise WeightsError(_other_classes_asked(source, entry.spec.num_classes, asked,
                                                    weights=f"{cached} (the zoo's download of it)"))  # fmt: skip
        # The zoo knows its publisher's architecture: it is what the file implies.
        hub = hub_repo(entry.url) if entry.url and entry.url.startswith(HUB_PREFIX) else None
        where = hub_folder(hub[0], revision or hub[1], token=token) if hub else zoo_file(entry)
        model = _from_file(where, spec=spec, known=(entry.name, entry.spec), overrides=overrides,
                           new_classifier_ok=new_classifier_ok, refuse=other_architecture == "refuse",
                           name=entry.url if hub else None)  # fmt: skip
        if model.num_classes == entry.spec.num_classes:
            model.set_labels(*entry.class_names_and_palette())
        return model
    return _from_file(source, spec=spec, known=None, overrides=overrides, new_classifier_ok=new_classifier_ok,
                      refuse=other_architecture == "refuse")


def _from_file(
    source: str | Path | Mapping, *, spec: ModelSpec | None, known: tuple[str, ModelSpec] | None,
    overrides: Mapping[str, Any], new_classifier_ok: bool, refuse: bool, name: str | None = None,
) -> Segmenter:  # fmt: skip
    """``from_pretrained`` of a file, folder or state dict; ``known``: (zoo name, spec) of a published file, whose
    architecture the zoo knows rather than the file; ``name``: what messages call the source (a Hub repository's
    rather than its cache folder's)."""
    asked_classes = overrides.get("num_classes")
    read = read_source(locate_weights(source) if isinstance(source, (str, Path)) else source)
    name = name or (str(source) if isinstance(source, (str, Path)) else read.name)
    contents, inert = read.contents, read.inert
    if isinstance(contents, Mapping):
        verify_checksum(contents, name)
    state = unwrap_state_dict(contents, source=name)
    fmt = find_format(detect_format(state, source=name))
    if known is not None:
        zoo_name, implied = known
        assumed = []
    else:
        implied, assumed = _implied(fmt, state, contents, name, spec_given=spec is not None,
                                    model_name=overrides.get("name"))  # fmt: skip
    if spec is None and implied is None:  # a file without a description, built as the overrides say
        chosen, described = check_spec(ModelSpec(name=overrides["name"])), "the overrides"
    elif spec is None:
        chosen, described = implied, (f"the zoo entry {zoo_name}" if known is not None else fmt.name)
        if not new_classifier_ok and asked_classes not in (None, implied.num_classes):
            raise WeightsError(_other_classes_asked(name, implied.num_classes, asked_classes, weights=name))
    else:
        chosen, described = spec, "the given spec"
    asked_spec = chosen.with_overrides(**overrides)
    if implied is not None:
        _check_architecture(name, fmt, implied, assumed, asked_spec, spec=spec, overrides=overrides, refuse=refuse)
    model = build_model(asked_spec)
    report = load_weights(model, state, name=name, inert=inert, new_classifier_ok=new_classifier_ok,
                          format_name=fmt.name)  # fmt: skip
    report.messages.append(f"architecture from {described}: {model.spec}")
    log.info("%s", report)
    # A warning, not INFO: Python shows warnings without any logging set up, and an assumption can be wrong.
    for field, text in assumed if spec is None else ():
        if overrides.get(field) is None:
            log.warning("%s: assumed %s; pass %s=... (%s ...) if it was trained otherwise", name, text, field,
                        FLAGS.get(field, field))  # fmt: skip
    names, palette = _checked_labels(*_labels_in(contents, fmt), source=name)
    if names is not None and len(names) != model.num_classes:
        names = None  # the classifier was replaced: the file's names describe other classes
    if palette is not None and len(palette) < model.num_classes:
        palette = None
    model.set_labels(names, palette)
    return model.eval()


def load_trained_model(
    path: str | Path,
    *,
    spec: ModelSpec | None = None,
    overrides: dict[str, Any] | None = None,
    other_architecture: str = "warn",
) -> Segmenter:
    """The model in eval mode, with its class names and palette when the file has them.

    path: an atrous checkpoint (it says which model it holds), or any weights file ``from_pretrained`` reads.
    spec: the architecture to build instead of the one the file describes (needed for a file without a description).
    overrides: ``ModelSpec`` fields to change; None values change nothing; ``name`` with the others builds a file
    without a description. other_architecture: "warn" or "refuse" (the command line) a spec or overrides that ask for
    a model computing otherwise than the one the file implies (see ``from_pretrained``).
    """
    return from_pretrained(path, spec=spec, other_architecture=other_architecture, **(overrides or {}))
