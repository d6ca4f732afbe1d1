"""Train the bundled BasicMotions activity model and write its spec and test log.

Produces, in ``--out`` (default ``models/basic_motions/``):

* ``basic_motions.tflite``   - fully int8 1-D CNN, input [1, 32, 6], output [1, 4]
* ``basic_motions.toml``     - the model spec read by edge-infer
* ``basic_motions_test.csv`` - the recorded log: the 40 TEST series back to back
* ``README.md``              - what the model is, how it was trained, its accuracy

How to run (from the repository root)::

    python -m venv .venv-train
    .venv-train/bin/pip install tensorflow
    .venv-train/bin/python scripts/train_model.py

Without ``--data-dir`` the script runs ``pip download aeon==1.6.0 --no-deps``
into a temporary folder and reads the two ``.ts`` files straight out of the
wheel, so PyPI is the only network source. With ``--data-dir DIR`` it reads
``BasicMotions_TRAIN.ts`` and ``BasicMotions_TEST.ts`` from ``DIR``.

The run is seeded and single-threaded with deterministic ops, so it is
reproducible on the same machine and TensorFlow version.

Data set: "BasicMotions" from the UEA multivariate time series classification
archive (Bagnall et al., 2018, arXiv:1811.00075; timeseriesclassification.com),
recorded by students wearing a smart watch (3-axis accelerometer and 3-axis
gyroscope at 10 Hz); taken from the aeon package (BSD-3-Clause) wheel on PyPI.
The TEST split is used only for the recorded log and the final evaluation,
never for training or model selection.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

try:  # only training needs TensorFlow: scripts/calibrate_checks.py reuses the data loader below without it
    import tensorflow as tf  # noqa: E402
except ImportError:
    tf = None

SEED = 20240601
CHANNELS = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
SAMPLE_RATE_HZ = 10.0
WINDOW = 32
HOP = 4
AEON_VERSION = "1.6.0"
WHEEL_DATA_DIR = "aeon/datasets/data/BasicMotions"
TRAIN_FILE = "BasicMotions_TRAIN.ts"
TEST_FILE = "BasicMotions_TEST.ts"
MODEL_STEM = "basic_motions"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "basic_motions"

N_FOLDS = 5                 # cross-validation folds over TRAIN series (20% held out each)
N_CONCATS = 4               # random back-to-back orders of the series per training set
CONCAT_HOP = 3              # coprime with HOP, so every window phase is seen
INPUT_NOISE = 0.3           # std of Gaussian noise added to normalised inputs while training
BATCH_SIZE = 64
MAX_EPOCHS = 40
LEARNING_RATE = 3e-3
N_REPRESENTATIVE = 300      # TRAIN windows used to calibrate int8 ranges


@dataclass
class Split:
    """One split of the data set: ``x`` is [series, 100, 6], ``y`` the class names."""

    x: np.ndarray
    y: list[str]
    labels: list[str]


def parse_ts(text: str) -> Split:
    """Parse a multivariate ``.ts`` file (sktime/aeon format) into a :class:`Split`.

    ``labels`` is the class order declared by the ``@classLabel`` header.
    """
    labels: list[str] = []
    series, names = [], []
    in_data = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            fields = line.split()
            if fields[0].lower() == "@classlabel":
                labels = fields[2:]
            in_data = fields[0].lower() == "@data"
            continue
        if not in_data:
            continue
        *dims, label = line.split(":")
        series.append(np.array([[float(v) for v in d.split(",")] for d in dims]).T)
        names.append(label)
    return Split(x=np.stack(series), y=names, labels=labels)


def fetch_wheel(dest: str) -> Path:
    """Download the aeon wheel (no dependencies) from PyPI into ``dest``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"aeon=={AEON_VERSION}",
         "--no-deps", "--only-binary=:all:", "-d", dest],
        check=True,
    )
    wheels = glob.glob(os.path.join(dest, f"aeon-{AEON_VERSION}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip did not leave an aeon {AEON_VERSION} wheel in {dest}")
    return Path(wheels[0])


def load_data(data_dir: str | None) -> tuple[Split, Split]:
    """Return the (TRAIN, TEST) splits from ``data_dir`` or from the aeon wheel."""
    if data_dir is not None:
        texts = [Path(data_dir, name).read_text() for name in (TRAIN_FILE, TEST_FILE)]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(fetch_wheel(tmp)) as wheel:
                texts = [wheel.read(f"{WHEEL_DATA_DIR}/{name}").decode()
                         for name in (TRAIN_FILE, TEST_FILE)]
    train, test = (parse_ts(t) for t in texts)
    if train.labels != test.labels:
        raise ValueError(f"class labels differ: {train.labels} vs {test.labels}")
    return train, test


def round_sig(values: np.ndarray, digits: int = 6) -> list[float]:
    """Round each value to ``digits`` significant digits (as the spec stores them)."""
    return [float(f"{v:.{digits}g}") for v in values]


def normalisation(train: Split) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over every TRAIN frame, rounded as in the spec."""
    frames = train.x.reshape(-1, len(CHANNELS))
    offset = np.array(round_sig(frames.mean(axis=0)))
    scale = np.array(round_sig(frames.std(axis=0)))
    return offset, scale


def cut_windows(frames: np.ndarray, labels: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Slide a ``WINDOW``-frame window over ``frames`` with ``hop``, first window ending at
    frame ``WINDOW - 1``; each window is labelled by its last frame."""
    ends = np.arange(WINDOW - 1, len(frames), hop)
    x = np.stack([frames[e - WINDOW + 1:e + 1] for e in ends])
    return x, labels[ends]


def back_to_back_windows(x: np.ndarray, y: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows over series ``x`` [n, 100, 6] (class indices ``y`` [n]) laid back to back
    in the given order, labelled per frame by their series' class."""
    per_frame = np.repeat(y, x.shape[1])
    windows, labels = cut_windows(np.concatenate(x), per_frame, hop)
    return windows.astype(np.float32), labels


def training_windows(x: np.ndarray, y: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training windows from series ``x`` [n, 100, 6] with class indices ``y`` [n].

    Every window inside each series (hop 1), plus windows from ``N_CONCATS``
    random back-to-back orders of the series, so windows that straddle two
    series (labelled by their last frame, as the runtime does) are learnt too.
    """
    parts = [back_to_back_windows(s[None], c[None], 1) for s, c in zip(x, y)]
    for _ in range(N_CONCATS):
        order = rng.permutation(len(x))
        parts.append(back_to_back_windows(x[order], y[order], CONCAT_HOP))
    xs, ys = zip(*parts)
    return np.concatenate(xs), np.concatenate(ys)


def cv_folds(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign each TRAIN series to one of ``N_FOLDS`` folds, stratified by class."""
    folds = np.empty(len(y), dtype=int)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        folds[idx] = np.arange(len(idx)) % N_FOLDS
    return folds


def build_model(n_classes: int, batch_size: int | None = None) -> tf.keras.Model:
    """Small 1-D CNN on a normalised [WINDOW, channels] window.

    Three k5 convolutions with max pooling between them see the whole window
    (receptive field 29 frames). The input noise layer only acts while
    training (an identity at inference).
    """
    return tf.keras.Sequential([
        tf.keras.Input(shape=(WINDOW, len(CHANNELS)), batch_size=batch_size),
        tf.keras.layers.GaussianNoise(INPUT_NOISE),
        tf.keras.layers.Conv1D(16, 5, activation="relu"),
        tf.keras.layers.MaxPooling1D(2),
        tf.keras.layers.Conv1D(16, 5, activation="relu"),
        tf.keras.layers.MaxPooling1D(2),
        tf.keras.layers.Conv1D(16, 5, activation="relu"),
        tf.keras.layers.GlobalAveragePooling1D(),
        tf.keras.layers.Dense(n_classes, activation="softmax"),
    ])


def fit_model(x: np.ndarray, y: np.ndarray, n_classes: int, epochs: int,
              val: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[tf.keras.Model, dict]:
    """Train a fresh, freshly seeded model for ``epochs`` epochs.

    Returns the model and the Keras history (with ``val_loss`` when ``val`` is given).
    """
    tf.keras.utils.set_random_seed(SEED)
    model = build_model(n_classes)
    model.compile(optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True,
                        validation_data=val, verbose=0)
    return model, history.history


def choose_epochs(x: np.ndarray, y: np.ndarray, n_classes: int, rng: np.random.Generator) -> int:
    """Pick the epoch count by ``N_FOLDS``-fold cross-validation over TRAIN series.

    Each fold's held-out series, in file order and back to back, form a log
    like the one the runtime replays (hop 1); the epoch count with the lowest
    validation loss averaged over the folds wins.
    """
    folds = cv_folds(y, rng)
    curves = []
    for k in range(N_FOLDS):
        held = folds == k
        x_fit, y_fit = training_windows(x[~held], y[~held], rng)
        val = back_to_back_windows(x[held], y[held], 1)
        _, history = fit_model(x_fit, y_fit, n_classes, MAX_EPOCHS, val=val)
        curves.append(history["val_loss"])
        best = int(np.argmin(history["val_loss"]))
        print(f"fold {k}: {len(x_fit)} fit / {len(val[0])} validation windows, "
              f"best epoch {best + 1} (val loss {history['val_loss'][best]:.4f}, "
              f"val accuracy {history['val_accuracy'][best]:.4f})")
    mean = np.mean(curves, axis=0)
    return int(np.argmin(mean)) + 1


def convert_int8(model: tf.keras.Model, x_train: np.ndarray, rng: np.random.Generator) -> bytes:
    """Convert to a fully int8 TFLite flatbuffer with a fixed batch of 1."""
    fixed = build_model(model.output_shape[-1], batch_size=1)
    fixed.set_weights(model.get_weights())
    calib = x_train[rng.choice(len(x_train), N_REPRESENTATIVE, replace=False)]

    def representative():
        for w in calib:
            yield [w[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def write_log(path: Path, test: Split) -> None:
    """Write the TEST series back to back, in file order, as the recorded CSV log."""
    frames = np.concatenate(test.x)
    labels = np.repeat(test.y, test.x.shape[1])
    with path.open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["t", *CHANNELS, "label"])
        for i, (row, label) in enumerate(zip(frames, labels)):
            out.writerow([f"{i / SAMPLE_RATE_HZ:.1f}", *(f"{v:.6g}" for v in row), label])


def read_log(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a recorded log back as (frames [T, 6], per-frame labels [T])."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    frames = np.array([[float(r[c]) for c in CHANNELS] for r in rows])
    return frames, np.array([r["label"] for r in rows])


def log_windows(path: Path, offset: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised windows and last-frame labels of a log, as the runtime replays it."""
    frames, labels = read_log(path)
    return cut_windows((frames - offset) / scale, labels, HOP)


def accuracy_float(model: tf.keras.Model, x: np.ndarray, y: np.ndarray, labels: list[str]) -> float:
    """Accuracy of the float Keras model on normalised windows ``x`` with label names ``y``."""
    pred = np.argmax(model.predict(x.astype(np.float32), batch_size=256, verbose=0), axis=1)
    return float(np.mean(np.array(labels)[pred] == y))


def accuracy_int8(tflite: bytes, x: np.ndarray, y: np.ndarray, labels: list[str]) -> float:
    """Accuracy of the int8 TFLite model, quantizing each window like the runtime does."""
    interpreter = tf.lite.Interpreter(model_content=tflite, num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    hits = 0
    for window, truth in zip(x, y):
        q = np.clip(np.round(window / in_scale + in_zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        hits += labels[int(np.argmax(interpreter.get_tensor(out["index"])[0]))] == truth
    return hits / len(y)


def toml_list(values: list) -> str:
    """Render a list of floats or strings as a TOML array."""
    return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else repr(v) for v in values) + "]"


def write_spec(path: Path, tflite: bytes, offset: np.ndarray, scale: np.ndarray,
               labels: list[str]) -> None:
    """Write the edge-infer model spec for the converted model."""
    path.write_text(f"""\
# Model spec for edge-infer: see README.md "Model spec".
[model]
name = "basic-motions-cnn"
file = "{MODEL_STEM}.tflite"
sha256 = "{hashlib.sha256(tflite).hexdigest()}"
version = "1.0.0"
description = "1-D CNN, int8, activity from a 6-axis smartwatch IMU (UEA BasicMotions)"

[input]
channels = {toml_list(CHANNELS)}
sample_rate_hz = {SAMPLE_RATE_HZ}
window = {WINDOW}
hop = {HOP}
offset = {toml_list(offset.tolist())}
scale = {toml_list(scale.tolist())}

[output]
kind = "classes"
labels = {toml_list(labels)}            # in the model's output order

[decision]
rule = "argmax"
min_confidence = 0.0

[deadline]
budget_ms = 20.0

[fallback]
action = "idle"
""")


def write_readme(path: Path, tflite: bytes, labels: list[str], n_windows: int,
                 acc_float: float, acc_int8: float, epochs: int) -> None:
    """Write the model folder's README with provenance, size and test accuracy."""
    path.write_text(f"""\
# basic_motions: activity from a 6-axis smartwatch IMU

A small 1-D CNN (three Conv1D 16 k5 relu with max pooling 2 between them,
global average pooling, Dense {len(labels)} softmax), fully int8-quantized
TFLite, that classifies a {WINDOW}-frame window ({WINDOW / SAMPLE_RATE_HZ:g} s at
{SAMPLE_RATE_HZ:g} Hz) of accelerometer x/y/z and gyroscope x/y/z into
{", ".join(labels)} (the model's output order).

| File | What |
|---|---|
| `{MODEL_STEM}.tflite` | the model: input int8 [1, {WINDOW}, {len(CHANNELS)}], output int8 [1, {len(labels)}], {len(tflite)} bytes |
| `{MODEL_STEM}.toml` | the model spec (channels, window {WINDOW} / hop {HOP}, per-channel offset/scale, labels) |
| `{MODEL_STEM}_test.csv` | recorded log: the 40 TEST series back to back, 4000 frames at 10 Hz, with labels |

## Training

    python -m venv .venv-train
    .venv-train/bin/pip install tensorflow
    .venv-train/bin/python scripts/train_model.py

The script is seeded and deterministic. Inputs are normalised per channel with
`(x - offset) / scale` (mean and std over the TRAIN frames; the runtime applies
them before quantizing). Training windows are cut from the TRAIN split only,
labelled by their last frame: every window inside each series plus windows
from random back-to-back orders of the series, so windows that straddle two
series are learnt as the runtime sees them; Gaussian noise (std {INPUT_NOISE})
is added to the normalised inputs while training. The number of epochs
({epochs}) is chosen by {N_FOLDS}-fold cross-validation over the TRAIN series
(stratified; each fold's held-out series laid back to back like a log, lowest
mean validation loss); the model is then retrained on all of TRAIN for that
many epochs and converted with a representative data set of TRAIN windows.
The TEST split is never used for training or selection.

## Accuracy

On the recorded log, replayed as the runtime does (window {WINDOW}, hop {HOP},
first decision at frame {WINDOW - 1}, {n_windows} windows, each scored against the
label of its last frame, windows straddling two series included):

| Model | Accuracy |
|---|---|
| float (Keras) | {acc_float:.4f} |
| int8 (TFLite) | {acc_int8:.4f} |

## Data set

"BasicMotions" from the UEA multivariate time series classification archive
(Bagnall et al., 2018, arXiv:1811.00075; timeseriesclassification.com),
recorded by students wearing a smart watch; taken from the aeon package
(BSD-3-Clause) wheel on PyPI (aeon {AEON_VERSION}).
""")


def parse_args() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir",
                        help=f"folder with {TRAIN_FILE} and {TEST_FILE} (default: read "
                             f"them from the aeon {AEON_VERSION} wheel on PyPI)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="output folder (default: models/basic_motions in the repository)")
    return parser.parse_args()


def main() -> None:
    """Train, convert, write the outputs and evaluate on the TEST log."""
    args = parse_args()
    if tf is None:
        sys.exit("train_model.py needs TensorFlow: pip install 'edge-infer[train]'")
    started = time.monotonic()
    tf.keras.utils.set_random_seed(SEED)  # python, numpy and tensorflow seeds
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    rng = np.random.default_rng(SEED)

    train, test = load_data(args.data_dir)
    labels = train.labels
    offset, scale = normalisation(train)
    x_all = (train.x - offset) / scale
    y_all = np.array([labels.index(name) for name in train.y])

    epochs = choose_epochs(x_all, y_all, len(labels), rng)
    print(f"epoch count chosen by cross-validation: {epochs}")

    x_train, y_train = training_windows(x_all, y_all, rng)
    print(f"final: {len(x_train)} windows from all TRAIN series, {epochs} epochs")
    model, _ = fit_model(x_train, y_train, len(labels), epochs)
    tflite = convert_int8(model, x_train, rng)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{MODEL_STEM}.tflite").write_bytes(tflite)
    write_spec(out / f"{MODEL_STEM}.toml", tflite, offset, scale, labels)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # edge_infer from this checkout
    from edge_infer.checks.calibrate import calibrate_spec  # input checks and OOD score, from TRAIN only
    calibrate_spec(out / f"{MODEL_STEM}.toml", list(train.x), train.y, source="the BasicMotions TRAIN split")
    log_path = out / f"{MODEL_STEM}_test.csv"
    write_log(log_path, test)

    x_test, y_test = log_windows(log_path, offset, scale)
    acc_float = accuracy_float(model, x_test, y_test, labels)
    acc_int8 = accuracy_int8(tflite, x_test, y_test, labels)
    write_readme(out / "README.md", tflite, labels, len(x_test), acc_float, acc_int8, epochs)

    print(f"labels (output order): {labels}")
    print(f"test log windows: {len(x_test)}")
    print(f"float accuracy: {acc_float:.4f}")
    print(f"int8 accuracy:  {acc_int8:.4f}")
    print(f"tflite: {len(tflite)} bytes, sha256 {hashlib.sha256(tflite).hexdigest()}")
    print(f"elapsed: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
