"""CIFAR-10/100 in the python format, read from a local folder: where the files are, what each
must hold, and the tensors they give."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._errors import DataError
from ._pickle import read_cifar_pickle

# Per-channel mean/std of the training images scaled to [0, 1]. CIFAR std is the
# per-pixel std over the training set (the often-quoted 0.2023/0.1994/0.2010 comes
# from averaging per-image stds and understates it).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


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
