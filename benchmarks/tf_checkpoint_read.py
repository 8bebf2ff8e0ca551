"""How long reading a TensorFlow checkpoint takes and how much memory it peaks at (issue 30: the Xception-65
checkpoint, about 160 MB, in seconds and below twice its size). Each reading runs in a fresh process, so its peak
resident memory over the interpreter's (torch and atrous imported) is the reading's alone.

    python benchmarks/tf_checkpoint_read.py PREFIX [--tarball]

PREFIX: a checkpoint TensorFlow wrote (tools/google_deeplab_reference.py writes Xception-65 ones); --tarball also
packs it as Google's zoo does (model.ckpt.* in a .tar.gz) and reads that where it lies.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys, time
import torch, atrous
from atrous.weights.tf_bundle import read_tf_checkpoint
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
tensors = read_tf_checkpoint(sys.argv[1])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = sum(t.numel() * t.element_size() for t in tensors.values() if isinstance(t, torch.Tensor))
print(json.dumps({"seconds": seconds, "peak_over_start_mb": (peak - before) / 1024, "tensors_mb": size / 2**20,
                  "variables": len(tensors)}))
"""


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--tarball", action="store_true")
    args = parser.parse_args()
    files = [args.prefix.with_name(args.prefix.name + suffix) for suffix in (".index", ".data-00000-of-00001")]
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")  # fmt: skip
    print(f"{cpu}; checkpoint {size_mb:.1f} MB on disk")
    sources = {"files (prefix)": args.prefix}
    with tempfile.TemporaryDirectory() as folder:
        if args.tarball:
            tarball = Path(folder) / "checkpoint.tar.gz"
            with tarfile.open(tarball, "w:gz") as archive:
                for f in files:
                    archive.add(f, f"model/{f.name}")
            sources[f"tarball ({tarball.stat().st_size / 2**20:.1f} MB gzip)"] = tarball
        for name, path in sources.items():
            result = measure(path)
            print(f"{name}: {result['seconds']:.2f} s, peak {result['peak_over_start_mb']:.0f} MB over the interpreter's "
                  f"({result['peak_over_start_mb'] / size_mb:.2f}x the checkpoint), {result['variables']} variables, "
                  f"{result['tensors_mb']:.1f} MB of tensors")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
