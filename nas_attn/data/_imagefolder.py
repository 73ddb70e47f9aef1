"""An ImageFolder tree (root/train/<class>/, root/val/<class>/) read with torchvision and PIL."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._datasets import DataBundle, FileImageDataset
from ._errors import DataError
from ._split import stratified_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGEFOLDER_CROP_PCT = 0.875


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
