"""The ``atrous`` command line. Each subcommand is a small function; the work lives in the library."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from . import engine
from .bench import SECTIONS, run_bench
from .config import Config, apply_overrides, config_to_dict, load_config, with_model_labels
from .data import SynthSpec, build_dataset, datasets_taking, list_datasets, write_synthetic
from .data.checks import check_dataset, class_statistics, write_class_statistics
from .data.convert import write_cityscapes_train_ids
from .demo import FAST_ITERATIONS, run_demo
from .distributed import init_distributed, resolve_device, shutdown
from .errors import AtrousError, ConfigError, user_message
from .evaluation import evaluate, format_scores, run_evaluation
from .export import PARITY_TOLERANCE, export_model, exported_metadata, onnxruntime_logits, parity, write_int8_onnx
from .folder_lock import output_folder
from .inference import InferenceOptions
from .install import extra_command
from .model_table import model_rows
from .paths import refuse_overwrite
from .predict import expand_inputs, predict_files, refuse_output_among_inputs
from .quantize import calibration_batch, calibration_files, calibration_images, calibration_photos, int8_agreement
from .registry import MODELS, backbone_entry, list_backbones, list_models, list_presets, preset, resolved, zoo
from .run_dir import describe_run, has_checkpoint
from .runtime import (
    CALIBRATED_RUNTIMES,
    CPU_RUNTIMES,
    FLOAT_RUNTIME_OF,
    RUNTIMES,
    cached_int8_onnx,
    cached_onnx,
    prepare_inference,
)
from .sharing import push
from .weights.pretrained import load_trained_model

# Every import is made here, none inside a command: with them all, `atrous --help` takes as long as with the few it
# needs (the package face already loads torch, the models and the datasets; the rest measured about 30 ms more).
# ONNX Runtime, onnx and matplotlib stay out of it: the library imports them where it uses them.


def _zoo_table() -> int:
    for entry in zoo().values():
        published, spec = entry.published, entry.spec
        if entry.kind == "backbone_init":
            print(f"{entry.name}\n  {entry.publisher}: starting weights of {spec.backbone} (pretrained_backbone="
                  f"{entry.name}); {entry.dataset}")  # fmt: skip
        else:
            score = (f"published mIoU {published['mIoU']} on {published['benchmark']} ({published['source']})"
                     if published else "no published score (its publisher gives none)")  # fmt: skip
            print(f"{entry.name}\n  {entry.publisher}: {spec.name} {spec.backbone} OS{resolved(spec).output_stride} "
                  f"{spec.num_classes} classes ({entry.labels}); {entry.dataset}\n  {score}")  # fmt: skip
        print(f"  {entry.url or 'no direct download: ' + entry.download}")
    print("\nRun one: atrous predict --weights NAME IMAGES --out DIR   (or atrous.from_pretrained(NAME) in Python)")
    return 0


def _backbone_list() -> int:
    for name in list_backbones():
        entry = backbone_entry(name)
        strides = "/".join(str(stride) for stride in entry.output_strides)
        imagenet = "ImageNet: imagenet" if entry.imagenet_weights else "ImageNet: a file (see its error)"
        print(f"{name:24s} output stride {strides:12s} {entry.normalization.name:12s} {imagenet}")
    print(f"\nAny timm CNN too: --backbone timm:<model name> ({extra_command('timm', 'timm')}), e.g. timm:xception65, "
          "timm:convnext_tiny, timm:efficientnet_b3; find names with python -c \"import timm; "
          "print(timm.list_models('*convnext*'))\"")  # fmt: skip
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.pretrained:
        return _zoo_table()
    if args.backbones:
        return _backbone_list()
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


def _positive(kind: type):
    """An argparse type: a number of ``kind`` > 0, refused with the value when it is not."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number > 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"  # argparse names the type in some messages
    return parse


POSITIVE_INT, POSITIVE_FLOAT = _positive(int), _positive(float)


def _label_mapping(text: str) -> dict[int, int]:
    """"0:0,255:1" -> {0: 0, 255: 1}."""
    try:
        return {int(raw): int(mapped) for raw, mapped in (pair.split(":") for pair in text.split(","))}
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected RAW:CLASS pairs like 0:0,255:1, got {text!r}") from error


def _dataset_from_args(args: argparse.Namespace):
    options = {}
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    if args.label_map is not None:
        options["label_mapping"] = args.label_map
    return build_dataset(args.dataset, args.root, args.split, **options)


def _data_synth(args: argparse.Namespace) -> int:
    spec = SynthSpec(seed=args.seed, train=args.train, val=args.val, size=args.size)
    root = write_synthetic(args.out, spec)
    print(f"synthetic dataset (VOC layout): {root}  [{spec.train} train / {spec.val} val, {spec.size}px]")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    report = check_dataset(_dataset_from_args(args))
    print(report)
    return 0 if report.ok else 1


def _data_stats(args: argparse.Namespace) -> int:
    stats = class_statistics(_dataset_from_args(args))
    width = max(len(name) for name in stats["classes"])
    print(f"{'class'.ljust(width)}  {'pixels':>12}  {'freq':>8}  {'w_inv':>8}  {'w_median':>8}")
    weights = stats["weights"]
    for i, name in enumerate(stats["classes"]):
        print(
            f"{name.ljust(width)}  {stats['pixel_counts'][i]:>12}  {stats['frequency'][i]:>8.4f}  "
            f"{weights['inverse'][i]:>8.3f}  {weights['median_frequency'][i]:>8.3f}"
        )
    path = write_class_statistics(stats, args.out)
    print(f"class weights written to {path}")
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    if args.dataset != "cityscapes":
        raise ConfigError(f"convert writes Cityscapes trainId PNGs; dataset {args.dataset!r} maps labels on the fly")
    written = write_cityscapes_train_ids(args.root, args.split)
    print(f"wrote {written} *_gtFine_labelTrainIds.png files under {args.root}")
    return 0


def _takers(option: str) -> str:
    """The dataset families a ``data`` flag is for ("folder"), as ``atrous.data`` declares them."""
    return " and ".join(datasets_taking(option))


def _add_data_commands(commands) -> None:
    data = commands.add_parser("data", help="prepare and inspect datasets")
    actions = data.add_subparsers(dest="action", required=True)
    synth = actions.add_parser("synth", help="write the embedded synthetic dataset (VOC layout)")
    synth.add_argument("--out", type=Path, required=True, help="folder to write (VOCdevkit/VOC2012 inside)")
    synth.add_argument("--seed", type=int, default=0, help="the same seed writes the same images (default 0)")
    synth.add_argument("--train", type=POSITIVE_INT, default=600, help="training images (default 600)")
    synth.add_argument("--val", type=POSITIVE_INT, default=120, help="validation images (default 120)")
    synth.add_argument("--size", type=POSITIVE_INT, default=64, help="image side in pixels (default 64)")
    synth.set_defaults(run=_data_synth)
    for name, run, text in [
        ("check", _data_check, "decode every pair; report bad files (non-zero exit when any)"),
        ("stats", _data_stats, "per-class pixel frequencies and class weights"),
        ("convert", _data_convert, "write Cityscapes *_labelTrainIds.png beside the labelIds"),
    ]:
        action = actions.add_parser(name, help=text)
        action.add_argument("--dataset", required=True, help=", ".join(list_datasets()))
        action.add_argument("--root", type=Path, required=True, help="the dataset's folder, as its archives unpack")
        action.add_argument("--split", default="train", help="default train")
        action.add_argument("--num-classes", type=POSITIVE_INT, default=None, help=f"{_takers('num_classes')} datasets")
        action.add_argument("--label-map", type=_label_mapping, default=None,
                            help=f"{_takers('label_mapping')} datasets, e.g. 0:0,255:1")  # fmt: skip
        if name == "stats":
            action.add_argument("--out", type=Path, default=Path("class_weights.json"),
                                help="class weights JSON for data.class_weights (default class_weights.json)")
        action.set_defaults(run=run)


# `atrous train` flags, mapped onto config keys. Each is also accepted with underscores (hidden), as the original
# DeepLabV3 training scripts spelled them: `python train_pytorch.py --output_stride 16` keeps working.
TRAIN_FLAGS = {
    "model": ("model.name", str),
    "backbone": ("model.backbone", str),
    "output-stride": ("model.output_stride", int),
    "num-classes": ("model.num_classes", int),
    "weights": ("model.weights", str),
    "dataset": ("data.dataset", str),
    "data-root": ("data.root", str),
    "batch-size": ("data.batch_size", int),
    "crop-size": ("data.crop_size", int),
    "lr": ("optim.lr", float),
    "weight-decay": ("optim.weight_decay", float),
    "iterations": ("train.iterations", int),
    "total-itrs": ("train.iterations", int),
    "epochs": ("train.epochs", int),
    "name": ("name", str),
    "amp": ("train.amp", str),
    "device": ("train.device", str),
}


def _dest(flag: str) -> str:
    return flag.replace("-", "_")


def _add_flag(parser: argparse.ArgumentParser, flag: str, **options) -> None:
    """``--flag-name``, plus ``--flag_name`` as a hidden alias when the name has a hyphen."""
    parser.add_argument(f"--{flag}", dest=_dest(flag), **options)
    if "-" in flag:
        parser.add_argument(f"--{_dest(flag)}", dest=_dest(flag), **{**options, "help": argparse.SUPPRESS})


def _config_from_args(args: argparse.Namespace):
    config = load_config(args.config) if args.config else Config()
    if args.preset:
        config = dataclasses.replace(config, model=preset(args.preset))
    # JSON is YAML: strings stay strings ("--name 123"), numbers stay numbers.
    flags = {flag: getattr(args, _dest(flag)) for flag in TRAIN_FLAGS if getattr(args, _dest(flag)) is not None}
    set_by: dict[str, list[str]] = {}  # config key -> how the command line set it
    for flag, value in flags.items():
        set_by.setdefault(TRAIN_FLAGS[flag][0], []).append(f"--{flag} {value}")
    for override in args.overrides:
        set_by.setdefault(override.partition("=")[0].strip(), []).append(override)
    for key, settings in set_by.items():
        if len(settings) > 1:  # last-one-wins would silently drop what the user typed first
            both = "both" if len(settings) == 2 else "all"
            raise ConfigError(f"{' and '.join(settings)} {both} set {key}: give it once")
    overrides = [f"{TRAIN_FLAGS[flag][0]}={json.dumps(value)}" for flag, value in flags.items()]
    return apply_overrides(config, overrides + list(args.overrides))


def _train(args: argparse.Namespace) -> int:
    if args.resume is not None and "=" in args.resume and not Path(args.resume).exists():
        # `--resume optim.lr=0.01`: argparse gave the override to --resume's optional PATH; it is an override.
        args.overrides, args.resume = [args.resume, *args.overrides], "last"
    resume = True if args.resume == "last" else args.resume
    try:
        summary = engine.train(_config_from_args(args), resume=resume, stop_at=args.stop_at, overwrite=args.overwrite)
    finally:
        shutdown()
    best = summary["best_mIoU"]
    if summary["is_main"]:
        print(f"run: {summary['run_dir']}  iteration {summary['iteration']}/{summary['iterations']}"
              + (f"  best mIoU {best:.4f}" if best is not None else ""))
    return 0


def _add_train_command(commands) -> None:
    train = commands.add_parser("train", help="train a model (torchrun for several processes)")
    train.add_argument("--config", type=Path, help="YAML recipe (see configs/)")
    train.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. optim.lr=0.01 data.batch_size=16")
    train.add_argument("--preset", choices=list_presets(), help="start model from a named spec (flags still apply)")
    for flag, (key, kind) in TRAIN_FLAGS.items():
        _add_flag(train, flag, type=kind, default=None, help=f"= {key}")
    train.add_argument("--resume", nargs="?", const="last", default=None, help="resume the run (its last.pt) or PATH")
    train.add_argument("--overwrite", action="store_true",
                       help="delete the run already in out_dir/name first (without it, or --resume, such a run is "
                            "refused)")  # fmt: skip
    _add_flag(train, "stop-at", type=POSITIVE_INT, default=None, help="stop after this iteration (with a checkpoint)")
    train.set_defaults(run=_train)


def _inference_options(args: argparse.Namespace):
    if args.msc:  # DeepLab-v2's multi-scale inputs with max fusion (kazuto1011's MSC)
        return InferenceOptions(scales=tuple(args.scales or (1.0, 0.75, 0.5)), fusion="max", crf=args.crf)
    scales = tuple(args.scales) if args.scales else ((0.5, 0.75, 1.0, 1.25, 1.5, 1.75) if args.tta else (1.0,))
    crop = args.crop if args.slide else None
    return InferenceOptions(scales=scales, flip=args.flip or args.tta, crop=crop, stride=args.stride, crf=args.crf)


# The ModelSpec fields the inference commands can set (flag -> field); unset flags change nothing.
SPEC_FLAGS = {"model": "name", "backbone": "backbone", "num_classes": "num_classes", "output_stride": "output_stride",
              "atrous_rates": "atrous_rates", "pad_to": "pad_to", "aux": "aux"}  # fmt: skip


def _load_model(args: argparse.Namespace):
    """The model ``--weights`` holds, as its own spec says, or ``--preset`` / ``--model`` for files with none; the
    other spec flags override single fields. Flags that ask for a model computing otherwise than the one the file
    implies (torchvision's files at output stride 16, say) are refused: the outputs would be silently wrong."""
    base = preset(args.preset) if args.preset else None
    overrides = {field: getattr(args, flag) for flag, field in SPEC_FLAGS.items()}  # --model is the name override
    return load_trained_model(args.weights, spec=base, overrides=overrides, other_architecture="refuse")


def _beside_weights(weights: str, suffix: str) -> Path:
    """Where an export goes by default: beside a weights file, named after it; for a zoo or Hub name (no such file:
    ``hf-hub:org/name@rev``, ``deeplabv3_mobilenet_v2_1.0_513``), the model's name in the current folder."""
    path = Path(weights)
    if path.is_file():
        return path.with_suffix(suffix)
    return Path(weights.removeprefix("hf-hub:").split("@", 1)[0].rsplit("/", 1)[-1] + suffix)


def _training_log(weights: str) -> Path | None:
    """The metrics.jsonl of the run a checkpoint file came from (run/checkpoints/x.pt), if it is one."""
    path = Path(weights)
    return path.resolve().parent.parent / "metrics.jsonl" if path.is_file() else None


def _inference_device(preference: str, args: argparse.Namespace) -> str:
    """The device eval and predict run on: ``auto`` is the CPU for the ONNX Runtime runtimes (their CPU provider),
    on a GPU machine too; a GPU asked for by name with them is refused by ``prepare_inference``, saying why."""
    return "cpu" if preference == "auto" and args.runtime in CPU_RUNTIMES else preference


def _eval(args: argparse.Namespace) -> int:
    if args.config is None and args.dataset is None:
        raise ConfigError("atrous eval needs --config (a run's config.yaml or a recipe) or --dataset NAME (with --root)")
    flags = [f"data.dataset={args.dataset}"] * (args.dataset is not None) + [f"data.root={args.data_root}"] * (
        args.data_root is not None)  # fmt: skip
    config = apply_overrides(load_config(args.config) if args.config else Config(), [*flags, *args.overrides])
    info = init_distributed(_inference_device(args.device if args.device != "auto" else config.train.device, args))
    try:
        model = _load_model(args)
        config = with_model_labels(config, class_names=model.class_names, palette=model.palette)
        dataset = engine.build_validation_set(config, args.split)
        if dataset.num_classes != model.num_classes:
            raise ConfigError(f"the model has {model.num_classes} classes, dataset {dataset.name!r} {dataset.num_classes}")
        out_dir = args.out or config.run_dir / "eval"
        # Held before the export and the evaluation, not after them: a second evaluation into it is refused first.
        with output_folder(out_dir, "evaluation") if info.is_main else contextlib.nullcontext():
            _evaluate_into(args, config, info, model, dataset, out_dir)
    finally:
        shutdown()
    return 0


def _evaluate_into(args: argparse.Namespace, config, info, model, dataset, out_dir: Path) -> None:
    """The evaluation of ``_eval`` once its output folder is held (on rank 0)."""
    quantised = args.runtime in CALIBRATED_RUNTIMES
    calibration = calibration_batch(_dataset_calibration(config), model) if quantised else None
    inference = prepare_inference(model, args.runtime, device=info.device, calibration=calibration)
    options = _inference_options(args)
    details = {"weights": str(args.weights), "runtime": inference.runtime, "inference": dataclasses.asdict(options),
               "config": config_to_dict(config)}  # fmt: skip
    reference = FLOAT_RUNTIME_OF.get(args.runtime)  # the same runtime's fp32 graph
    if quantised:  # what quantisation costs, on the same images: the fp32 graph's score first
        fp32_graph = prepare_inference(model, reference, device=info.device)
        agreement = int8_agreement(inference, fp32_graph, calibration) if info.is_main else None  # rank 0 says it
        fp32 = evaluate(fp32_graph, dataset, device=info.device, options=options, rank=info.rank,
                        world_size=info.world_size)  # fmt: skip
        details[f"fp32 mIoU ({reference})"] = f"{fp32.scores['mIoU']:.4f}"
        if info.is_main:
            print(f"fp32 ({reference}) mIoU {fp32.scores['mIoU']:.4f}; int8 next")
    result = run_evaluation(
        inference, dataset, options=options, out_dir=out_dir, device=info.device,
        save_predictions=args.save_predictions, rank=info.rank, world_size=info.world_size, report=details,
        training_log=_training_log(args.weights),
        on_scores=lambda result: print(format_scores(result.scores, dataset.class_names)),  # before any file
    )  # fmt: skip
    if info.is_main and quantised:
        lost = 100 * (fp32.scores["mIoU"] - result.scores["mIoU"])
        print(f"mIoU fp32 ({reference}) {fp32.scores['mIoU']:.4f}, int8 {result.scores['mIoU']:.4f}: int8 loses "
              f"{lost:.2f} points; {agreement:.2%} of the calibration pixels predicted as by the fp32 "
              "graph")  # fmt: skip
    if info.is_main:
        print(f"metrics, per-class IoU chart, confusion matrix and report.html written to {out_dir}")


def _predict(args: argparse.Namespace) -> int:
    # The inputs and the output folder first: mistakes there cost nothing to find, the model can take a while to read.
    refuse_output_among_inputs(args.inputs, args.out)
    paths = expand_inputs(args.inputs)
    device = resolve_device(_inference_device(args.device, args))
    model = _load_model(args)
    calibration = calibration_batch(_input_calibration(paths), model) if args.runtime in CALIBRATED_RUNTIMES else None
    inference = prepare_inference(model, args.runtime, device=device, calibration=calibration)
    # The colours and names of the data the model was trained on, as its file says (VOC's colours when it does not).
    written = predict_files(inference, paths, args.out, palette=model.palette, class_names=model.class_names,
                            options=_inference_options(args), batch_size=args.batch_size, device=device,
                            protected={args.weights: "the --weights file"})  # fmt: skip
    pairs = "a label PNG and an overlay" if len(written) == 1 else f"{len(written)} label PNGs and overlays"
    print(f"{pairs}, and the legend of their colours, written to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    if not args.int8 and (args.config is not None or args.overrides):
        raise ConfigError("--config and config overrides are for --int8's calibration data: add --int8, or drop them")
    model = _load_model(args)
    if args.int8:
        return _export_int8(args, model)
    out = args.out or _beside_weights(args.weights, {"onnx": ".onnx", "torchscript": ".torchscript.pt",
                                                      "openvino": ".xml"}[args.format])  # fmt: skip
    export_model(model, out, format=args.format, normalized_input=args.normalized_input,
                 protected={args.weights: "the --weights file"})  # fmt: skip
    stored = {"onnx": "ONNX metadata_props", "torchscript": "TorchScript extra file metadata.json",
              "openvino": "OpenVINO rt_info"}[args.format]  # fmt: skip
    print(f"exported {args.format} to {out}, batch, height and width dynamic; what it takes and gives ({stored}):")
    for key, value in exported_metadata(out).items():  # read back: what the file says, not what was meant
        print(f"  {key}: {value if len(value) <= 400 else f'{value[:400]}... ({len(value)} characters)'}")
    ok = True
    for size, difference, largest in parity(model, out, format=args.format, normalized_input=args.normalized_input):
        print(f"  parity {size[0]}x{size[1]}: max |{args.format} - eager| = {difference:.2e} (logits up to {largest:.1f})")
        ok = ok and difference <= PARITY_TOLERANCE * max(1.0, largest)
    print(f"parity {'OK' if ok else 'FAILED'} (tolerance {PARITY_TOLERANCE:g} x the largest logit, at least 1)")
    return 0 if ok else 1


def _dataset_calibration(config):
    """int8 calibration images, (H, W, 3) uint8 RGB arrays, from the training split of the config's dataset
    (untransformed, as the validation set is read)."""
    dataset = engine.build_validation_set(config, config.data.train_split)
    images = calibration_images(dataset)
    print(f"int8: calibrating on {len(images)} images of {dataset.name} (cached once done)")  # the name has the split
    return images


def _input_calibration(paths):
    """int8 calibration images, (H, W, 3) uint8 RGB arrays, from the images to predict."""
    images = calibration_files(paths)
    print(f"int8: calibrating on {len(images)} of the input images (cached for these images)")
    return images


def _export_int8(args: argparse.Namespace, model) -> int:
    """The int8 ONNX file (QDQ), calibrated on the --config dataset's training split, and how far its predictions
    are from the fp32 graph's on those images. Like the fp32 export it takes uint8 RGB images and normalises them
    inside (--normalized-input: normalised float32 images)."""
    if args.format != "onnx":
        raise ConfigError("--int8 writes ONNX (ONNX Runtime's quantisation): drop --format torchscript")
    if args.config is None:
        raise ConfigError("--int8 calibrates on the model's data: pass --config (the run's config.yaml or a recipe)")
    images = _dataset_calibration(apply_overrides(load_config(args.config), args.overrides))
    photos, calibration = calibration_photos(images), calibration_batch(images, model)
    out = Path(args.out or _beside_weights(args.weights, ".int8.onnx"))
    refuse_overwrite([out], {args.weights: "the --weights file"}, hint="choose another --out")  # before quantising
    network = cached_int8_onnx(model, calibration)  # quantised once, on normalised images; the cache keeps it
    write_int8_onnx(network, model, out, normalized_input=args.normalized_input)
    agreement = int8_agreement(onnxruntime_logits(out), onnxruntime_logits(cached_onnx(model)), calibration,
                               int8_images=None if args.normalized_input else photos)  # fmt: skip
    print(f"exported int8 ONNX to {out}: takes {exported_metadata(out)['input']}; {agreement:.2%} of the calibration "
          "pixels predicted as by the fp32 graph")  # fmt: skip
    return 0


def _backbone_name(text: str) -> str:
    if text in list_backbones() or text.startswith("timm:"):
        return text
    raise argparse.ArgumentTypeError(f"unknown backbone {text!r}; choose from {list_backbones()} or timm:<model name>")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(value) for value in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 12,24,36, got {text!r}") from error


def _int_pair(text: str) -> tuple[int, int]:
    values = _int_list(text)
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a height and a width like 513,513, got {text!r}")
    return values


def _add_model_arguments(parser: argparse.ArgumentParser, *, runtime: bool) -> None:
    """The one set of model arguments of eval, predict and export."""
    parser.add_argument("--weights", required=True, help="a zoo name (atrous models --pretrained), a Hugging Face Hub "
                        "model (hf-hub:ORG/NAME[@REVISION]), an atrous checkpoint, or any weights file or save_pretrained "
                        "folder atrous reads (--preset/--model for ones that do not say their model)")
    parser.add_argument("--preset", choices=list_presets(), help="the architecture of a file that has no description")
    parser.add_argument("--model", choices=list_models(), help="architecture, for weights files without a description")
    parser.add_argument("--backbone", type=_backbone_name, metavar="NAME",
                        help="backbone, for weights files without a description: atrous models --backbones lists them, "
                             "or timm:<model name>")  # fmt: skip
    _add_flag(parser, "num-classes", type=POSITIVE_INT, help="classes, for weights files without a description")
    _add_flag(parser, "output-stride", type=int, choices=[4, 8, 16, 32],
              help="the file's unless given; 4: the HRNets' (fixed) stride")  # fmt: skip
    _add_flag(parser, "atrous-rates", type=_int_list, help="e.g. 12,24,36")
    _add_flag(parser, "pad-to", type=_int_pair, metavar="H,W",
              help="pad inputs to HxW and cut the logits back, as Google's TensorFlow DeepLab evaluates at its "
                   "crop_size (e.g. 513,513); the zoo's Google entries carry their own")  # fmt: skip
    parser.add_argument("--aux", action=argparse.BooleanOptionalAction, default=None, help="build the aux head")
    if runtime:  # export always traces on the CPU
        parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                            help="auto: cuda when present, else cpu (default auto)")
        parser.add_argument(
            "--runtime", choices=["auto", *RUNTIMES], default="auto",
            help="auto: ONNX Runtime on the CPU (exported once, cached), eager on GPUs; bf16: fastest, a few pixels "
            "may differ; fp16: a GPU's half precision; int8: ONNX Runtime int8, calibrated on the data (eval: prints "
            "the fp32 score too); openvino, openvino_bf16: Intel's OpenVINO on the same export, f32 or bf16 "
            f"({extra_command('openvino', 'openvino')})",
        )  # fmt: skip


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser, runtime=True)
    parser.add_argument("--tta", action="store_true", help="multi-scale (0.5-1.75) + flip")
    parser.add_argument("--scales", type=POSITIVE_FLOAT, nargs="+",
                        help="image scales whose probabilities are averaged, e.g. 0.5 1 1.5 (default: 1 only)")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--slide", action="store_true", help="sliding-window inference")
    parser.add_argument("--crop", type=POSITIVE_INT, default=513, help="window side with --slide (default 513)")
    parser.add_argument("--stride", type=POSITIVE_INT, default=341, help="window step with --slide (default 341)")
    parser.add_argument("--crf", action="store_true",
                        help=f"DenseCRF post-processing ({extra_command('crf', 'pydensecrf2')})")  # fmt: skip
    parser.add_argument("--msc", action="store_true",
                        help="DeepLab-v2's MSC: scales 1, 0.75, 0.5 (or --scales), logits max-fused (with --runtime eager)")  # fmt: skip


def _add_inference_commands(commands) -> None:
    evaluate = commands.add_parser("eval", help="mIoU and per-class scores on a dataset split, with plots")
    evaluate.add_argument("--config", type=Path,
                          help="the run's config.yaml or a recipe: says the dataset, its root and split (or --dataset)")
    evaluate.add_argument("--dataset", choices=list_datasets(),
                          help="a dataset with its defaults, without a config (a published model's, say)")
    evaluate.add_argument("--root", dest="data_root", help="the dataset's folder (data.root)")
    evaluate.add_argument("--split", help="dataset split (default: the config's data.val_split)")
    evaluate.add_argument("--out", type=Path, help="output folder (default: <out_dir>/<name>/eval)")
    _add_flag(evaluate, "save-predictions", action="store_true", help="also write coloured predictions")
    evaluate.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. data.root=/data/voc")
    _add_inference_arguments(evaluate)
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="label PNGs and overlays for images, folders or globs")
    predict.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    predict.add_argument("--out", type=Path, required=True,
                         help="output folder: a label PNG and an overlay per image (never over an input)")
    _add_flag(predict, "batch-size", type=POSITIVE_INT, default=4, help="images per forward pass (default 4)")
    _add_inference_arguments(predict)
    predict.set_defaults(run=_predict)

    export = commands.add_parser("export", help="ONNX or TorchScript with dynamic size, checked against eager")
    export.add_argument("--format", choices=["onnx", "torchscript", "openvino"], default="onnx",
                        help="default onnx; openvino: OpenVINO IR (a .xml and its .bin)")  # fmt: skip
    export.add_argument("--out", type=Path,
                        help="file to write (default: beside --weights, .onnx, .torchscript.pt or .xml; never over it)")
    _add_flag(export, "normalized-input", action="store_true",
              help="the graph takes normalised float32 images (the old behaviour) instead of uint8 RGB 0..255")  # fmt: skip
    export.add_argument("--int8", action="store_true",
                        help="ONNX Runtime int8 (QDQ, per-channel weights), calibrated on the --config dataset's "
                             "training images; takes uint8 RGB images as the fp32 export does")  # fmt: skip
    export.add_argument("--config", type=Path, help="with --int8: the run's config.yaml or a recipe (its dataset)")
    export.add_argument("overrides", nargs="*", help="with --int8: config overrides key=value, e.g. data.root=DIR")
    _add_model_arguments(export, runtime=False)
    export.set_defaults(run=_export)


def _demo(args: argparse.Namespace) -> int:
    summary = run_demo(out_dir=args.out, data_root=args.data, fast=args.fast)
    print(format_scores(summary["scores"], summary["class_names"]))
    print(
        f"\ndemo finished in {summary['seconds'] / 60:.1f} min: validation mIoU {summary['mIoU']:.4f}\n"
        f"report: {summary['report']}"
    )
    if args.fast:
        print(f"--fast is a smoke test of the pipeline ({FAST_ITERATIONS} iterations): its model is barely trained. "
              "`atrous demo` trains one that works (mIoU about 0.9).")
    return 0


def _push(args: argparse.Namespace) -> int:
    url = push(args.source, args.repo, private=args.private, token=args.token, license=args.license)
    print(f"pushed to {args.repo}: {url}\nload it with atrous.from_pretrained(\"hf-hub:{args.repo}\") or "
          f"--weights hf-hub:{args.repo}")  # fmt: skip
    return 0


def _add_push_command(commands) -> None:
    push_command = commands.add_parser("push", help="upload a run or model to the Hugging Face Hub, with a model card")
    push_command.add_argument("source", type=Path,
                              help="a run directory (its best checkpoint and scores), a checkpoint, or weights atrous reads")  # fmt: skip
    push_command.add_argument("repo", help="the Hub repository, ORG/NAME (created when missing)")
    push_command.add_argument("--private", action="store_true", help="create the repository private")
    push_command.add_argument("--token", help="a Hugging Face token with write access (default: hf auth login's, or HF_TOKEN)")
    push_command.add_argument("--license", default="other", help="the model card's license identifier, e.g. apache-2.0 "
                              "(default other)")  # fmt: skip
    push_command.set_defaults(run=_push)


def _bench(args: argparse.Namespace) -> int:
    if args.compare != "torchvision":
        raise ConfigError(f"--compare supports 'torchvision', got {args.compare!r}")
    markdown = run_bench(sections=tuple(args.only or SECTIONS), rounds=args.rounds)
    if args.markdown:
        args.markdown.write_text(markdown)
        print(f"report written to {args.markdown}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrous", description="DeepLab semantic segmentation.")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="table of every architecture x backbone: params, GFLOPs, output stride")
    models.add_argument("--size", type=POSITIVE_INT, default=513, help="square input size for the FLOP count (default 513)")
    models.add_argument("--num-classes", type=POSITIVE_INT, default=21, help="classifier width for the counts (default 21)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--pretrained", action="store_true", help="list the model zoo (published checkpoints)")
    models.add_argument("--backbones", action="store_true", help="list the backbones, and how to name timm's")
    models.set_defaults(run=_models)
    _add_data_commands(commands)
    _add_train_command(commands)
    _add_inference_commands(commands)
    _add_push_command(commands)
    bench = commands.add_parser("bench", help="speed and memory against torchvision, side by side (about 10 minutes on 2 cores)")
    bench.add_argument("--compare", default="torchvision", help="the reference implementation (torchvision)")
    bench.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections")
    bench.add_argument("--rounds", type=POSITIVE_INT, default=5, help="timed rounds per measurement, after one warm-up")
    bench.add_argument("--markdown", type=Path, help="also write the report as Markdown")
    bench.set_defaults(run=_bench)
    demo = commands.add_parser("demo", help="synthetic data -> train -> evaluate -> predict -> report.html")
    demo.add_argument("--fast", action="store_true",
                      help="a 1-minute smoke test of the whole pipeline; its model is barely trained (mIoU about 0.2)")
    demo.add_argument("--out", type=Path, default=Path("runs"),
                      help="runs folder: the demo's run is OUT/demo (OUT/demo-fast); default %(default)s")
    demo.add_argument("--data", type=Path, default=Path("data/synthetic"),
                      help="where the synthetic dataset is written and reused (--fast: DATA/fast); default %(default)s")
    demo.set_defaults(run=_demo)
    return parser


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (pytest and notebooks replace it); warnings to ``sys.stderr``, so a
    command's output (a table, JSON) stays clean to pipe."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        super().emit(record)


def _show_library_messages() -> None:
    """The library reports through ``logging`` (never ``print``); the command line shows its INFO messages."""
    logger = logging.getLogger("atrous")
    if not any(isinstance(handler, _StdoutHandler) for handler in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _refuse_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Name a mistyped flag (``--weigths``) and the closest valid one before argparse checks required arguments, which
    would otherwise say only that ``--weights`` is missing. A prefix argparse accepts (``--weig``) is not unknown.
    The flags checked are those of the innermost command named (``atrous data synth``)."""
    tokens = list(argv)
    while True:
        commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if commands is None:
            break
        command = next((token for token in tokens if not token.startswith("-")), None)
        if command not in commands:
            return  # argparse names an unknown (or missing) command itself
        parser, tokens = commands[command], tokens[tokens.index(command) + 1 :]
    known = [option for action in parser._actions for option in action.option_strings]
    for token in tokens:
        if token == "--":
            return
        flag = token.split("=", 1)[0]
        if flag.startswith("--") and not any(option.startswith(flag) for option in known):
            close = difflib.get_close_matches(flag, known, n=1)
            parser.error(f"unrecognized argument {flag}" + (f"; did you mean {close[0]}?" if close else ""))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Arguments, with ``key=value`` overrides accepted anywhere on the line (argparse alone takes them only before
    the first flag), for the commands that take overrides."""
    parser = build_parser()
    _refuse_unknown_flags(parser, sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in overrides]
    if overrides and not hasattr(args, "overrides"):
        unknown = extra
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def _what_was_kept(args: argparse.Namespace) -> str:
    """After Ctrl-C: for a training run, its last checkpoint and the command that continues it; for the others, that
    every file written is whole (files appear whole or not at all)."""
    if args.command != "train":
        return "every file written so far is whole (none is left half-written); run the command again to redo it"
    try:
        run_dir = _config_from_args(args).run_dir
    except AtrousError:
        return "run the command again to start over"
    if has_checkpoint(run_dir):
        return (f"{run_dir} keeps its last checkpoint ({describe_run(run_dir)}): the same command with --resume "
                "continues it")
    return f"{run_dir} holds no checkpoint yet: the same command starts the run again"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit, torchrun stopping its workers), raised where the process is, so
    that it ends as Ctrl-C does: its ``finally`` blocks delete the temporaries of the files it was writing."""


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _show_library_messages()
    # Python's default for SIGTERM ends the process on the spot, leaving its temporary files behind.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.run(args)
    except AtrousError as error:  # the user's to fix; anything else is a bug and keeps its traceback
        print(f"atrous {args.command}: error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: what was kept and how to go on, not a traceback
        how = "terminated" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"atrous {args.command}: {how}: {_what_was_kept(args)}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
    finally:
        if in_main_thread:  # None: a handler set outside Python, which Python cannot put back
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


__all__ = ["MODELS", "build_parser", "list_backbones", "list_models", "main"]
