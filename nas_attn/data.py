"""Datasets for the search: one entry point, :func:`load`, returning a :class:`DataBundle`.

Datasets (``DATASETS``):

``digits``
    scikit-learn's embedded handwritten digits (``sklearn.datasets.load_digits``): 1797
    grayscale 8x8 images with values 0..16, 10 classes, no download. Pixels are scaled
    to [0, 1], upsampled to ``image_size`` with bilinear interpolation
    (``align_corners=False``; antialiased only when shrinking), then normalised with the
    dataset's own mean/std. ``in_chans=1``. No official test split (``test`` is None).
``cluttered_digits``
    Generated from scikit-learn's digits, no download (:func:`cluttered_digits`): each image
    is a 32x32 canvas with one digit, drawn 12-20 pixels tall at a random position (wholly
    inside), and three clutter fragments: a random 3x3 to 5x5 window of another digit's 8x8
    image, drawn at the same scale range, at 0.4-0.9 of full intensity, anywhere on the
    canvas (clipped at the border). Layers combine by pixel-wise maximum. The label is the
    whole digit's. 7,000 images from a fixed seed (0); the main digits of the validation
    images come from a separate, stratified ``val_fraction`` of the 1,797 source digits, so
    validation measures unseen handwriting, not unseen placements of seen digits. The
    images, the split and the normalisation (mean/std of the training images) do not depend
    on ``seed``: every trial and every confirmation seed sees the same data. No
    augmentation (the placement is already random). ``in_chans=1``.
``cifar10`` / ``cifar100``
    Read from a local folder in the CIFAR *python* format (the ``cifar-10-python.tar.gz``
    / ``cifar-100-python.tar.gz`` releases from https://www.cs.toronto.edu/~kriz/cifar.html,
    extracted). ``root`` may be the extracted folder itself (``cifar-10-batches-py`` /
    ``cifar-100-python``) or its parent. The official test batch becomes ``test``.
    Images are 32x32; other ``image_size`` values resize with bilinear interpolation
    after augmentation.
``imagefolder``
    ``root/train/<class>/*.png|jpg...`` and ``root/val/<class>/...`` (read with
    torchvision's ImageFolder scanning and PIL, converted to RGB). The validation split
    is drawn from ``train/`` like for every other dataset; ``val/`` becomes ``test``
    (it is the held-out set in the ImageNet layout, so the search never selects on it).

Splits: the validation split is a stratified random fraction of the *training* data,
fixed by ``seed`` (:func:`stratified_split`); it is never trained on. ``test`` is only
for reporting final models.

Augmentation (training split only, and only with ``augment=True``):
CIFAR: random crop with zero padding of 4 pixels + horizontal flip (at 32x32, before any
resize); ImageFolder: RandomResizedCrop(image_size) + horizontal flip, evaluation
Resize(image_size / 0.875) + CenterCrop(image_size) (timm's default crop_pct);
digits: small random affine (rotation up to +-10 degrees, scale 0.9..1.1, shift up to
10% of the side) and no flips, since digits are not mirror-symmetric.

digits and CIFAR live in memory as one tensor (:class:`TensorImageDataset`) and are
batched and augmented with tensor ops on whole batches (``iter_batches``), which avoids a
per-sample Python pipeline; ImageFolder decodes files per sample
(:class:`FileImageDataset`) and is batched by a torch DataLoader.

CIFAR batches are pickles, and unpickling runs whatever the file names. They are read
with a restricted unpickler that admits only numpy's array/dtype/scalar reconstruction
and latin-1 ``_codecs.encode`` (what the real release and numpy-pickled fixtures use), so
a planted file in a data folder cannot run code: it is refused with
:class:`UnsafePickleError`. (torchvision's CIFAR classes are not used because they compare
every file's md5 with the original release and so refuse any other file, test fixtures
included.)
"""

from __future__ import annotations

import functools
import importlib
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "DATASET_FORMAT",
    "dataset_format",
    "DataBundle",
    "DataError",
    "UnsafePickleError",
    "TensorImageDataset",
    "FileImageDataset",
    "load",
    "stratified_split",
    "read_cifar_pickle",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DIGITS_MEAN",
    "normalization",
    "DIGITS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

DATASETS = ("digits", "cluttered_digits", "cifar10", "cifar100", "imagefolder")

# Per-channel mean/std of the training images scaled to [0, 1]. CIFAR std is the
# per-pixel std over the training set (the often-quoted 0.2023/0.1994/0.2010 comes
# from averaging per-image stds and understates it).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Measured on all 1797 digits scaled to [0, 1] (values / 16) at 8x8.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization(dataset: str):
    """(mean, std) per channel that ``load(dataset)`` normalises inputs with."""
    if dataset == "cluttered_digits":
        return cluttered_digits_stats()
    table = {"digits": (DIGITS_MEAN, DIGITS_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
             "cifar100": (CIFAR100_MEAN, CIFAR100_STD), "imagefolder": (IMAGENET_MEAN, IMAGENET_STD)}
    if dataset not in table:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(table)}")
    return table[dataset]

#: Channels and classes of each dataset as the model sees it (imagefolder: RGB, classes = the
#: sub-folders of root/train, known only once the folder is there).
DATASET_FORMAT = {"digits": (1, 10), "cluttered_digits": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100),
                  "imagefolder": (3, None)}


def dataset_format(dataset: str, root=None):
    """(in_chans, num_classes) of ``dataset`` without loading it; num_classes is None for an
    imagefolder whose ``root/train`` is not there (yet)."""
    in_chans, num_classes = DATASET_FORMAT[dataset]
    if dataset == "imagefolder" and root is not None:
        train = Path(root).expanduser() / "train"
        try:
            num_classes = sum(1 for entry in train.iterdir() if entry.is_dir()) or None
        except OSError:
            num_classes = None
    return in_chans, num_classes


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR_PAD = 4  # pixels of zero padding for the random crop, at 32x32
_DIGITS_MAX_ROTATE_DEG = 10.0
_DIGITS_SCALE = (0.9, 1.1)
_DIGITS_MAX_SHIFT = 0.1  # fraction of the image side
_IMAGEFOLDER_CROP_PCT = 0.875


class DataError(ValueError):
    """A data folder or file is missing or malformed; the message names the expected path."""


class UnsafePickleError(DataError):
    """A CIFAR pickle names a Python object outside the CIFAR format's needs."""


# ---------------------------------------------------------------------------------------
# Restricted unpickling of CIFAR batches


def _numpy_function(module_suffix: str, name: str):
    # numpy >= 2 keeps these in numpy._core; numpy 1.x in numpy.core. Resolve the real
    # object once, without importing numpy.core on numpy 2 (that import warns).
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module_suffix}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module_suffix}.{name}")  # pragma: no cover


_LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 pickles (protocol <= 2) store bytes as
    ``_codecs.encode(str, 'latin1')``; no other codec is needed, so no other is allowed."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1_NAMES:
        raise UnsafePickleError(
            f"refused _codecs.encode with encoding {encoding!r}: CIFAR pickles only use latin1"
        )
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode_latin1,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _numpy_function("multiarray", "_reconstruct")
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "scalar")] = _numpy_function("multiarray", "scalar")
    _ALLOWED_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _numpy_function("numeric", "_frombuffer")
del _module


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler admitting only numpy arrays, dtypes, scalars and latin-1 byte strings."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refused to unpickle {module}.{name}: a CIFAR batch holds only "
                "numpy arrays, lists and strings, so this file is not a CIFAR batch (or was "
                "tampered with); nothing in it was run"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._path}: refused a persistent id in the pickle")


def read_cifar_pickle(path) -> dict:
    """Read one CIFAR python-format pickle safely; return its dict with ``str`` keys.

    Raises :class:`UnsafePickleError` if the file names anything beyond numpy's array
    reconstruction, and :class:`DataError` if it is unreadable or not a dict.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"expected the file {path}, which does not exist") from None
    except Exception as e:  # a corrupt pickle raises anything from EOFError to TypeError
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: malformed CIFAR file: expected a pickled dict, got {type(obj).__name__}")
    # Python 2 pickles (the real release) decode keys to str under latin1; pickles made
    # with bytes keys keep them as bytes.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


# ---------------------------------------------------------------------------------------
# CIFAR layout


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    archive: str
    train_files: tuple
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple
    std: tuple

    @property
    def files(self) -> tuple:
        return self.train_files + (self.test_file, self.meta_file)

    def what_belongs(self, folder: Path) -> str:
        return (
            f"the {self.title} python version ({self.archive}) from {CIFAR_URL}, extracted, "
            f"so that {folder} holds {', '.join(self.files)}"
        )


_CIFAR = {
    "cifar10": _CifarLayout(
        "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
        "labels", "label_names", 10, CIFAR10_MEAN, CIFAR10_STD,
    ),
    "cifar100": _CifarLayout(
        "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
        ("train",), "test", "meta",
        "fine_labels", "fine_label_names", 100, CIFAR100_MEAN, CIFAR100_STD,
    ),
}


def _cifar_folder(root: Path, layout: _CifarLayout) -> Path:
    """The folder holding the batch files: ``root`` itself or ``root/<release folder>``."""
    if not root.is_dir():
        raise DataError(
            f"{layout.title}: the data folder {root} does not exist; expected "
            f"{root / layout.folder / layout.train_files[0]}: {layout.what_belongs(root / layout.folder)}"
        )
    if (root / layout.train_files[0]).exists() or root.name == layout.folder:
        folder = root
    elif (root / layout.folder).is_dir():
        folder = root / layout.folder
    else:
        raise DataError(
            f"{layout.title}: expected {root / layout.folder / layout.train_files[0]} "
            f"(or {root / layout.train_files[0]} when root is the extracted folder itself): "
            f"{layout.what_belongs(root / layout.folder)}"
        )
    missing = [folder / name for name in layout.files if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{layout.title}: expected {', '.join(str(p) for p in missing)}: "
            f"{layout.what_belongs(folder)}"
        )
    return folder


def _read_cifar_batch(path: Path, layout: _CifarLayout):
    """Return (uint8 array (N, 3, 32, 32), int64 labels (N,)) from one batch file."""
    batch = read_cifar_pickle(path)
    missing = [k for k in ("data", layout.label_key) if k not in batch]
    if missing:
        raise DataError(
            f"{path}: malformed {layout.title} batch: missing key(s) {missing} (found "
            f"{sorted(map(str, batch))}); expected 'data' (N x 3072 uint8) and "
            f"'{layout.label_key}' (N ints in [0, {layout.num_classes})): {layout.what_belongs(path.parent)}"
        )
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        got = (f"an array of shape {data.shape} and dtype {data.dtype}"
               if isinstance(data, np.ndarray) else type(data).__name__)
        raise DataError(
            f"{path}: malformed {layout.title} batch: 'data' must be an N x 3072 uint8 array "
            f"(channel-major 32x32 RGB rows), got {got}"
        )
    labels = np.asarray(batch[layout.label_key])
    if labels.ndim != 1 or len(labels) != len(data) or (len(labels) and labels.dtype.kind not in "iu"):
        raise DataError(
            f"{path}: malformed {layout.title} batch: '{layout.label_key}' must be {len(data)} "
            f"integers (one per row of 'data'), got shape {labels.shape} of dtype {labels.dtype}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(
            f"{path}: malformed {layout.title} batch: labels must lie in [0, "
            f"{layout.num_classes - 1}], got [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_names(path: Path, layout: _CifarLayout) -> tuple:
    meta = read_cifar_pickle(path)
    names = meta.get(layout.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
        raise DataError(
            f"{path}: malformed {layout.title} meta file: expected '{layout.names_key}', a list of "
            f"{layout.num_classes} class names, got {type(names).__name__ if names is not None else 'no such key'}"
        )
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def _load_cifar(name: str, root: Path):
    layout = _CIFAR[name]
    folder = _cifar_folder(root, layout)
    parts = [_read_cifar_batch(folder / f, layout) for f in layout.train_files]
    # np.concatenate copies, so the tensors below own writable memory.
    train_x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    train_y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    test_x, test_y = _read_cifar_batch(folder / layout.test_file, layout)
    test_x, test_y = torch.from_numpy(np.array(test_x)), torch.from_numpy(np.array(test_y))
    names = _read_cifar_names(folder / layout.meta_file, layout)
    return layout, train_x, train_y, test_x, test_y, names


# ---------------------------------------------------------------------------------------
# Splits


def stratified_split(labels, val_fraction: float, seed: int):
    """Split positions ``0..len(labels)-1`` into (train, val) index arrays, stratified by label.

    The validation set has ``round(N * val_fraction)`` items (at least 1, at most N - 1),
    shared between classes in proportion to their counts (largest remainder; ties broken
    at random). Each class's members are drawn with ``numpy.random.default_rng(seed)``,
    so the same labels and seed give the same split. Both arrays are sorted and disjoint,
    and together cover every position.
    """
    _check_fraction(val_fraction)
    _check_seed(seed)
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise DataError(f"cannot split {n} item(s) into training and validation sets; need at least 2")
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n_val / n)
    per_class = np.floor(quota).astype(np.int64)
    leftover = n_val - int(per_class.sum())
    order = np.lexsort((rng.random(len(classes)), -(quota - per_class)))
    per_class[order[:leftover]] += 1
    val = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)]
    val = np.sort(np.concatenate(val)).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val, assume_unique=True)
    return train, val


# ---------------------------------------------------------------------------------------
# Tensor transforms on whole batches


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < max(x.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def _random_crop_flip(x: torch.Tensor, pad: int, generator) -> torch.Tensor:
    """Per-image random crop of the original size from the zero-padded batch, then a
    horizontal flip with probability 1/2 (torchvision's RandomCrop(padding) + RandomHorizontalFlip)."""
    b, _, h, w = x.shape
    offset_y = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    offset_x = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = offset_y[:, None] + torch.arange(h)
    cols = offset_x[:, None] + torch.arange(w)
    # Reading a crop window's columns in reverse order is the flip of that crop.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    batch_index = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch_index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _random_affine(x: torch.Tensor, generator) -> torch.Tensor:
    """Per-image random rotation, isotropic scale and shift (zero fill) of a [0, 1] batch."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator, dtype=torch.float32)
    angle = (u[:, 0] * 2 - 1) * math.radians(_DIGITS_MAX_ROTATE_DEG)
    scale = _DIGITS_SCALE[0] + u[:, 1] * (_DIGITS_SCALE[1] - _DIGITS_SCALE[0])
    # affine_grid's coordinates span [-1, 1], i.e. 2 per image side.
    shift = (u[:, 2:] * 2 - 1) * (2 * _DIGITS_MAX_SHIFT)
    # theta maps output to input coordinates, so dividing by scale enlarges the digit.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------------------------
# Datasets


class TensorImageDataset(Dataset):
    """A split of an in-memory image tensor, batched and augmented with tensor ops.

    ``images`` is the whole source (N, C, H, W), uint8 (0..255) or float in [0, 1], and
    ``labels`` its (N,) int64 labels; ``indices`` select this split's rows. Items are
    (float32 tensor (C, image_size, image_size), int label), normalised with
    ``mean``/``std``. ``augment`` is None, ``"cifar"`` (crop with padding 4 + flip, at the
    native size, then resize) or ``"digits"`` (resize, then random affine).
    ``iter_batches`` is the fast path used by :func:`nas_attn.train.train`.
    """

    AUGMENTATIONS = (None, "cifar", "digits")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices, *, mean: Sequence[float],
                 std: Sequence[float], image_size: int, augment: Optional[str] = None):
        if augment not in self.AUGMENTATIONS:
            raise ValueError(f"augment must be one of {self.AUGMENTATIONS}, got {augment!r}")
        self.images = images
        self.source_labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = labels[torch.from_numpy(self.indices)]
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_size = int(image_size)
        self.augment = augment
        self._index_tensor = torch.from_numpy(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        if not -len(self) <= position < len(self):
            raise IndexError(f"index {position} out of range for a split of {len(self)} images")
        x, y = self.batch(torch.tensor([position % len(self)]))
        return x[0], int(y[0])

    def without_augmentation(self) -> "TensorImageDataset":
        """The same images and split, with the evaluation transform."""
        return TensorImageDataset(self.images, self.source_labels, self.indices, mean=self.mean,
                                  std=self.std, image_size=self.image_size, augment=None)

    def batch(self, positions, generator: Optional[torch.Generator] = None, device=None):
        """Images and labels at ``positions`` of this split, on ``device`` (default CPU).

        Random augmentation parameters come from ``generator`` (a CPU generator; None uses
        torch's global one), so a seeded generator gives the same batch on any device.
        """
        positions = torch.as_tensor(positions, dtype=torch.long)
        rows = self._index_tensor[positions]
        x = self.images[rows].to(device)
        y = self.source_labels[rows].to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.augment == "cifar":
            x = _resize(_random_crop_flip(x, _CIFAR_PAD, generator), self.image_size)
        elif self.augment == "digits":
            x = _random_affine(_resize(x, self.image_size), generator)
        else:
            x = _resize(x, self.image_size)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std, y

    def iter_batches(self, batch_size: int, shuffle: bool = False, generator: Optional[torch.Generator] = None,
                     drop_last: bool = False, device=None) -> Iterator:
        """Yield (images, labels) batches; a shuffle draws its permutation from ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size], generator=generator, device=device)


class FileImageDataset(Dataset):
    """A split of image files read with PIL (RGB) and transformed per sample.

    ``samples`` is a list of (path, label); ``indices`` select this split's entries.
    ``transform`` maps a PIL image to a tensor; ``eval_transform`` is the deterministic
    one used by :meth:`without_augmentation`.
    """

    def __init__(self, samples, indices, transform, eval_transform):
        self.samples = samples
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.eval_transform = eval_transform
        self.labels = torch.tensor([samples[i][1] for i in self.indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[self.indices[position]]
        try:
            image = default_loader(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the image ({e})") from None
        return self.transform(image), label

    def without_augmentation(self) -> "FileImageDataset":
        return FileImageDataset(self.samples, self.indices, self.eval_transform, self.eval_transform)


# ---------------------------------------------------------------------------------------
# Bundle and entry point


@dataclass(frozen=True, eq=False)
class DataBundle:
    """What a trial needs from a dataset.

    ``train`` and ``val`` are torch Datasets of (image tensor (in_chans, image_size,
    image_size), int label); ``val`` is a fixed, never-trained-on part of the training
    data; ``test`` is the dataset's official held-out split (None for digits).
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    name: str
    test: Optional[Dataset] = None
    class_names: tuple = ()
    mean: tuple = ()
    std: tuple = ()
    seed: int = 0
    val_fraction: float = 0.2

    def split(self, name: str) -> Dataset:
        """The dataset of split ``name`` ("train", "val" or "test")."""
        choices = {"train": self.train, "val": self.val, "test": self.test}
        if name not in choices:
            raise ValueError(f"split must be one of {sorted(choices)}, got {name!r}")
        if choices[name] is None:
            raise ValueError(f"split {name!r}: dataset {self.name!r} has no such split")
        return choices[name]

    def sample_batch(self, n: int = 64, split: str = "val") -> torch.Tensor:
        """``min(n, len(split))`` images of ``split`` without augmentation, as one float tensor
        (B, in_chans, image_size, image_size) on CPU, meant for measuring DSA kept fractions.

        The images are a seeded random sample (the bundle's seed), not the first ones: an
        ImageFolder split is sorted by class, and its first images would all be one class."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        dataset = self.split(split)
        if hasattr(dataset, "without_augmentation"):
            dataset = dataset.without_augmentation()
        count = min(n, len(dataset))
        if count == 0:
            raise ValueError(f"split {split!r} of {self.name!r} is empty")
        generator = torch.Generator().manual_seed(self.seed)
        positions = torch.randperm(len(dataset), generator=generator)[:count].sort().values
        if hasattr(dataset, "batch"):
            return dataset.batch(positions)[0]
        return torch.stack([dataset[int(i)][0] for i in positions])


def _check_fraction(val_fraction) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), exclusive, got {val_fraction!r}")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


@functools.lru_cache(maxsize=1)
def _digits_tensors():
    """All digits as float32 (1797, 1, 8, 8) in [0, 1], int64 labels, and class names.
    Cached: scikit-learn's import and CSV parse take seconds, trials reuse the result."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels, tuple(str(n) for n in digits.target_names)


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


def _in_memory_bundle(name, images, labels, test, class_names, mean, std, image_size,
                      val_fraction, seed, augment_kind, in_chans) -> DataBundle:
    train_idx, val_idx = stratified_split(labels.numpy(), val_fraction, seed)
    common = dict(mean=mean, std=std, image_size=image_size)
    train = TensorImageDataset(images, labels, train_idx, augment=augment_kind, **common)
    val = TensorImageDataset(images, labels, val_idx, **common)
    test_ds = None
    if test is not None:
        test_ds = TensorImageDataset(test[0], test[1], np.arange(len(test[1])), **common)
    return DataBundle(train=train, val=val, num_classes=len(class_names), in_chans=in_chans,
                      image_size=image_size, name=name, test=test_ds, class_names=tuple(class_names),
                      mean=tuple(mean), std=tuple(std), seed=seed, val_fraction=val_fraction)


def _scan_image_folder(directory: Path, what: str, class_to_idx=None):
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not directory.is_dir():
        raise DataError(
            f"imagefolder: expected the folder {directory} with one sub-folder per class holding "
            f"that class's images ({what}): root must hold train/ and val/"
        )
    try:
        classes, found_class_to_idx = find_classes(str(directory))
        samples = make_dataset(str(directory), class_to_idx or found_class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise DataError(f"imagefolder: {directory}: {e} (one sub-folder per class expected)") from None
    return classes, found_class_to_idx, samples


def _load_imagefolder(root: Path, image_size, val_fraction, seed, augment) -> DataBundle:
    from torchvision import transforms as T

    if not root.is_dir():
        raise DataError(f"imagefolder: the data folder {root} does not exist; expected {root}/train/<class>/ "
                        f"and {root}/val/<class>/ folders of images")
    classes, class_to_idx, train_samples = _scan_image_folder(root / "train", "the training images")
    val_classes, _, _ = _scan_image_folder(root / "val", "the held-out images")
    if val_classes != classes:
        raise DataError(
            f"imagefolder: {root / 'val'} must have the same class folders as {root / 'train'}; "
            f"only in train/: {sorted(set(classes) - set(val_classes))}, "
            f"only in val/: {sorted(set(val_classes) - set(classes))}"
        )
    _, _, test_samples = _scan_image_folder(root / "val", "the held-out images", class_to_idx)
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    eval_transform = T.Compose([
        T.Resize(int(math.floor(image_size / _IMAGEFOLDER_CROP_PCT))),
        T.CenterCrop(image_size), T.ToTensor(), normalize,
    ])
    train_transform = eval_transform
    if augment:
        train_transform = T.Compose([
            T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize,
        ])
    labels = np.array([label for _, label in train_samples], dtype=np.int64)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    return DataBundle(
        train=FileImageDataset(train_samples, train_idx, train_transform, eval_transform),
        val=FileImageDataset(train_samples, val_idx, eval_transform, eval_transform),
        test=FileImageDataset(test_samples, np.arange(len(test_samples)), eval_transform, eval_transform),
        num_classes=len(classes), in_chans=3, image_size=image_size, name="imagefolder",
        class_names=tuple(classes), mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=seed,
        val_fraction=val_fraction,
    )


def load(dataset: str, root=None, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
         augment: bool = True) -> DataBundle:
    """Load ``dataset`` (one of :data:`DATASETS`) as a :class:`DataBundle`.

    Args:
        dataset: "digits", "cifar10", "cifar100" or "imagefolder".
        root: data folder (ignored for digits, which is embedded in scikit-learn).
            CIFAR: the extracted release folder or its parent; imagefolder: the folder
            holding train/ and val/.
        image_size: side of the square images the model sees, in pixels (>= 1).
        val_fraction: fraction of the training data held out as validation, in (0, 1).
        seed: integer >= 0 fixing the train/validation split.
        augment: apply the dataset's usual augmentation to the training split.

    Raises:
        ValueError: an argument is out of range.
        DataError: the data folder or a file in it is missing or malformed.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1 (pixels), got {image_size!r}")
    _check_fraction(val_fraction)
    _check_seed(seed)
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be True or False, got {augment!r}")
    seed = int(seed)

    if dataset == "digits":
        images, labels, names = _digits_tensors()
        return _in_memory_bundle("digits", images, labels, None, names, DIGITS_MEAN, DIGITS_STD,
                                 image_size, val_fraction, seed, "digits" if augment else None, in_chans=1)

    if dataset == "cluttered_digits":
        images, labels, train_idx, val_idx, names, _ = cluttered_digits()
        mean, std = cluttered_digits_stats()
        common = dict(mean=mean, std=std, image_size=image_size)
        return DataBundle(train=TensorImageDataset(images, labels, train_idx, **common),
                          val=TensorImageDataset(images, labels, val_idx, **common),
                          num_classes=len(names), in_chans=1, image_size=image_size, name=dataset,
                          class_names=names, mean=mean, std=std, seed=seed,
                          val_fraction=len(val_idx) / len(labels))

    if root is None:
        raise ValueError(f"root must name the data folder for dataset {dataset!r}, got None")
    root = Path(root).expanduser()
    if dataset == "imagefolder":
        return _load_imagefolder(root, image_size, val_fraction, seed, augment)
    layout, train_x, train_y, test_x, test_y, names = _load_cifar(dataset, root)
    return _in_memory_bundle(dataset, train_x, train_y, (test_x, test_y), names, layout.mean, layout.std,
                             image_size, val_fraction, seed, "cifar" if augment else None, in_chans=3)
