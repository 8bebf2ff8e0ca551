"""The one reader of torch files (``torch.save``'s zip and the older pickle format), for atrous's own checkpoints
and every publisher's weights alike, without running any code from them; and the checksum atrous stores with its
weights.

``torch.load(weights_only=True)`` refuses a file that holds any object it does not know: a numpy score
(VainF, jfzhang95), mmengine's ``HistoryBuffer`` (mmseg), a whole pickled model (some smp users). The tensors in
such files are still plain tensors. ``read_torch_file`` lists the classes and functions a file names (without
unpickling it), lets the harmless ones through (numpy scalars and dtypes) and stands an ``Inert`` placeholder in
for every other one, then loads with torch's own weights-only unpickler: a class in the file is never imported,
a function in it never called. A file that calls what torch refuses outright (``os``, ``posix``, ``nt``, ``sys``), or
that holds placeholders where its weights should be, is refused with ``refusal``'s message, which names what the file
asked to call and never suggests ``weights_only=False``. ``objects="refuse"`` (atrous's own checkpoints, which never
hold any) refuses a file with placeholders outright.

Sizes are bounded before anything is built (``_refuse_inflation``): the pickle (``data.pkl``) of a weights file is a
few hundred kB, its tensors are stored uncompressed, so a file whose pickle declares more than ``MAX_PICKLE_BYTES``,
or whose members inflate past the file's own size, is refused unread (a 70 MB file can declare a 4 GiB pickle).
What the pickle built outside the tensors is then walked once (``_refuse_object_bombs``): more than ``MAX_OBJECTS``
containers and values, counted every time they are reached (a few hundred bytes of pickle can make a list reach
itself 2**40 times), or nesting deeper than ``MAX_NESTING``, is refused before any code looks at it.

``weights_checksum`` / ``verify_checksum``: a file changed or damaged after atrous wrote it is refused, not loaded.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import MissingFileError, WeightsError
from ..file_kind import content_kind, missing_kind, special_kind
from .tf_bundle import bundle_prefix, is_tf_checkpoint

# The largest pickle a weights file may carry: a ResNet-101's is about 60 kB, an mmseg checkpoint with its optimizer
# state and training log a few hundred kB.
MAX_PICKLE_BYTES = 16 * 2**20
# The most objects (containers, strings, numbers: everything but tensors) reached walking what a file holds; an
# optimizer's state for a thousand tensors is a few thousand.
MAX_OBJECTS = 1_000_000
MAX_NESTING = 100
# Files torch.save wrote before the zip format are pickles in a row: magic number, protocol, system info, the object
# (then the storage keys and the raw storages).
_LEGACY_HEADER_PICKLES = 4


class Inert:
    """What a class or function named in a weights file becomes: it keeps what the file passed to it (``args``,
    ``state``) and does nothing. ``qualified_name`` says what the file asked for."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        instance = object.__new__(cls)
        instance.args, instance.state = args, None
        return instance

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


def _harmless(name: str):
    """numpy scalars and dtypes (a training run's best score): rebuilt from bytes, no code of the file's choosing."""
    import numpy as np

    if name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        return np._core.multiarray.scalar
    if name == "numpy.dtype":
        return np.dtype
    if name.startswith("numpy.dtypes.") and name.endswith("DType"):
        return getattr(np.dtypes, name.rsplit(".", 1)[1], None)
    return None


def _numpy_dtype_classes() -> list[tuple[type, str]]:
    import numpy as np

    classes = [value for value in vars(np.dtypes).values() if isinstance(value, type) and issubclass(value, np.dtype)]
    return [(cls, f"numpy.dtypes.{cls.__name__}") for cls in classes]


def _placeholder(name: str) -> type[Inert]:
    return type(name.rsplit(".", 1)[-1], (Inert,), {"qualified_name": name, "__module__": "atrous.inert"})


def read_torch_file(
    path: str | Path, *, what: str = "weights file", objects: Literal["inert", "refuse"] = "inert"
) -> tuple[Any, list[str]]:
    """(what the file holds, the names that were read as ``Inert`` placeholders). Tensors come back as tensors, on
    the CPU; numpy scalars as numpy scalars.

    what: the file's kind, for the messages ("weights file", "checkpoint"). objects: "inert" reads the classes and
    functions a file names as placeholders (other projects' training runs keep scores and configs as objects);
    "refuse" raises ``WeightsError`` for any (atrous's checkpoints hold none, so one that does was changed)."""
    path = refuse_what_is_not_a_file(path, what)
    _refuse_foreign(path, what)
    _refuse_inflation(path, what)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError):  # the pre-1.6 format, or a damaged (truncated) zip: torch.load decides,
        # and says which
        names = []
    allowed, inert = [], []
    if "numpy.dtype" in names:  # unpickling a dtype builds an instance of its class, which the file does not name
        allowed += _numpy_dtype_classes()
    for name in names:
        harmless = _harmless(name)
        if harmless is not None:
            allowed.append((harmless, name))
        else:
            allowed.append((_placeholder(name), name))
            inert.append(name)
    if inert and objects == "refuse":
        raise WeightsError(f"{path}: {refusal(inert)}")
    try:
        with torch.serialization.safe_globals(allowed):
            contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own text suggests weights_only=False, which would run the file's code: never passed on.
        asked = _refused_globals(error) or inert or (_globals_named_in(path) if not names else [])
        if asked:
            raise WeightsError(f"{path}: {refusal(asked)}") from None
        detail = str(error.__context__ or "") if "weights_only" in str(error) else str(error)
        raise WeightsError(f"{path}: cannot read {_kind(what)} (truncated or damaged file?): {detail}") from error
    except MemoryError as error:
        raise WeightsError(
            f"{path}: reading the {_kind(what)} ran out of memory: it holds more than this machine can "
            "hold (its tensors' sizes: free memory, or read it on a larger machine)"
        ) from error
    except Exception as error:  # torch/zipfile raise their own types for damaged files
        if "DefaultCPUAllocator" in str(error) or "out of memory" in str(error):  # torch's MemoryError, spelled out
            raise WeightsError(f"{path}: reading the {_kind(what)} ran out of memory: {str(error).splitlines()[0]} "
                               "(free memory, or read it on a larger machine)") from error  # fmt: skip
        raise WeightsError(f"{path}: cannot read {_kind(what)} (truncated or damaged file?): {error}") from error
    _refuse_object_bombs(contents, path, what)
    return contents, inert


def refuse_what_is_not_a_file(path: str | Path, what: str) -> Path:
    """``path`` as a ``Path`` once it is a regular file; ``MissingFileError`` when it does not exist (or is a link to
    nothing), ``WeightsError`` saying what it is otherwise (a FIFO, a device, a folder): never opened."""
    path = Path(path)
    kind = special_kind(path)
    if kind is not None:
        link = f" (a link to {os.readlink(path)})" if path.is_symlink() else ""
        raise WeightsError(f"{path} is {kind}{link}, not a {what}: pass the {what} itself (.pt, .pth or "
                           ".safetensors)")  # fmt: skip
    if not path.is_file():
        missing = missing_kind(path)
        if missing != "not found":
            raise MissingFileError(f"{path} is {missing}")
        # A run stopped before its first validation has no best.pt: the files beside it say which to take instead.
        beside = sorted(p.name for p in path.parent.glob(f"*{path.suffix}")) if path.parent.is_dir() else []
        shown = f" ({path.parent} holds {', '.join(beside[:3])}{' ...' if len(beside) > 3 else ''})" if beside else ""
        raise MissingFileError(f"{what} not found: {path}{shown}")
    return path


def _refuse_foreign(path: Path, what: str) -> None:
    """``WeightsError`` for a file that is neither a zip archive nor a pickle (every torch file is one or the other)
    and says what it is instead: part of a TensorFlow checkpoint, empty, an image, a compressed archive, a Git LFS
    pointer, text."""
    if is_tf_checkpoint(path):
        raise WeightsError(f"{path} is part of the TensorFlow checkpoint {bundle_prefix(path)}, not a PyTorch {what}: "
                           "pass it as weights (--weights, model.weights, from_pretrained), which read TensorFlow "
                           "checkpoints")  # fmt: skip
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # zip (torch.save) or a pickle of protocol 2 or later
        return
    kind = content_kind(path)
    if kind is not None:
        raise WeightsError(f"{path} is {kind}, not a {what} (a .pt or .pth file is a zip archive or a pickle written "
                           "by torch.save)")  # fmt: skip


def _refuse_inflation(path: Path, what: str) -> None:
    """``WeightsError`` for a file whose pickle is larger than ``MAX_PICKLE_BYTES`` or whose zip members declare
    more bytes than the file holds (beyond that pickle allowance): checked on the headers, before any is read. A
    member that declares less than it holds fails its own read (zip and miniz stop at the declared size)."""
    size, problem = path.stat().st_size, None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return  # torch.load says what is wrong with it
        if not any(member.filename.endswith("data.pkl") for member in members):
            names = ", ".join(member.filename for member in members[:3]) or "nothing"
            raise WeightsError(f"{path} is a zip archive without a data.pkl (it holds {names}): not a {what} written "
                               "by torch.save; unpack it if the weights file is inside")  # fmt: skip
        pickles = [m for m in members if m.filename.endswith("data.pkl") and m.file_size > MAX_PICKLE_BYTES]
        inflated = sum(member.file_size for member in members)
        if pickles:
            problem = f"its pickle {pickles[0].filename} declares {_mib(pickles[0].file_size)}"
        elif inflated > size + MAX_PICKLE_BYTES:
            problem = f"its members inflate to {_mib(inflated)} from a file of {_mib(size)}"
    elif _legacy_pickles_end(path) > MAX_PICKLE_BYTES:
        problem = f"its pickles run past {_mib(MAX_PICKLE_BYTES)}"
    if problem is not None:
        raise WeightsError(f"{path}: refused: {problem} (a {what}'s pickle is at most "
                           f"{_mib(MAX_PICKLE_BYTES)}, its tensors stored uncompressed); this file is damaged or "
                           "crafted to exhaust memory, and nothing of it was read")  # fmt: skip


def _legacy_pickles_end(path: Path) -> int:
    """Where the leading pickles of a pre-zip torch file end (read as opcodes, nothing built), or where reading
    stopped past ``MAX_PICKLE_BYTES``; 0 when the file is not such pickles (torch.load then says what it is)."""
    try:
        with open(path, "rb") as handle:
            for _ in range(_LEGACY_HEADER_PICKLES):
                for _ in pickletools.genops(handle):
                    if handle.tell() > MAX_PICKLE_BYTES:
                        return handle.tell()
            return handle.tell()
    except (OSError, ValueError, EOFError):
        return 0


def _refuse_object_bombs(contents: Any, path: Path, what: str) -> None:
    """``WeightsError`` when what a file holds reaches more than ``MAX_OBJECTS`` objects outside its tensors, each
    counted every time it is reached, or nests deeper than ``MAX_NESTING``: walked with a stack of its own, so no
    depth overflows Python's, and stopped at the bound, so no sharing multiplies the work."""
    stack, reached = [(contents, 0)], 1
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = value
        elif isinstance(value, Inert):
            children = [*value.args, value.state]
        else:
            continue
        reached += len(children)  # counted before they are stacked: the stack stays within the bound too
        if reached > MAX_OBJECTS or depth >= MAX_NESTING:
            problem = (f"what it holds nests deeper than {MAX_NESTING} levels" if depth >= MAX_NESTING else
                       f"what it holds reaches more than {MAX_OBJECTS:,} objects outside its tensors (a pickle can "
                       "make a few bytes reach one list billions of times)")  # fmt: skip
            raise WeightsError(f"{path}: refused: {problem}; a {what} holds tensors and a little metadata, so "
                               "this one is damaged or crafted to exhaust memory or time")  # fmt: skip
        stack.extend((child, depth + 1) for child in children if not isinstance(child, torch.Tensor))


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def _kind(what: str) -> str:
    return what.removesuffix(" file")


def refusal(names: list[str]) -> str:
    """Why a file that holds pickled code or objects instead of weights was not read."""
    shown = ", ".join(sorted(set(names))[:5])
    return (
        f"refused for safety: the file holds pickled code or objects, not only weights, and asks to call {shown}; "
        "atrous never runs code from a weights file, and nothing of this one ran. Ask its publisher for a plain "
        "state dict (torch.save(model.state_dict(), path)) or a .safetensors file"
    )


def _refused_globals(error: pickle.UnpicklingError) -> list[str]:
    """The global torch's weights-only unpickler stopped at ("GLOBAL posix.system whose module posix is blocked")."""
    return re.findall(r"GLOBAL ([\w.]+)", str(error))


# Files torch.save wrote before the zip format (or plain pickle.dump files) are a few pickles in a row: magic number,
# protocol, system info, the object, the storage keys.
_LEADING_PICKLES = 5
# Globals a weights file names legitimately (tensors, storages, ordered dicts, bytes): not worth naming as code.
_PLAIN_MODULES = ("torch", "collections", "_codecs")


def _globals_named_in(path: Path) -> list[str]:
    """The classes and functions (module.name) the pickles at the start of a non-zip file name, listed by
    ``pickletools``, which builds nothing. Best effort, for messages: a name assembled on the stack in an unusual
    way is missed."""
    names: list[str] = []
    try:
        with open(path, "rb") as handle:
            for _ in range(_LEADING_PICKLES):
                strings, memo, last = [], {}, None  # `last`: the string the previous opcode pushed, if any
                for opcode, arg, _ in pickletools.genops(handle):
                    if opcode.name in ("GLOBAL", "INST"):
                        names.append(arg.replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(".".join(strings[-2:]))
                    if opcode.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                        memo[len(memo) if opcode.name == "MEMOIZE" else arg] = last
                        continue  # storing in the memo leaves the stack as it was
                    last = memo.get(arg) if opcode.name.endswith("GET") else arg if isinstance(arg, str) else None
                    if last is not None:
                        strings.append(last)
    except (OSError, ValueError, EOFError):
        pass  # the end of the pickles, or not a pickle at all
    return [name for name in dict.fromkeys(names) if name.split(".", 1)[0] not in _PLAIN_MODULES]


def placeholders_in(obj: Any, depth: int = 4) -> list[str]:
    """The names of the classes and functions that ``Inert`` placeholders in ``obj`` (and in the dicts, lists and
    tuples in it, ``depth`` levels down) stand in for."""
    if isinstance(obj, Inert):
        return [obj.qualified_name]
    if depth == 0:
        return []
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    return sorted({name for value in values for name in placeholders_in(value, depth - 1)})


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a whole pickled ``nn.Module`` read as ``Inert`` placeholders (``_parameters``, persistent
    ``_buffers`` and ``_modules``, recursively); empty when ``obj`` is not one."""
    state = obj.state if isinstance(obj, Inert) else None
    if not isinstance(state, dict) or "_modules" not in state:
        return {}
    tensors: dict[str, torch.Tensor] = {}
    non_persistent = state.get("_non_persistent_buffers_set")
    skipped = set(non_persistent.args[0]) if isinstance(non_persistent, Inert) and non_persistent.args else set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skipped:
                tensors[f"{prefix}{name}"] = value.detach() if isinstance(value, torch.nn.Parameter) else value
    for name, child in (state.get("_modules") or {}).items():
        tensors.update(module_state_dict(child, f"{prefix}{name}."))
    return tensors


def weights_checksum(state_dict: Mapping[str, Any]) -> str:
    """sha256 (hex) over each tensor's name, dtype, shape and bytes (C order), in sorted name order: the same for
    the same values wherever the tensors live and whatever their memory format. Non-tensor entries are not in it."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def verify_checksum(contents: Mapping, source: str) -> None:
    """Raise ``WeightsError`` naming ``source`` when ``contents`` has a ``checksum`` its ``model`` tensors do not
    match. Contents without one (older atrous files, other projects' files) pass."""
    stored = contents.get("checksum") if isinstance(contents, Mapping) else None
    if stored is None:
        return
    weights = contents.get("model")
    if not isinstance(weights, Mapping) or weights_checksum(weights) != stored:
        raise WeightsError(
            f"{source}: the weights do not match the checksum stored with them: the file was changed or damaged "
            "after it was written (if you edited its weights on purpose, delete its 'checksum' entry)"
        )
