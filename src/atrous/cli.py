"""The ``atrous`` command line. Each subcommand is a small function; the work lives in the library."""

from __future__ import annotations

import argparse
import json
import sys

from .models import MODELS, list_backbones, list_models
from .models.summary import model_rows


def _models(args: argparse.Namespace) -> int:
    rows = model_rows(size=args.size, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["model", "backbone", "OS", "params (M)", f"GMACs@{args.size}", f"GFLOPs@{args.size}"]
    table = [
        [r["model"], r["backbone"], str(r["output_stride"]), f"{r['params_m']:.1f}", f"{r['gmacs']:.1f}", f"{r['gflops']:.1f}"]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
    print(f"\n{args.num_classes} classes, one {args.size}x{args.size} image, no aux head; GFLOPs = 2 x GMACs.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrous", description="DeepLab semantic segmentation.")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="table of every architecture x backbone: params, GFLOPs, output stride")
    models.add_argument("--size", type=int, default=513, help="square input size for the FLOP count (default 513)")
    models.add_argument("--num-classes", type=int, default=21)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"atrous {args.command}: error: {error}", file=sys.stderr)
        return 2


__all__ = ["MODELS", "build_parser", "list_backbones", "list_models", "main"]
