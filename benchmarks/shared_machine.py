"""How the demo's training slows when another CPU-heavy process shares the machine, per OpenMP spin setting.

    python benchmarks/shared_machine.py [--iterations 100] [--repeats 2]

Runs `atrous train` on the demo recipe (data in data/synthetic, written first if missing) for ``--iterations``
iterations, alone and beside a process that multiplies matrices on every core, alternating libgomp's default spin
count (300,000) with atrous's (10,000), and prints the training images/s of each run. Sharing two cores with one
other busy process should cost about 2x.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "deeplabv3plus_r18-os16_synthetic_64x64_700.yaml"
HOG = """
import torch
torch.set_num_threads(torch.get_num_threads())
a = torch.randn(1024, 1024)
while True:
    a @ a
"""
SETTINGS = {"libgomp default (300,000 spins)": "300000", "atrous (10,000 spins)": "10000"}


def images_per_second(spincount: str, iterations: int, folder: Path) -> float:
    env = {**os.environ, "GOMP_SPINCOUNT": spincount, "ATROUS_PROGRESS": "lines"}
    command = ["atrous", "train", "--config", str(RECIPE), f"name=shared_{spincount}_{os.urandom(3).hex()}",
               f"train.iterations={iterations}", "train.val_every=100000", "train.save_every=100000",
               f"train.log_every={iterations}", f"out_dir={folder / 'runs'}", f"data.root={folder / 'data'}"]  # fmt: skip
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    output = finished.stdout + finished.stderr  # progress lines go to either, depending on the terminal
    return float(re.findall(r"img_s=([0-9.]+)", output)[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atrous-shared-") as folder:
        folder = Path(folder)
        subprocess.run(["atrous", "data", "synth", "--out", str(folder / "data")], check=True, capture_output=True)
        results: dict[tuple[str, str], list[float]] = {}
        for load in ("alone", "beside a busy process"):
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if load != "alone" else None
            try:
                for _ in range(args.repeats):
                    for name, spincount in SETTINGS.items():
                        speed = images_per_second(spincount, args.iterations, folder)
                        results.setdefault((load, name), []).append(speed)
                        print(f"{load:>22} | {name:<32} | {speed:5.1f} images/s", flush=True)
            finally:
                if hog is not None:
                    hog.kill()
    print()
    for name in SETTINGS:
        alone, shared = (min(results[(load, name)]) for load in ("alone", "beside a busy process"))
        print(f"{name}: slowest alone {alone:.1f}, slowest shared {shared:.1f} images/s: {alone / shared:.1f}x slower")


if __name__ == "__main__":
    main()
