"""The entry point of the original DeepLabV3 training scripts, kept as a thin alias of ``atrous train``.

    python train_pytorch.py --backbone resnet50 --output_stride 16 [any atrous train option]
"""

import sys

from atrous.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
