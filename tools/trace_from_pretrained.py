"""Which of atrous's files ``atrous.from_pretrained(path)`` crosses, from the call to the loaded model: the distinct
files, and the stops (each time the call moves from one atrous file into another, returns included).

    python tools/trace_from_pretrained.py            # the installed atrous (or PYTHONPATH=<other checkout>/src)

The file traced is an atrous checkpoint of a small DeepLabV3+ (written first, not traced), read as a user would.
"""

import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

import atrous
from atrous.checkpoint import model_checkpoint


def main() -> None:
    package = Path(atrous.__file__).parent
    folder = Path(tempfile.mkdtemp())
    path = folder / "model.pt"
    torch.save(model_checkpoint(atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=3)), path)
    stops, previous = [], None

    def profile(frame, event, arg):
        nonlocal previous
        if event not in ("call", "return"):
            return
        name = frame.f_code.co_filename
        if event == "return":
            name = frame.f_back.f_code.co_filename if frame.f_back is not None else name
        if not name.startswith(str(package)):
            return
        # only the loading path: building the network's modules (torch.nn constructors) is not a stop of its own
        relative = str(Path(name).relative_to(package))
        if relative != previous:
            stops.append(relative)
            previous = relative

    sys.setprofile(profile)
    atrous.from_pretrained(path)
    sys.setprofile(None)
    loading = [stop for stop in stops if not stop.startswith(("models/backbones", "models/heads", "models/layers",
                                                               "models/atrous_conv", "models/segmenter",
                                                               "models/backbones.py", "models/heads.py"))]  # fmt: skip
    counts = Counter(loading)
    print(f"atrous {atrous.__version__} at {package}")
    print(f"{len(counts)} files, {len(loading)} stops (the network's own modules left out)")
    print("visits per file: " + ", ".join(f"{name} {count}" for name, count in counts.most_common()))


if __name__ == "__main__":
    main()
