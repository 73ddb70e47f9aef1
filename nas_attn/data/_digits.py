"""scikit-learn's embedded 8x8 digits, and the procedural cluttered-digits images made from them."""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ._split import stratified_split

# Measured on all 1797 digits scaled to [0, 1] (values / 16) at 8x8.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)


def _digits_csv() -> Optional[Path]:
    """scikit-learn's own copy of the digits (``sklearn/datasets/data/digits.csv.gz``: 1797 rows
    of 64 pixel values 0..16 and the label), found without importing scikit-learn; None if
    that file is not where scikit-learn 1.x keeps it."""
    spec = importlib.util.find_spec("sklearn")  # a top-level package is located, not executed
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _digits_arrays():
    """(images (1797, 8, 8) float64 with values 0..16, labels (1797,) int64): what
    ``sklearn.datasets.load_digits()`` returns as ``images`` and ``target``.

    Read from scikit-learn's CSV directly when it is there: ``import sklearn.datasets`` costs
    ~1.2 CPU-s (it loads scipy), paid by every fresh process that trains on digits (each Ray
    trial worker, each search driver, which checks the data first), against 0.02 s for the
    parse. ``load_digits`` parses the same file the same way (``np.loadtxt``, comma-separated)."""
    path = _digits_csv()
    if path is None:
        from sklearn.datasets import load_digits
        digits = load_digits()
        return digits.images, digits.target.astype(np.int64)
    with gzip.open(path, "rt") as handle:
        rows = np.loadtxt(handle, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_tensors():
    """All digits as float32 (1797, 1, 8, 8) in [0, 1], int64 labels, and class names.
    Cached: trials in one worker reuse the result."""
    images, labels = _digits_arrays()
    images = torch.from_numpy((images / 16.0).astype(np.float32)).unsqueeze(1)
    return images, torch.from_numpy(labels), tuple(str(n) for n in range(10))


# The cluttered-digits generator's settings (README "Data" documents them and the measured
# baseline accuracy; changing any of them changes the default search's numbers).
CLUTTER_IMAGES = 7000
CLUTTER_CANVAS = 32
CLUTTER_DIGIT_SIZE = (12.0, 20.0)   # side of the 8x8 digit on the canvas, pixels
CLUTTER_FRAGMENTS = 3
CLUTTER_FRAGMENT_WINDOW = (3, 5)    # side of the window cut from an 8x8 digit, source pixels
CLUTTER_FRAGMENT_GAIN = (0.4, 0.9)  # fragment intensity relative to the digit
CLUTTER_SEED = 0
CLUTTER_VAL_FRACTION = 0.3


def render_cluttered(sources: torch.Tensor, main: np.ndarray, clutter: np.ndarray, rng: np.random.Generator,
                     canvas: int = CLUTTER_CANVAS, digit_size=CLUTTER_DIGIT_SIZE,
                     window=CLUTTER_FRAGMENT_WINDOW, gain=CLUTTER_FRAGMENT_GAIN) -> torch.Tensor:
    """uint8 images (N, 1, canvas, canvas): digit ``sources[main[i]]`` placed wholly inside the
    canvas plus one fragment of ``sources[clutter[i, j]]`` per column of ``clutter``.

    ``sources`` is (S, 1, 8, 8) in [0, 1]. Each layer is mapped onto the canvas by one affine
    ``grid_sample`` (bilinear, zero outside), so the whole set renders as a batch.
    """
    n, fragments = len(main), clutter.shape[1]
    layers_n = 1 + fragments
    index = np.concatenate([main[:, None], clutter], axis=1).reshape(-1)
    layers = sources[torch.from_numpy(index)].view(n, layers_n, 8, 8).clone()
    if fragments:
        k = rng.integers(window[0], window[1] + 1, size=(n, fragments))
        y0, x0 = rng.integers(0, 9 - k), rng.integers(0, 9 - k)
        r = np.arange(8)
        rows = (r >= y0[..., None]) & (r < (y0 + k)[..., None])
        cols = (r >= x0[..., None]) & (r < (x0 + k)[..., None])
        mask = torch.from_numpy((rows[..., :, None] & cols[..., None, :]).astype(np.float32))
        scale = torch.from_numpy(rng.uniform(*gain, size=(n, fragments)).astype(np.float32))
        layers[:, 1:] *= mask * scale[..., None, None]
    size = rng.uniform(*digit_size, size=(n, layers_n))
    half = size[:, :1] / 2
    centre = rng.uniform(0, canvas, size=(n, layers_n, 2))
    centre[:, 0] = rng.uniform(half, canvas - half, size=(n, 2))  # the digit lies wholly inside
    # affine_grid maps output coordinates in [-1, 1] to input ones: input = (output - t) / s.
    s = torch.from_numpy((size / canvas).astype(np.float32)).reshape(-1)
    t = torch.from_numpy((centre / canvas * 2 - 1).astype(np.float32)).reshape(-1, 2)
    zero = torch.zeros_like(s)
    theta = torch.stack([torch.stack([1 / s, zero, -t[:, 1] / s], 1),
                         torch.stack([zero, 1 / s, -t[:, 0] / s], 1)], 1)
    out = torch.empty(n * layers_n, 1, canvas, canvas)
    flat = layers.view(-1, 1, 8, 8)
    for a in range(0, n * layers_n, 4096):
        b = min(a + 4096, n * layers_n)
        grid = F.affine_grid(theta[a:b], [b - a, 1, canvas, canvas], align_corners=False)
        out[a:b] = F.grid_sample(flat[a:b], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    images = out.view(n, layers_n, canvas, canvas).amax(1, keepdim=True).clamp(0, 1)
    return (images * 255).round().to(torch.uint8)


@functools.lru_cache(maxsize=1)
def cluttered_digits():
    """(images uint8 (N, 1, 32, 32), labels int64 (N,), train indices, val indices, class names,
    index of each image's digit among scikit-learn's 1,797).

    Deterministic (``CLUTTER_SEED``); cached per process, since trials in a worker reuse it.
    Validation images' digits and fragments come from their own part of the source digits.
    """
    sources, source_labels, names = _digits_tensors()
    rng = np.random.default_rng(CLUTTER_SEED)
    pool_train, pool_val = stratified_split(source_labels.numpy(), CLUTTER_VAL_FRACTION, CLUTTER_SEED)
    n_val = int(round(CLUTTER_IMAGES * CLUTTER_VAL_FRACTION))
    parts = []
    for pool, count in ((pool_train, CLUTTER_IMAGES - n_val), (pool_val, n_val)):
        main = rng.choice(pool, size=count)
        clutter = rng.choice(pool, size=(count, CLUTTER_FRAGMENTS))
        parts.append((render_cluttered(sources, main, clutter, rng), source_labels[torch.from_numpy(main)], main))
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    train_idx = np.arange(CLUTTER_IMAGES - n_val, dtype=np.int64)
    val_idx = np.arange(CLUTTER_IMAGES - n_val, CLUTTER_IMAGES, dtype=np.int64)
    return images, labels, train_idx, val_idx, names, np.concatenate([p[2] for p in parts])


@functools.lru_cache(maxsize=1)
def cluttered_digits_stats():
    """((mean,), (std,)) of the cluttered-digits training images scaled to [0, 1]."""
    images, _, train_idx, _, _, _ = cluttered_digits()
    x = images[torch.from_numpy(train_idx)].float() / 255.0
    return (round(float(x.mean()), 4),), (round(float(x.std()), 4),)
