"""KerasHub's DeepLabV3+ against KerasHub itself (Keras 3 on its torch backend): random-weight segmenters on ResNet-50
v1 (the preset's) and v2, written by Keras's own ``save_weights`` and ``save_to_preset``, read by atrous with h5py;
logits compared with KerasHub's forward; a permuted BatchNorm must fail the comparison."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported: no TensorFlow here

import h5py
import keras
import keras_hub
import numpy as np
import pytest
import torch
from test_hub import hub_cache  # noqa: F401  (a fixture)

import atrous
from atrous.errors import WeightsError
from atrous.registry import zoo

TOLERANCE = 1e-5  # of the largest logit
SIZE = (64, 96)  # KerasHub's forward takes sides that are multiples of 32 only


def segmenter(pre_activation: bool, num_classes: int = 21, seed: int = 0):
    """KerasHub's DeepLabV3+ on its ResNet-50 as the preset builds it, every BatchNorm randomised."""
    keras.utils.set_random_seed(seed)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        use_pre_activation=pre_activation, image_shape=(None, None, 3),
    )  # fmt: skip
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, low_level_feature_key="P2", spatial_pyramid_pooling_key="P5", dilation_rates=[6, 12, 18],
        upsampling_size=8, projection_filters=48, image_shape=(None, None, 3),
    )  # fmt: skip
    preprocessor = keras_hub.models.DeepLabV3ImageSegmenterPreprocessor(
        image_converter=keras_hub.layers.DeepLabV3ImageConverter(image_size=SIZE, interpolation="bilinear"))
    model = keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes,
                                                     preprocessor=preprocessor)  # fmt: skip
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, channels).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, channels).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
    return model


def images(seed=1):
    """(KerasHub's input: NHWC RGB 0..255 as its converter leaves it, atrous's: the same, NCHW)."""
    pixels = np.random.default_rng(seed).uniform(0, 255, (1, *SIZE, 3)).astype("float32")
    return pixels, torch.from_numpy(pixels).permute(0, 3, 1, 2)


def worst(keras_model, ours) -> float:
    keras_input, image = images()
    theirs = torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(keras_model(keras_input, training=False))))
    with torch.no_grad():
        mine = ours(ours.normalization(image)).logits.permute(0, 2, 3, 1)
    return float((mine - theirs).abs().max() / theirs.abs().max())


@pytest.fixture(scope="module", params=[False, True], ids=["v1", "v2"])
def saved(request, tmp_path_factory):
    """(KerasHub segmenter, its save_weights file, its preset folder)."""
    folder = tmp_path_factory.mktemp("keras")
    model = segmenter(request.param)
    model.save_weights(str(folder / "segmenter.weights.h5"))
    model.save_to_preset(str(folder / "preset"))
    return model, folder / "segmenter.weights.h5", folder / "preset"


def test_a_save_weights_file_gives_kerashubs_logits(saved):
    model, weights, _ = saved
    ours = atrous.from_pretrained(weights)
    assert ours.spec.name == "deeplabv3plus_keras_hub"
    assert ours.spec.backbone == ("resnet50_v2_keras_hub" if model.backbone.image_encoder.use_pre_activation else
                                  "resnet50_keras_hub")  # fmt: skip
    assert worst(model, ours) <= TOLERANCE


def test_a_preset_folder_gives_kerashubs_logits(saved):
    model, _, preset = saved
    assert worst(model, atrous.from_pretrained(preset)) <= TOLERANCE


def test_a_file_without_layer_names_is_mapped_by_its_paths(saved, tmp_path):
    model, weights, _ = saved
    unnamed = tmp_path / "unnamed.weights.h5"
    unnamed.write_bytes(weights.read_bytes())
    with h5py.File(unnamed, "r+") as handle:  # as a Keras that writes no name attribute leaves it
        groups = []
        handle.visititems(lambda name, item: groups.append(item) if name.endswith("vars") else None)
        for group in groups:
            del group.attrs["name"]
    assert worst(model, atrous.from_pretrained(unnamed)) <= TOLERANCE


def test_a_permuted_batchnorm_fails_the_comparison(saved):
    model, weights, _ = saved
    ours = atrous.from_pretrained(weights)
    norm = ours.backbone.stacks[2][0].bn1
    with torch.no_grad():
        for tensor in (norm.running_mean, norm.running_var, norm.weight, norm.bias):
            tensor.copy_(tensor.flip(0))
    assert worst(model, ours) > 10 * TOLERANCE


def test_the_hub_preset_runs_by_its_zoo_name_from_the_cache(saved, hub_cache):  # noqa: F811
    model, _, preset = saved
    root = hub_cache / "models--keras--deeplab_v3_plus_resnet50_pascalvoc"
    (root / "snapshots").mkdir(parents=True)
    (root / "snapshots" / "5eed").symlink_to(preset, target_is_directory=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("5eed")
    pre = model.backbone.image_encoder.use_pre_activation
    if pre:  # the zoo's spec is the preset's v1: a v2 file is refused as another architecture would be
        with pytest.raises(WeightsError):
            atrous.from_pretrained("deeplab_v3_plus_resnet50_pascalvoc", other_architecture="refuse")
        return
    ours = atrous.from_pretrained("deeplab_v3_plus_resnet50_pascalvoc")
    assert ours.class_names[0] == "background" and worst(model, ours) <= TOLERANCE
    assert zoo()["deeplab_v3_plus_resnet50_pascalvoc"].url == "hf-hub:keras/deeplab_v3_plus_resnet50_pascalvoc"


def test_a_damaged_keras_file_is_refused_naming_it(saved, tmp_path):
    _, weights, _ = saved
    damaged = tmp_path / "damaged.weights.h5"
    damaged.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match="damaged.weights.h5: cannot read it as a Keras weights file"):
        atrous.from_pretrained(damaged)


def test_the_onnx_export_gives_the_eager_logits_at_other_sizes(saved, tmp_path):
    import onnxruntime

    from atrous.export import export_model

    _, weights, _ = saved
    ours = atrous.from_pretrained(weights)
    session = onnxruntime.InferenceSession(str(export_model(ours, tmp_path / "keras.onnx", format="onnx")))
    for size in ((64, 96), (65, 81)):
        image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (1, 3, *size), dtype=np.uint8))
        with torch.no_grad():
            expected = ours(ours.normalization(image.float())).logits.numpy()
        got = session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), size
