"""The input transformers' MobileViT image processor makes: RGB scaled to [0, 1] (``rescale_factor`` 1/255, no mean
or standard deviation) and flipped to BGR (``do_flip_channel_order``)."""

from ...models.normalization import InputNormalization

HF_BGR_UNIT = InputNormalization(name="bgr_unit", mean=(0.0, 0.0, 0.0), std=(255.0,) * 3, channel_order="BGR")
