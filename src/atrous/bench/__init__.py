"""``atrous bench``: every performance claim of the project, measured side by side in one run.

Sections: ``pipeline`` (data pipeline, confusion-matrix update, DenseCRF on all cores), ``inference``
(DeepLabV3-R50 OS16/OS8 against torchvision, DeepLabV3+ against the ceiling, bf16, int8), ``training`` (step time
and peak memory against torchvision, bf16, activation checkpointing), ``slide`` (sliding window at Cityscapes
scale), ``gpu`` (training and fp16 inference against torchvision on a GPU, where CUDA is present). Each prints its
table as soon as it is measured;
``run_bench`` also returns the whole report as Markdown (for BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

from .. import cpu
from ..errors import ConfigError, MissingDependencyError
from ..openvino_runtime import supports_bf16

# The pipeline section first: its single-threaded, memory-bound measures read 15-20% slower in a process that
# has already run the networks (measured: 264 against 315 images/s, 0.67 against 0.56 ms).
SECTIONS = ("pipeline", "inference", "training", "slide", "gpu")
FP32_RUNTIMES = ("eager", "channels_last", "compile", "onnxruntime")

# The targets of the performance issue, printed beside what was measured.
TARGETS = {
    "inference_ratio": 1.6,  # fastest fp32 runtime / torchvision eager NCHW
    "inference_ceiling": 0.90,  # DeepLabV3-R50 share of the conv ceiling
    "peak_share": 0.85,  # fastest fp32 path's share of the practical (GEMM) peak, when 1.6x is out of reach
    "plus_ceiling": 0.85,  # DeepLabV3+-R50 OS16 share of the conv ceiling
    "bf16_ratio": 2.5,  # bf16 / torchvision fp32 eager
    "bf16_agreement": 0.995,
    "int8_ratio": 2.0,  # int8 ONNX Runtime / fp32 ONNX Runtime
    "int8_agreement": 0.99,
    "training_ratio": 1.3,
    "bf16_training_ratio": 1.5,  # train.amp=bf16 step / float32 step, on a CPU with native bf16
    "checkpointing_saving": 0.30,
    "metrics_ms": 0.6,
    "data_images_per_s": 300.0,
}


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "BELOW TARGET"


class Report:
    """Lines printed as they come and kept for the Markdown copy."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.lines: list[str] = []
        self.echo = echo

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        self.echo(line)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self("| " + " | ".join(header) + " |")
        self("|" + "---|" * len(header))
        for row in rows:
            self("| " + " | ".join(row) + " |")
        self()


def _inference(report: Report, ceiling: float, peak: float, vnni: bool, rounds: int) -> None:
    # Each section imports its modules when it runs (as below in each): ``atrous bench --only X`` loads what X times,
    # and ``atrous --help`` (which imports this face) none of the sections' networks. No cycle is behind it.
    from .agreement import bf16_agreement, fit_synthetic_model, int8_agreement
    from .inference import BASELINE, compare_deeplabv3, compare_deeplabv3plus

    header = ["path", "median s", "vs baseline", "GFLOP/s", "of ceiling", "accuracy", "one-off setup s"]
    openvino = openvino_runtimes()  # side by side when OpenVINO is installed
    for output_stride in (16, 8):
        rows = compare_deeplabv3(output_stride, ceiling=ceiling, rounds=rounds,
                                 runtimes=(*FP32_RUNTIMES, "bf16", "int8", *openvino))  # fmt: skip
        report(f"### DeepLabV3-ResNet50, output stride {output_stride}, 513x513, batch 1 (baseline: {BASELINE})")
        report()
        report.table(header, [_row(r) for r in rows])
        fp32 = [r for r in rows if r.name.removeprefix("atrous ") in (*FP32_RUNTIMES, "openvino")]
        best = max(fp32, key=lambda r: r.ratio)
        bf16 = next(r for r in rows if r.name == "atrous bf16")
        report(f"- fastest fp32 path: {best.name}, {best.ratio:.2f}x torchvision "
               f"({_verdict(best.ratio >= TARGETS['inference_ratio'])}: >= {TARGETS['inference_ratio']}x), "
               f"{best.ceiling_share:.0%} of the ceiling ({_verdict(best.ceiling_share >= TARGETS['inference_ceiling'])}: "
               f">= {TARGETS['inference_ceiling']:.0%})")  # fmt: skip
        baseline = rows[0]  # torchvision: 1.6x its speed would need this much of the practical peak
        report(f"- against the practical peak ({peak:.0f} GFLOP/s): fastest fp32 {best.gflops_per_s / peak:.0%} "
               f"({_verdict(best.gflops_per_s >= TARGETS['peak_share'] * peak)}: >= {TARGETS['peak_share']:.0%}); "
               f"torchvision {baseline.gflops_per_s / peak:.0%}, so {TARGETS['inference_ratio']}x it would take "
               f"{TARGETS['inference_ratio'] * baseline.gflops_per_s / peak:.0%} of the peak")  # fmt: skip
        report(f"- bf16: {bf16.ratio:.2f}x torchvision fp32 ({_verdict(bf16.ratio >= TARGETS['bf16_ratio'])}: "
               f">= {TARGETS['bf16_ratio']}x)")  # fmt: skip
        int8 = next(r for r in rows if r.name == "atrous int8")
        onnx = next(r for r in rows if r.name == "atrous onnxruntime")
        speedup = onnx.seconds / int8.seconds
        report(f"- int8 (ONNX Runtime QDQ): {speedup:.2f}x the fp32 ONNX Runtime path "
               f"({_verdict(speedup >= TARGETS['int8_ratio'])}: >= {TARGETS['int8_ratio']}x on a CPU with VNNI; this "
               f"one {'has' if vnni else 'has no'} avx512_vnni)")  # fmt: skip
        if openvino:
            by_name = {r.name.removeprefix("atrous "): r for r in rows}
            report("- OpenVINO: " + ", ".join(f"{name} {onnx.seconds / by_name[name].seconds:.2f}x" for name in openvino)
                   + " the fp32 ONNX Runtime path; fastest int8 path: "
                   + min(("int8", "openvino_int8"), key=lambda name: by_name[name].seconds))  # fmt: skip
        report()
    rows = compare_deeplabv3plus(ceiling=ceiling, rounds=rounds, runtimes=("channels_last", "compile", "onnxruntime"))
    report("### DeepLabV3+-ResNet50, output stride 16 (rates 6, 12, 18), 513x513, batch 1")
    report()
    report.table(header, [_row(r) for r in rows])
    best = max(rows, key=lambda r: r.ceiling_share)
    report(f"- {best.name}: {best.ceiling_share:.0%} of the ceiling ({_verdict(best.ceiling_share >= TARGETS['plus_ceiling'])}: "
           f">= {TARGETS['plus_ceiling']:.0%})")  # fmt: skip
    report()
    start = time.perf_counter()
    model, images = fit_synthetic_model()
    agreement = bf16_agreement(model, images)
    report(f"### bf16 and int8 agreement on a trained network (DeepLabV3+-R18 fitted "
           f"{time.perf_counter() - start:.0f} s to synthetic images; {images.shape[0]} held-out "
           f"{images.shape[-1]}px images)")  # fmt: skip
    report()
    report(f"- bf16: {agreement:.3%} of pixels predicted as in fp32 ({_verdict(agreement >= TARGETS['bf16_agreement'])}"
           f": >= {TARGETS['bf16_agreement']:.1%})")  # fmt: skip
    for runtime in ("int8", *(["openvino_int8"] if openvino else [])):
        int8 = int8_agreement(model, images, runtime)
        report(f"- {runtime} (calibrated on half the held-out images, counted on the other half): {int8:.3%} of "
               f"pixels predicted as by its fp32 graph ({_verdict(int8 >= TARGETS['int8_agreement'])}: "
               f">= {TARGETS['int8_agreement']:.0%})")  # fmt: skip
    report()


def openvino_runtimes() -> tuple[str, ...]:
    """The OpenVINO runtimes this machine can run (bf16 where the CPU computes it natively); none without OpenVINO."""
    try:
        bf16 = supports_bf16()
    except MissingDependencyError:
        return ()
    return ("openvino", *(["openvino_bf16"] if bf16 else []), "openvino_int8")


def _row(row) -> list[str]:
    return [row.name, f"{row.seconds:.3f}", f"{row.ratio:.2f}x", f"{row.gflops_per_s:.0f}", f"{row.ceiling_share:.0%}",
            row.accuracy, f"{row.setup_seconds:.1f}" if row.setup_seconds else ""]  # fmt: skip


def _training(report: Report, rounds: int, native_bf16: bool) -> None:
    from .training import checkpointing_comparison, compare_bf16_step, compare_training_step, peak_memory

    rows, ratios = [], []
    for size in (321, 513):
        step = compare_training_step(size, rounds=rounds)
        ratios.append(step["ratio"])
        memory = {name: peak_memory(name, size)["peak_mib"] for name in ("torchvision", "atrous")}
        rows.append([
            f"{size}x{size}", f"{step['torchvision_s']:.2f}", f"{step['atrous_s']:.2f}", f"{step['ratio']:.2f}x",
            f"{step['max_relative_loss_difference']:.1e}", f"{memory['torchvision']:.0f}", f"{memory['atrous']:.0f}",
        ])  # fmt: skip
    report("### Training step: DeepLabV3-ResNet50 OS16, batch 2, SGD, fp32 (atrous in channels_last)")
    report()
    report.table(["crop", "torchvision s", "atrous s", "speed-up", "loss curves differ by (rel.)",
                  "torchvision peak RSS MiB", "atrous peak RSS MiB"], rows)  # fmt: skip
    worst = min(ratios)
    report(f"- slowest speed-up {worst:.2f}x ({_verdict(worst >= TARGETS['training_ratio'])}: >= {TARGETS['training_ratio']}x)")
    report()
    rows, ratios = [], []
    for size in (321, 513):
        step = compare_bf16_step(size, rounds=rounds)
        ratios.append(step["ratio"])
        rows.append([f"{size}x{size}", f"{step['fp32_s']:.2f}", f"{step['bf16_s']:.2f}", f"{step['ratio']:.2f}x",
                     f"{step['max_relative_loss_difference']:.1e}"])  # fmt: skip
    report("### bf16 training step (train.amp=bf16, autocast): atrous DeepLabV3-ResNet50 OS16, batch 2, SGD")
    report()
    report.table(["crop", "fp32 s", "bf16 s", "speed-up", "loss curves differ by (rel.)"], rows)
    worst = min(ratios)
    report(f"- slowest speed-up {worst:.2f}x ({_verdict(worst >= TARGETS['bf16_training_ratio'])}: >= "
           f"{TARGETS['bf16_training_ratio']}x on a CPU with native bf16; this one "
           f"{'has' if native_bf16 else 'has no'} avx512_bf16/amx_bf16)")  # fmt: skip
    report()
    saving = checkpointing_comparison()
    report(f"### Activation checkpointing: atrous DeepLabV3-R50 OS{saving['output_stride']}, {saving['size']}x{saving['size']}, batch 2, one step")
    report()
    report(f"- peak RSS {saving['peak_mib']:.0f} MiB -> {saving['peak_mib_checkpointing']:.0f} MiB: "
           f"{saving['saving']:.0%} lower ({_verdict(saving['saving'] >= TARGETS['checkpointing_saving'])}: "
           f">= {TARGETS['checkpointing_saving']:.0%}); largest gradient difference {saving['max_gradient_difference']:.1e} "
           f"(largest gradient {saving['max_gradient']:.1e})")  # fmt: skip
    report()


def _slide(report: Report) -> None:
    from .slide import CROP, MODEL, SCHEMES, STRIDE, compare_sliding_window

    rows = compare_sliding_window()
    report(f"### Sliding window: {MODEL}, 19 classes, {CROP} windows every {STRIDE} px, ONNX Runtime, one image")
    report()
    report.table(["image", "scheme", "windows", "s", "s per window", "labels as the first scheme's",
                  "peak RSS MiB", "peak RSS before sliding MiB"], [
        [r["size"], r["scheme"], str(r["windows"]), f"{r['seconds']:.1f}", f"{r['seconds_per_window']:.2f}",
         "yes" if r["same_labels"] else "NO", f"{r['peak_mib']:.0f}", f"{r['before_mib']:.0f}"] for r in rows
    ])  # fmt: skip
    for scheme in SCHEMES:
        small, large = (r for r in rows if r["scheme"] == scheme)
        report(f"- {scheme}: {large['windows'] / small['windows']:.0f}x the windows took "
               f"{large['seconds'] / small['seconds']:.2f}x the time; sliding's own memory (peak over the loaded "
               f"model) {small['peak_mib'] - small['before_mib']:.0f} -> {large['peak_mib'] - large['before_mib']:.0f} MiB")
    report()


def gpu_section(report: Report, device: torch.device, rounds: int, **sizes) -> dict:
    """The GPU section on ``device``; ``sizes`` (depth, size, batch, latency_batches) shrink it for a test on the
    CPU. Returns what it measured: ``training``, ``memory`` (MiB per model), ``inference`` (rows per batch)."""
    from .gpu import BATCH, CROP, DEPTH, LATENCY_BATCHES, compare_inference, compare_training, peak_training_memory

    depth, size, batch = sizes.get("depth", DEPTH), sizes.get("size", CROP), sizes.get("batch", BATCH)
    shape = {"depth": depth, "size": size}
    step = compare_training(device, **shape, batch=batch, rounds=rounds)
    memory = {name: peak_training_memory(name, device, **shape, batch=batch) for name in ("torchvision", "atrous")}
    what = "peak allocated GPU MiB" if device.type == "cuda" else "peak RSS MiB"
    report(f"### {device.type.upper()} training: DeepLabV3-ResNet{depth} OS16, {size}x{size} crop, batch {batch}, "
           f"AMP {step['amp']}, channels_last, SGD, both in atrous.engine.train_step")  # fmt: skip
    report()
    report.table(["model", "s per step", "images/s", f"{what} (own process)"], [
        [name, f"{step['seconds'][name]:.3f}", f"{step['images_per_s'][name]:.1f}", f"{memory[name]:.0f}"]
        for name in ("torchvision", "atrous")
    ])  # fmt: skip
    memory_ratio = memory["atrous"] / memory["torchvision"]
    report(f"- atrous {step['ratio']:.2f}x torchvision's training speed, {memory_ratio:.2f}x its peak memory; loss "
           f"curves differ by {step['max_relative_loss_difference']:.1e} (rel.)")  # fmt: skip
    report()
    rows = compare_inference(device, **shape, batches=sizes.get("latency_batches", LATENCY_BATCHES), rounds=rounds)
    report(f"### {device.type.upper()} inference latency: DeepLabV3-ResNet{depth} OS16, {size}x{size}, "
           f"{rows[0]['runtime']} (atrous --runtime {rows[0]['runtime']}; torchvision converted by hand)")  # fmt: skip
    report()
    report.table(["batch", "torchvision ms", "atrous ms", "speed-up", "pixels predicted alike"], [
        [str(r["batch"]), f"{r['ms']['torchvision']:.1f}", f"{r['ms']['atrous']:.1f}", f"{r['ratio']:.2f}x",
         f"{r['agreement']:.2%}"] for r in rows
    ])  # fmt: skip
    return {"training": step, "memory": memory, "inference": rows}


def _gpu(report: Report, rounds: int) -> None:
    if not torch.cuda.is_available():
        report("### GPU")
        report()
        report("- no CUDA GPU on this machine: the GPU section (training and fp16 inference against torchvision, "
               "DeepLabV3-ResNet101) runs where one is present")  # fmt: skip
        report()
        return
    gpu_section(report, torch.device("cuda"), rounds)


def _pipeline(report: Report, rounds: int) -> None:
    from .pipeline import confusion_matrix_update, data_pipeline, densecrf_cores

    data = data_pipeline(rounds=rounds)
    metrics = confusion_matrix_update(rounds=max(rounds, 5))
    crf = densecrf_cores()
    report("### Around the network")
    report()
    report.table(["measure", "atrous", "reference", "ratio", "target"], [
        ["training pipeline, images/s on 1 thread (500x375 JPEG+PNG -> 513 crop)", f"{data['atrous']:.0f}",
         f"{data['torchvision.v2']:.0f} (torchvision.v2)", f"{data['atrous'] / data['torchvision.v2']:.2f}x",
         f">= {TARGETS['data_images_per_s']:.0f}: {_verdict(data['atrous'] >= TARGETS['data_images_per_s'])}"],
        ["confusion-matrix update, ms per 513x513 image, 21 classes", f"{metrics['atrous']:.3f}",
         f"{metrics['torchmetrics']:.3f} (torchmetrics)", f"{metrics['torchmetrics'] / metrics['atrous']:.1f}x",
         f"<= {TARGETS['metrics_ms']}: {_verdict(metrics['atrous'] <= TARGETS['metrics_ms'])}"],
        [f"DenseCRF, {crf['images']} images 257x257, s", f"{crf['parallel_s']:.2f} ({crf['workers']} processes)",
         f"{crf['serial_s']:.2f} (1 process)", f"{crf['speedup']:.2f}x", f"uses all {os.cpu_count()} cores"],
    ])  # fmt: skip


def run_bench(*, sections=SECTIONS, rounds: int = 5, echo: Callable[[str], None] | None = None) -> str:
    """Run the chosen sections, reporting each line as it is measured (``echo``, default: the ``atrous.bench``
    logger, which the command line prints); returns the Markdown report."""
    echo = echo or log.info
    from .machine import fma_peak_gflops, fma_width_bits, this_machine
    from .timing import conv_ceiling, gemm_peak

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown bench sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    start = time.perf_counter()
    report = Report(echo)
    ceiling, peak, machine = conv_ceiling(), gemm_peak(), this_machine()
    report(f"atrous bench on {machine}: {torch.get_num_threads()} threads, torch {torch.__version__}, median of "
           f"{rounds} alternating rounds")  # fmt: skip
    cap = cpu.onednn_cap()
    if cap:
        report(f"oneDNN capped at ONEDNN_MAX_CPU_ISA={cap}: AMX {'on' if cpu.amx_bf16() else 'off'}, native bf16 "
               f"{'on' if cpu.native_bf16() else 'off'} for oneDNN and atrous's path choices (ONNX Runtime ignores "
               f"the cap)")  # fmt: skip
    report(f"practical fp32 peak (1x1 conv = 4096x1024x1024 GEMM, channels_last, oneDNN): {peak:.0f} GFLOP/s; "
           f"convolution ceiling (3x3, 512-1024 channels, 65x65): {ceiling:.0f} GFLOP/s ({ceiling / peak:.0%} of the "
           f"peak)")  # fmt: skip
    if machine.ghz is not None:
        theoretical = fma_peak_gflops(machine)
        report(f"theoretical FMA peak at the stated {machine.ghz:.2f} GHz, 2 FMA units of {fma_width_bits(machine)} "
               f"bits per core: {theoretical:.0f} "
               f"GFLOP/s (the practical peak is {peak / theoretical:.0%} of it; it implies "
               f"{machine.ghz * peak / theoretical:.2f} GHz sustained)")  # fmt: skip
    report()
    # int8 runs on ONNX Runtime, which ignores oneDNN's cap: its verdict asks the hardware, not what oneDNN may use.
    runs = {
        "inference": (
            lambda: _inference(report, ceiling, peak, machine.has("avx512_vnni"), rounds), "about 3 minutes on 2 cores"
        ),
        "training": (lambda: _training(report, rounds, cpu.native_bf16()), "about 2.5 minutes on 2 cores"),
        "pipeline": (lambda: _pipeline(report, rounds), "about 30 seconds on 2 cores"),
        "slide": (lambda: _slide(report), "about 3 minutes on 2 cores"),
        "gpu": (lambda: _gpu(report, rounds), "a minute or two on a GPU; nothing without one"),
    }
    for name in SECTIONS:
        if name in sections:
            run, duration = runs[name]
            log.info("[bench] measuring %s (%s)...", name, duration)
            run()
    report(f"bench finished in {(time.perf_counter() - start) / 60:.1f} min")
    return "\n".join(report.lines) + "\n"
