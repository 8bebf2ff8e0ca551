"""Write the TensorFlow checkpoints the tests read (tests/fixtures/tf/), with TensorFlow itself, and what TensorFlow's
own reader says they hold (``<name>.expected.npz``), so that the tests compare atrous's reader with TensorFlow's
without importing TensorFlow.

Needs TensorFlow, in a venv of its own (never the project's):
    python -m venv /work/tfenv && /work/tfenv/bin/pip install tensorflow-cpu numpy
    /work/tfenv/bin/python tools/make_tf_checkpoint_fixtures.py          # 2.21.0 wrote the committed files

Writes: ``tf1_dtypes`` (a TF1 Saver checkpoint of one variable per dtype the zoo and deeplab2 use, scalars and a
string), ``tf1_sharded`` (two shards: variables on two CPU devices, Saver(sharded=True)) and ``tf2_object_graph``
(tf.train.Checkpoint: object-graph names ending in /.ATTRIBUTES/VARIABLE_VALUE and the graph itself).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tf"
tf1 = tf.compat.v1


def _values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "xception_65/entry_flow/conv1_1/weights": rng.standard_normal((3, 3, 3, 4)).astype(np.float32),
        "xception_65/entry_flow/conv1_1/BatchNorm/moving_variance": rng.random(4).astype(np.float32) + 0.5,
        "depthwise/depthwise_weights": rng.standard_normal((3, 3, 4, 1)).astype(np.float32),
        "as_float64": rng.standard_normal((2, 3)),
        "as_float16": rng.standard_normal(5).astype(np.float16),
        "as_int32": rng.integers(-100, 100, (4,)).astype(np.int32),
        "as_int8": rng.integers(-100, 100, (3,)).astype(np.int8),
        "as_uint8": rng.integers(0, 255, (3,)).astype(np.uint8),
        "as_bool": np.array([True, False, True]),
        "global_step": np.int64(30000),
        "learning_rate_scalar": np.float32(0.007),
    }


def _expected(prefix: Path) -> dict[str, np.ndarray]:
    """What TensorFlow's own reader returns for every variable of the checkpoint at ``prefix``."""
    reader = tf.train.load_checkpoint(str(prefix))
    values = {}
    for name, dtype in reader.get_variable_to_dtype_map().items():
        value = reader.get_tensor(name)
        if dtype == tf.bfloat16:
            value = np.asarray(value, dtype=np.float32)
        elif dtype == tf.string:
            value = np.asarray(value, dtype=object).astype(bytes)
        values[name] = np.asarray(value)
    return values


def _save_expected(prefix: Path) -> None:
    (prefix.parent / "checkpoint").unlink(missing_ok=True)  # TF1's pointer file: absolute paths of this machine
    expected = _expected(prefix)
    names = sorted(expected)
    np.savez(prefix.with_name(prefix.name + ".expected.npz"), names=np.array(names),
             **{f"v{i}": expected[name] for i, name in enumerate(names)})  # fmt: skip


def tf1_dtypes() -> Path:
    prefix = OUT / "tf1_dtypes" / "model.ckpt"
    prefix.parent.mkdir(parents=True)
    graph = tf.Graph()
    with graph.as_default():
        for name, value in _values(0).items():
            tf1.get_variable(name, initializer=value)
        tf1.get_variable("as_bfloat16", initializer=tf.constant([1.5, -2.25, 3.0], dtype=tf.bfloat16))
        tf1.get_variable("as_string", initializer=tf.constant(b"deeplab"), dtype=tf.string)
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False)
    return prefix


def tf1_sharded() -> Path:
    prefix = OUT / "tf1_sharded" / "model.ckpt"
    prefix.parent.mkdir(parents=True)
    graph = tf.Graph()
    values = _values(1)
    with graph.as_default():
        for index, (name, value) in enumerate(values.items()):
            with tf1.device(f"/cpu:{index % 2}"):
                tf1.get_variable(name, initializer=value)
        saver = tf1.train.Saver(sharded=True)
        config = tf1.ConfigProto(device_count={"CPU": 2})
        with tf1.Session(graph=graph, config=config) as session:
            session.run(tf1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False)
    return prefix


def tf2_object_graph() -> Path:
    prefix = OUT / "tf2_object_graph" / "ckpt"
    tf.random.set_seed(2)
    model = tf.keras.Sequential([tf.keras.Input((6, 6, 3)), tf.keras.layers.Conv2D(4, 3, name="conv"),
                                 tf.keras.layers.BatchNormalization(name="bn")])  # fmt: skip
    written = tf.train.Checkpoint(model=model).write(str(prefix))
    return Path(written)


def main() -> int:
    tf1.disable_eager_execution()
    shutil.rmtree(OUT, ignore_errors=True)
    for make in (tf1_dtypes, tf1_sharded):
        prefix = make()
        _save_expected(prefix)
        print(prefix, sorted(p.name for p in prefix.parent.iterdir()))
    tf1.enable_eager_execution()
    return 0


if __name__ == "__main__":
    if "--tf2" in sys.argv:  # eager mode must be chosen before any graph is built: a second process
        prefix = tf2_object_graph()
        _save_expected(prefix)
        print(prefix, sorted(p.name for p in prefix.parent.iterdir()))
        sys.exit(0)
    sys.exit(main())
