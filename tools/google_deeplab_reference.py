"""Google's own DeepLab forward (tensorflow/models research/deeplab), run on TensorFlow 2 through tf.compat.v1 and
tf_slim, to produce reference logits for the port of Google's zoo (issue 30): a checkpoint of one architecture with
random weights and randomised BatchNorm statistics, saved by TensorFlow, and the logits Google's code computes from
it on a few images. The comparison with atrous runs on those files; CI never imports TensorFlow.

The reference environment (never the project's):
    python -m venv /work/tfenv && /work/tfenv/bin/pip install tensorflow-cpu tf_slim 'tf_keras~=2.21.0' numpy
    Google's code, unchanged, under /work/refs/models at upstream commit a45ce37c49baa3d7fe317647a9d206985739c565
    (tensorflow/models master, 2024-04-24; too large to fetch whole here, so taken from a mirror that carries its
    history, e.g. fetch github:mach-12/models, then `git archive a45ce37c research/deeplab research/slim`). Used:
    research/deeplab/{common,model,input_preprocess,export_model}.py and core/*.py (feature_extractor, utils,
    xception, resnet_v1_beta, dense_prediction_cell + its cityscapes JSON, nas_network, nas_cell, nas_genotypes,
    conv2d_ws, preprocess_utils), research/slim/nets/mobilenet/{mobilenet,mobilenet_v2,mobilenet_v3,conv_blocks}.py,
    with their (empty) __init__.py files.
Run (tools/compare_google_deeplab.py then compares atrous with what it writes):
    /work/tfenv/bin/python tools/google_deeplab_reference.py --variant xception_65 --out /work/refs/out/xception_65

The shim (Google's code unchanged; only what TensorFlow 2 no longer has is mapped):
    np.int                     -> int (NumPy 1.24 removed the alias; slim's mobilenet_v3.py uses it at import)
    TF_USE_LEGACY_KERAS=1      tf.keras is Keras 2 (tf_keras), which keeps tf.layers.Layer (and slim's batch_norm)
    tf_keras.legacy_tf_layers  -> tf_keras.src.legacy_tf_layers (where tf_keras 2.21 keeps what TF 2.21 asks for)
    Conv._convolution_op       -> Conv.convolution_op (conv2d_ws.py, ResNet-beta's convs, calls the old private name)
    tensorflow                 -> tensorflow.compat.v1 (graph mode: tf.variable_scope, tf.app.flags,
                                  tf.image.resize_bilinear, tf.layers ...)
    tensorflow.contrib.slim(.nets) -> tf_slim(.nets) (resnet_utils for Xception and ResNet-beta)
    tensorflow.contrib.layers  -> tf_slim.layers, then tf_slim, its initializers and regularizers
                                  (l2_regularizer, xavier_initializer, variance_scaling_initializer)
    tensorflow.contrib.layers.python.layers -> tf_slim.layers (its layers and utils modules)
    tensorflow.contrib.framework -> tf_slim (arg_scope, add_arg_scope)
    tensorflow.contrib.quantize, tensorflow.contrib.training: not on the forward path (quantised export, NAS's
                                  HParams); stand-ins that fail naming the attribute if anything asks
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np

REFS = Path("/work/refs/models/research")


def install_shim():
    """Map the TensorFlow 1 modules Google's code imports onto TensorFlow 2's compatibility layer and tf_slim."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.layers (conv2d_ws.py subclasses tf.layers.Layer) needs Keras 2
    np.int = int  # removed in NumPy 1.24; slim's mobilenet_v3.py calls np.int(...) when imported
    import tensorflow as tf2
    import tf_slim

    tf1 = tf2.compat.v1
    tf1.disable_eager_execution()
    # TensorFlow 2.21's lazy loader asks for tf_keras.legacy_tf_layers; tf_keras 2.21 keeps it under src/.
    sys.modules.setdefault("tf_keras.legacy_tf_layers", importlib.import_module("tf_keras.src.legacy_tf_layers"))
    # conv2d_ws.py (the ResNet-beta convolutions) calls the Keras 2.2-era private _convolution_op; Keras 2.21 names
    # the same operation convolution_op (a method taking inputs and kernel).
    base_conv = importlib.import_module("tf_keras.src.layers.convolutional.base_conv")
    base_conv.Conv._convolution_op = property(lambda layer: layer.convolution_op)

    def module(name: str, *sources) -> types.ModuleType:
        """A module whose attributes are looked up in ``sources``, in order."""
        made = types.ModuleType(name)

        def lookup(attribute: str):
            for source in sources:
                if hasattr(source, attribute):
                    return getattr(source, attribute)
            raise AttributeError(f"{name}.{attribute}: not in the shim (Google's forward should not need it)")

        made.__getattr__ = lookup
        return made

    # tf_slim.layers is its layers.layers module (the package's name is shadowed): the package's parts by name.
    slim_layers = {part: importlib.import_module(f"tf_slim.layers.{part}")
                   for part in ("layers", "utils", "initializers", "regularizers")}  # fmt: skip
    layers = module("tensorflow.contrib.layers", slim_layers["layers"], tf_slim, slim_layers["initializers"],
                    slim_layers["regularizers"])  # fmt: skip
    mapped = {
        "tensorflow": tf1,
        "tensorflow.contrib": module("tensorflow.contrib"),
        "tensorflow.contrib.slim": tf_slim,
        "tensorflow.contrib.slim.nets": importlib.import_module("tf_slim.nets"),
        "tensorflow.contrib.layers": layers,
        "tensorflow.contrib.layers.python": module("tensorflow.contrib.layers.python"),
        "tensorflow.contrib.layers.python.layers": module("tensorflow.contrib.layers.python.layers", types.SimpleNamespace(**slim_layers)),
        "tensorflow.contrib.framework": tf_slim,
        "tensorflow.contrib.training": module("tensorflow.contrib.training"),  # HParams: the NAS variants only
        "tensorflow.contrib.quantize": module("tensorflow.contrib.quantize"),  # export's quantised graphs only
    }
    for name, value in mapped.items():
        sys.modules[name] = value
    contrib = mapped["tensorflow.contrib"]
    for name in ("slim", "layers", "framework", "training", "quantize"):
        setattr(contrib, name, mapped[f"tensorflow.contrib.{name}"])
    tf1.contrib = contrib  # export_model.py reads tf.contrib.slim
    sys.path[:0] = [str(REFS), str(REFS / "slim")]
    return tf1


# The zoo's settings per model variant (docs/google-deeplab-facts.md, model_zoo.md): the flags Google's eval used.
DPC_JSON = REFS / "deeplab" / "core" / "dense_prediction_cell_branch5_top1_cityscapes.json"
VARIANTS = {
    "xception_41": ["--model_variant=xception_41", "--decoder_output_stride=4"],
    "xception_65": ["--model_variant=xception_65", "--decoder_output_stride=4"],
    "xception_65_v3": ["--model_variant=xception_65"],  # no decoder: the ASPP's logits
    "xception_71_dpc": ["--model_variant=xception_71", "--decoder_output_stride=4",
                        f"--dense_prediction_cell_json={DPC_JSON}"],
    "mobilenet_v2": ["--model_variant=mobilenet_v2"],
    "mobilenet_v2_dm05": ["--model_variant=mobilenet_v2", "--depth_multiplier=0.5"],
    "mobilenet_v2_decoder": ["--model_variant=mobilenet_v2", "--decoder_output_stride=4"],  # the ADE20K model
    "resnet_v1_50_beta": ["--model_variant=resnet_v1_50_beta", "--decoder_output_stride=4"],
    "resnet_v1_101_beta": ["--model_variant=resnet_v1_101_beta", "--decoder_output_stride=4", "--multi_grid=1",
                           "--multi_grid=2", "--multi_grid=4"],
    **{f"mobilenet_v3_{size}_seg": [  # model_zoo.md's flags of its MobileNetV3 Cityscapes models
        f"--model_variant=mobilenet_v3_{size}_seg", "--image_pooling_crop_size=769,769",
        "--image_pooling_stride=4,5", "--add_image_level_feature=1",
        "--aspp_convs_filters=128", "--aspp_with_concat_projection=0", "--aspp_with_squeeze_and_excitation=1",
        "--decoder_use_sum_merge=1", "--decoder_filters=19", "--decoder_output_is_logits=1",
        "--image_se_uses_qsigmoid=1", "--decoder_output_stride=8"] for size in ("large", "small")},
    "mobilenet_edgetpu": ["--model_variant=mobilenet_edgetpu", "--aspp_convs_filters=256"],
    "mobilenet_edgetpu_slim": ["--model_variant=mobilenet_edgetpu", "--depth_multiplier=0.75",
                               "--aspp_convs_filters=128"],
}  # fmt: skip
NO_ASPP_RATES = ("mobilenet_v2", "mobilenet_v2_dm05", "mobilenet_v2_decoder", "xception_71_dpc",
                 "mobilenet_v3_large_seg", "mobilenet_v3_small_seg", "mobilenet_edgetpu", "mobilenet_edgetpu_slim")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--size", type=int, nargs=2, default=[65, 81], help="image height and width (odd, even...)")
    parser.add_argument("--crop", type=int, nargs=2, help="Google's crop_size, at least the image (default: the image's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tf = install_shim()
    from deeplab import common, model

    tf.app.flags.FLAGS([sys.argv[0], *VARIANTS[args.variant]])
    rates = None if args.variant in NO_ASPP_RATES else [6, 12, 18] if args.output_stride == 16 else [12, 24, 36]
    height, width = args.size
    crop_height, crop_width = args.crop or args.size
    options = common.ModelOptions(
        outputs_to_num_classes={common.OUTPUT_TYPE: args.classes}, crop_size=[crop_height, crop_width],
        atrous_rates=rates, output_stride=args.output_stride,
    )  # fmt: skip
    rng = np.random.default_rng(args.seed)
    images = rng.uniform(0, 255, (2, height, width, 3)).astype(np.float32)
    # As input_preprocess.py: padded at the bottom and right to the crop with the mean pixel (127.5 here).
    padded = np.full((2, crop_height, crop_width, 3), 127.5, np.float32)
    padded[:, :height, :width] = images
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf.placeholder(tf.float32, [None, crop_height, crop_width, 3])
        outputs = model.multi_scale_logits(inputs, model_options=options, image_pyramid=[1.0], is_training=False,
                                           fine_tune_batch_norm=False)  # fmt: skip
        logits = outputs[common.OUTPUT_TYPE][model.MERGED_LOGITS_SCOPE]
        # predict_labels' resize to the crop, then export_model.py's cut back to the image.
        upsampled = tf.image.resize_bilinear(logits, [crop_height, crop_width], align_corners=True)[:, :height, :width]
        variables = tf.global_variables()
        with tf.Session(graph=graph) as session:
            session.run(tf.global_variables_initializer())
            values = {}
            for variable in variables:  # BatchNorm statistics and betas randomised: a wrong BN order must show
                name, shape = variable.op.name, variable.shape.as_list()
                if name.endswith("moving_variance"):
                    values[variable] = rng.uniform(0.5, 2.0, shape)
                elif name.endswith(("moving_mean", "beta", "gamma", "biases")):
                    values[variable] = rng.normal(0, 0.5, shape) + (1.0 if name.endswith("gamma") else 0.0)
            # One run of all assignments, fed: a run per variable would prepare a new executor for each.
            feeds = {variable: tf.placeholder(tf.float32, variable.shape) for variable in values}
            session.run([variable.assign(feed) for variable, feed in feeds.items()],
                        {feeds[variable]: value.astype(np.float32) for variable, value in values.items()})
            small, large = session.run([logits, upsampled], {inputs: padded})
            args.out.mkdir(parents=True, exist_ok=True)
            tf.train.Saver(variables).save(session, str(args.out / "model.ckpt"), write_meta_graph=False)
    np.savez(args.out / "reference.npz", images=images, logits=small, upsampled=large,
             crop=np.array([crop_height, crop_width]), output_stride=np.array(args.output_stride))  # fmt: skip
    print(f"{args.variant}: {len(variables)} variables, logits {small.shape} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
