"""Datasets for the search: one entry point, :func:`load`, returning a :class:`DataBundle`
(:func:`check` raises what it would raise, with less work where it can).

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

The public front is this module. The private modules, each importing only those before it:
``_errors`` (DataError, UnsafePickleError), ``_split`` (the stratified validation split),
``_pickle`` (the restricted unpickler), ``_cifar`` (CIFAR folders and batches), ``_transforms``
(batch augmentation), ``_datasets`` (TensorImageDataset, FileImageDataset, DataBundle),
``_digits`` (the embedded digits and the cluttered-digits generator) and ``_imagefolder``.
"""

from __future__ import annotations

from pathlib import Path

from ..names import DATASETS
from ._cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, CIFAR_URL, _load_cifar
from ._datasets import DataBundle, FileImageDataset, TensorImageDataset, _in_memory_bundle
from ._digits import (CLUTTER_CANVAS, CLUTTER_DIGIT_SIZE, CLUTTER_FRAGMENT_GAIN, CLUTTER_FRAGMENT_WINDOW,
                      CLUTTER_FRAGMENTS, CLUTTER_IMAGES, CLUTTER_SEED, CLUTTER_VAL_FRACTION, DIGITS_MEAN, DIGITS_STD,
                      _digits_tensors, cluttered_digits, cluttered_digits_stats, render_cluttered)
from ._errors import DataError, UnsafePickleError
from ._imagefolder import IMAGENET_MEAN, IMAGENET_STD, _load_imagefolder
from ._pickle import read_cifar_pickle
from ._split import _check_fraction, _check_seed, stratified_split

__all__ = [
    "check",
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
    "CIFAR_URL",
    "cluttered_digits",
    "cluttered_digits_stats",
    "render_cluttered",
    "CLUTTER_IMAGES",
    "CLUTTER_CANVAS",
    "CLUTTER_DIGIT_SIZE",
    "CLUTTER_FRAGMENTS",
    "CLUTTER_FRAGMENT_WINDOW",
    "CLUTTER_FRAGMENT_GAIN",
    "CLUTTER_SEED",
    "CLUTTER_VAL_FRACTION",
]


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


def _check_load_arguments(dataset, image_size, val_fraction, seed, augment) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1 (pixels), got {image_size!r}")
    _check_fraction(val_fraction)
    _check_seed(seed)
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be True or False, got {augment!r}")


def check(dataset: str, root=None, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
          augment: bool = True) -> None:
    """Raise what :func:`load` would raise for these arguments, doing as little of its work as
    that takes (a search checks its data this way before any trial).

    The cluttered digits are a fixed function of scikit-learn's digits file: their seed, split
    and rendering take nothing from the arguments, so for them the arguments and that file are
    checked and the 7,000 images are not rendered (0.5-0.7 s on a 2-core machine, proving
    nothing more). Every other dataset is loaded: reading its files is how they are checked.
    """
    if dataset == "cluttered_digits":
        _check_load_arguments(dataset, image_size, val_fraction, seed, augment)
        _digits_tensors()
        return
    load(dataset, root=root, image_size=image_size, val_fraction=val_fraction, seed=seed, augment=augment)


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
    _check_load_arguments(dataset, image_size, val_fraction, seed, augment)
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
