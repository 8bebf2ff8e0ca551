"""``atrous push``: a training run (or any file atrous reads) to the Hugging Face Hub, with a model card that says how
the run trained and what it scored. The run's own files say it: ``config.yaml`` (data, recipe) and ``metrics.jsonl``
(its validations); the weights are its best checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .checkpoint import BEST, LAST
from .errors import MissingFileError
from .run_dir import CHECKPOINTS, CONFIG, METRICS
from .weights.pretrained import load_trained_model
from .weights.publish import ModelCard, hub_api, push_to_hub

_SNAPSHOT = re.compile(r"iter_(\d+)\.pt")
_SCORES = ("mIoU", "pixel_accuracy", "mean_class_accuracy", "fwIoU")


def push(source: str | Path, repo: str, *, private: bool | None = None, token: str | None = None,
         license: str = "other") -> str:  # fmt: skip
    """Upload ``source`` (a run directory: its best checkpoint, else its last; a checkpoint; any weights atrous reads)
    to ``repo`` and return the commit's URL. Refused before anything is read when the upload cannot happen (offline,
    no token), and when a run directory holds no checkpoint."""
    hub_api(token)  # ConfigError now rather than after reading the weights
    weights, run = _weights_and_run(Path(source))
    card = run_card(run, weights) if run is not None else ModelCard()
    card.license = license
    return push_to_hub(load_trained_model(weights), repo, private=private, token=token, card=card)


def _weights_and_run(source: Path) -> tuple[Path, Path | None]:
    """(the weights file to push, the run directory it belongs to or None)."""
    if source.is_dir() and (source / CHECKPOINTS).is_dir():
        for name in (BEST, LAST):
            if (source / CHECKPOINTS / name).is_file():
                return source / CHECKPOINTS / name, source
        raise MissingFileError(f"{source}: the run saved no checkpoint yet ({CHECKPOINTS}/ has no {BEST} or {LAST})")
    run = source.parent.parent if source.parent.name == CHECKPOINTS else None
    return source, run if run is not None and (run / CONFIG).is_file() else None


def run_card(run: Path, weights: Path) -> ModelCard:
    """What the run's files say: its data and recipe, and the validation scores of the iteration ``weights`` holds
    (``best.pt``: the best validation's; ``iter_N.pt``: iteration N's, when it was validated)."""
    config = yaml.safe_load((run / CONFIG).read_text()) if (run / CONFIG).is_file() else {}
    data, optim, train = (config.get(part) or {} for part in ("data", "optim", "train"))
    recipe = {"iterations": train.get("iterations"), "batch size": data.get("batch_size"),
              "crop": data.get("crop_size"), "optimizer": optim.get("name"), "learning rate": optim.get("lr"),
              "mixed precision": train.get("amp"), "run": config.get("name")}  # fmt: skip
    card = ModelCard(dataset=data.get("dataset"), recipe={key: value for key, value in recipe.items() if value is not None})
    validations = _validations(run / METRICS)
    if weights.name == BEST and validations:
        chosen = max(validations, key=lambda row: row["val"].get("mIoU", -1.0))
    else:
        match = _SNAPSHOT.fullmatch(weights.name)
        chosen = next((row for row in validations if match and row.get("iteration") == int(match[1])), None)
    if chosen is not None:
        card.scores = {key: chosen["val"][key] for key in _SCORES if isinstance(chosen["val"].get(key), (int, float))}
        card.recipe["validated at iteration"] = chosen.get("iteration")
        card.recipe["validation split"] = data.get("val_split", "val")
    return card


def _validations(path: Path) -> list[dict]:
    """The metrics log's validation rows (a line a crash cut short is skipped)."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("val"), dict):
            rows.append(row)
    return rows
