"""Models on the Hugging Face Hub, by repository name: ``hf-hub:org/name`` (timm's spelling), ``hf-hub:org/name@rev``,
or a plain ``org/name`` that is no local path. ``hub_folder`` brings the files a model is read from (``config.json``
and one weights file) into ``huggingface_hub``'s own cache and returns the snapshot folder, which ``read_folder``
reads like any ``save_pretrained`` folder.

Offline (``HF_HUB_OFFLINE=1``) ``huggingface_hub`` answers from its cache without a network attempt; a file it does
not have is one clear error naming the cache. ``huggingface_hub`` is an optional extra (``hub``)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import WeightsError
from ..install import extra_command

HUB_PREFIX = "hf-hub:"
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# The suffixes of weights files: a missing "runs/best.pt" is a mistyped path, never a repository.
_FILE_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt", ".safetensors", ".h5", ".index", ".onnx", ".gz", ".tgz")
# What a model is read from, most wanted first: one of these beside config.json. KerasHub's task presets keep the
# whole segmenter (backbone and head) in task.weights.h5, described by task.json.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin", "task.weights.h5")
# Read when the repository has them: the input processing (transformers); KerasHub's backbone weights, task and
# preprocessor.
DESCRIPTION_FILES = {"model.safetensors": ("preprocessor_config.json",),
                     "pytorch_model.bin": ("preprocessor_config.json",),
                     "task.weights.h5": ("model.weights.h5", "task.json", "preprocessor.json", "metadata.json")}  # fmt: skip


def hub_repo(source: object) -> tuple[str, str | None] | None:
    """(repository, revision or None) when ``source`` names a Hub model: ``hf-hub:org/name[@revision]``, or
    ``org/name[@revision]`` where no such local path exists and it does not end as a weights file does; else None."""
    if not isinstance(source, str):
        return None
    name = source.removeprefix(HUB_PREFIX)
    repo, _, revision = name.partition("@")
    if not _REPO.fullmatch(repo):
        if source.startswith(HUB_PREFIX):
            raise WeightsError(f"{source}: a Hugging Face Hub model is named hf-hub:ORG/NAME (optionally "
                               "@REVISION), e.g. hf-hub:google/deeplabv3_mobilenet_v2_1.0_513")  # fmt: skip
        return None
    if not source.startswith(HUB_PREFIX) and (Path(source).exists() or repo.lower().endswith(_FILE_SUFFIXES)):
        return None
    return repo, revision or None


def hub_folder(repo: str, revision: str | None = None, *, token: str | bool | None = None) -> Path:
    """The local snapshot folder of ``repo`` at ``revision`` holding its ``config.json`` and one weights file (the
    first of ``WEIGHTS_FILES`` it has) with the files that describe it, downloaded with a progress bar when not cached.

    Raises ``WeightsError`` naming the repository: not installed, not found, private or gated, not in the cache
    offline, or holding no weights file atrous reads."""
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise WeightsError(f"hf-hub:{repo}: reading models from the Hugging Face Hub needs huggingface_hub: "
                           f"{extra_command('hub', 'huggingface_hub')}") from None  # fmt: skip
    where = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    # Unreachable, huggingface_hub retries each file for about 20 seconds before it falls back on its cache: one quick
    # look first, and the cache alone when the Hub does not answer.
    cache_only = huggingface_hub.constants.HF_HUB_OFFLINE or not _reachable(huggingface_hub.constants.ENDPOINT)

    missing: list[WeightsError] = []  # files not in the cache offline: said when no weights file is found

    def download(filename: str, *, optional: bool = False) -> Path | None:
        try:
            return Path(huggingface_hub.hf_hub_download(repo, filename, revision=revision, token=token,
                                                        local_files_only=cache_only))  # fmt: skip
        except errors.GatedRepoError:
            raise WeightsError(f"{where} is gated: accept its conditions on the Hub, then log in (hf auth login) or "
                               "set HF_TOKEN") from None  # fmt: skip
        except errors.RepositoryNotFoundError:
            raise WeightsError(f"{where}: no such model repository on the Hugging Face Hub (or it is private: log in "
                               "with hf auth login or set HF_TOKEN)") from None  # fmt: skip
        except errors.RevisionNotFoundError:
            raise WeightsError(f"{where}: the repository has no revision {revision!r} (a branch, tag or commit)") \
                from None  # fmt: skip
        except errors.LocalEntryNotFoundError:
            if not optional:
                raise _not_cached(where, filename, huggingface_hub.constants) from None
            missing.append(_not_cached(where, filename, huggingface_hub.constants))
        except errors.EntryNotFoundError:  # the repository does not have it (or the cache knows it does not)
            if not optional:
                raise WeightsError(f"{where} has no {filename}: not a model atrous reads") from None
        return None

    config = download("config.json")
    weights = next(filter(None, (download(name, optional=True) for name in WEIGHTS_FILES)), None)
    if weights is None:
        if missing:
            raise missing[0]
        raise WeightsError(f"{where} holds none of {', '.join(WEIGHTS_FILES)} beside its config.json: not a model "
                           "atrous reads (a TensorFlow-only or other library's repository?)")  # fmt: skip
    for filename in DESCRIPTION_FILES[weights.name]:
        download(filename, optional=True)  # the weights say what the network is; these add the input processing
    if weights.parent != config.parent:  # both come from one snapshot: one revision
        raise WeightsError(f"{where}: config.json and {weights.name} come from two revisions ({config.parent.name}, "
                           f"{weights.parent.name}) of the cache; pass a commit as the revision")  # fmt: skip
    return config.parent


def _reachable(endpoint: str, *, seconds: float = 3.0) -> bool:
    """Whether the Hub's host takes a connection within ``seconds`` (assumed so behind a proxy, which a direct
    connection does not go through)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), seconds).close()
    except OSError:
        return False
    return True


def _not_cached(where: str, filename: str, constants) -> WeightsError:
    cache = Path(constants.HF_HUB_CACHE)
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set, so nothing is downloaded"
    else:
        why = "the Hub could not be reached"
    return WeightsError(f"{where}: {filename} is not in the Hugging Face cache ({cache}) and {why}: run it once "
                        "online (or copy its models--ORG--NAME folder into that cache from a machine that has it), "
                        "or pass a local folder or file")  # fmt: skip
