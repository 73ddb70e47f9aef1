"""The datasets a trial iterates over (in-memory tensors, or image files) and the bundle of
splits :func:`nas_attn.data.load` returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ._errors import DataError
from ._split import stratified_split
from ._transforms import _CIFAR_PAD, _random_affine, _random_crop_flip, _resize


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
