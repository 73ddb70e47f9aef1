"""Tests for nas_attn.data: digits, CIFAR python-format folders, ImageFolder, splits, safety."""

import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nas_attn import data as D
from nas_attn.data import DataError, UnsafePickleError


# ---------------------------------------------------------------------------------------
# Fixture writers: the real formats, written the way the real releases are


def write_cifar10(root, per_batch=6, test_count=5, seed=0, folder="cifar-10-batches-py", bytes_keys=False):
    """A CIFAR-10 python-format folder: pickled dicts of numpy arrays, as in the release."""
    rng = np.random.default_rng(seed)
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    batches = {}
    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test_count)]:
        batch = {key("batch_label"): f"{name} fixture",
                 key("data"): rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 key("labels"): [int(v) for v in rng.integers(0, 10, count)],
                 key("filenames"): [f"img{i}.png" for i in range(count)]}
        with open(path / name, "wb") as f:
            pickle.dump(batch, f)
        batches[name] = batch
    with open(path / "batches.meta", "wb") as f:
        pickle.dump({key("label_names"): [f"class{i}" for i in range(10)], key("num_vis"): 3072}, f)
    return path, batches


def write_cifar100(root, train_count=30, test_count=7, seed=1):
    rng = np.random.default_rng(seed)
    path = root / "cifar-100-python"
    path.mkdir(parents=True)
    batches = {}
    for name, count in [("train", train_count), ("test", test_count)]:
        fine = rng.integers(0, 100, count)
        batch = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) // 5 for v in fine]}
        with open(path / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = batch
    with open(path / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return path, batches


def write_imagefolder(root, classes=("ant", "bee", "cat"), train_per_class=5, val_per_class=2, size=12):
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


# A Python 2 cPickle (protocol 2) stream as in the real CIFAR release: numpy.core globals,
# py2 str (SHORT_BINSTRING/BINSTRING) keys and array bytes, written opcode by opcode.
def _py2_str(raw: bytes) -> bytes:
    return (b"U" + bytes([len(raw)]) + raw) if len(raw) < 256 else (b"T" + struct.pack("<i", len(raw)) + raw)


def _py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)


def _py2_array(array: np.ndarray) -> bytes:
    out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
    out += b"(" + _py2_int(1) + _py2_int(array.shape[0]) + _py2_int(array.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
    out += b"(" + _py2_int(3) + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + _py2_int(0) + b"tb"
    return out + b"\x89" + _py2_str(array.tobytes()) + b"tb"


def py2_pickle(batch: dict) -> bytes:
    out = b"\x80\x02}"
    for key, value in batch.items():
        out += _py2_str(key.encode())
        if isinstance(value, np.ndarray):
            out += _py2_array(value)
        elif isinstance(value, str):
            out += _py2_str(value.encode())
        else:
            out += b"](" + b"".join(_py2_int(v) if isinstance(v, int) else _py2_str(v.encode()) for v in value) + b"e"
        out += b"s"
    return out + b"."


def unnormalise(x, mean, std):
    return x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


# ---------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
    return D.load("digits", image_size=32, val_fraction=0.2, seed=0)


def test_digits_bundle_shapes(digits):
    assert digits.name == "digits" and digits.num_classes == 10 and digits.in_chans == 1
    assert digits.image_size == 32 and digits.test is None
    assert len(digits.train) + len(digits.val) == 1797
    assert len(digits.val) == round(1797 * 0.2)
    image, label = digits.train[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    assert digits.sample_batch(64).shape == (64, 1, 32, 32)


def test_digits_eval_images_are_bilinear_upsampling_normalised(digits):
    from sklearn.datasets import load_digits

    raw = load_digits().images
    position = 3
    source_row = digits.val.indices[position]
    expected = F.interpolate(torch.tensor(raw[source_row] / 16.0, dtype=torch.float32)[None, None],
                             size=(32, 32), mode="bilinear", align_corners=False)[0]
    expected = (expected - D.DIGITS_MEAN[0]) / D.DIGITS_STD[0]
    image, label = digits.val[position]
    torch.testing.assert_close(image, expected)
    assert label == int(load_digits().target[source_row])


def test_digits_are_read_without_importing_sklearn_and_equal_load_digits(monkeypatch):
    # The digits come from scikit-learn's CSV, parsed here: importing sklearn.datasets would
    # cost every fresh trial worker ~1.2 CPU-s. With that import made to fail, the digits must
    # still load, and be exactly what load_digits returns; without the CSV, load_digits is used.
    from nas_attn.data import _digits
    from sklearn.datasets import load_digits

    reference = load_digits()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # `import sklearn.datasets` raises
    images, labels = _digits._digits_arrays()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)
    assert labels.dtype == np.int64
    monkeypatch.undo()
    monkeypatch.setattr(_digits, "_digits_csv", lambda: None)
    images, labels = _digits._digits_arrays()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)
    assert labels.dtype == np.int64


def test_digits_normalisation_constants_centre_the_data():
    native = D.load("digits", image_size=8, augment=False)
    everything = torch.cat([native.sample_batch(2000, "train"), native.sample_batch(2000, "val")])
    assert everything.shape == (1797, 1, 8, 8)
    assert abs(everything.mean().item()) < 1e-3
    assert abs(everything.std().item() - 1.0) < 1e-3


def test_digits_augmentation_only_on_training_split(digits):
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    positions = torch.arange(16)
    augmented, labels = digits.train.batch(positions, generator=gen())
    again, _ = digits.train.batch(positions, generator=gen())
    plain, plain_labels = digits.train.without_augmentation().batch(positions)
    torch.testing.assert_close(augmented, again)  # seeded -> reproducible
    assert torch.equal(labels, plain_labels)
    assert (augmented - plain).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every image moved
    # The random affine keeps most of the digit: still correlated with the original.
    a, p = augmented.flatten(1), plain.flatten(1)
    a, p = a - a.mean(1, keepdim=True), p - p.mean(1, keepdim=True)
    correlation = (a * p).sum(1) / (a.norm(dim=1) * p.norm(dim=1))
    assert correlation.min() > 0.3
    # Validation images carry no randomness: a generator changes nothing (it moves every
    # augmented training image above).
    val_positions = torch.arange(16)
    plain_val = digits.val.batch(val_positions)[0]
    assert torch.equal(digits.val.batch(val_positions, generator=gen())[0], plain_val)
    assert torch.equal(digits.val.batch(val_positions, generator=torch.Generator().manual_seed(9))[0], plain_val)
    assert torch.equal(digits.val[3][0], plain_val[3])
    no_aug = D.load("digits", image_size=32, augment=False)
    assert torch.equal(no_aug.train.batch(positions)[0], plain)


def test_sample_batch_is_deterministic_and_unaugmented(digits):
    first = digits.sample_batch(10, split="train")
    second = digits.sample_batch(10, split="train")
    assert torch.equal(first, second)
    positions = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(digits.seed))[:10]
    expected = torch.stack([digits.train.without_augmentation()[int(i)][0] for i in positions.sort().values])
    assert torch.equal(first, expected)  # a seeded random sample, unaugmented
    assert not torch.equal(first, torch.stack([digits.train.without_augmentation()[i][0] for i in range(10)]))
    assert digits.sample_batch(5000).shape[0] == len(digits.val)
    with pytest.raises(ValueError, match="split"):
        digits.sample_batch(4, split="test")
    with pytest.raises(ValueError, match="n must be"):
        digits.sample_batch(0)


# ---------------------------------------------------------------------------------------
# splits


def test_split_disjoint_covering_and_seeded(digits):
    train, val = set(digits.train.indices.tolist()), set(digits.val.indices.tolist())
    assert not train & val
    assert train | val == set(range(1797))
    same = D.load("digits", seed=0)
    other = D.load("digits", seed=1)
    assert np.array_equal(same.val.indices, digits.val.indices)
    assert not np.array_equal(other.val.indices, digits.val.indices)
    assert len(other.val) == len(digits.val)


def test_split_is_stratified():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    train, val = D.stratified_split(labels, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 6, 3, 1]
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    # Fractional quotas: 10 * 0.25 = 2.5 per class -> 5 in total, 2 or 3 per class.
    labels = np.repeat([0, 1], 10)
    _, val = D.stratified_split(labels, 0.25, seed=0)
    assert len(val) == 5 and sorted(np.bincount(labels[val]).tolist()) == [2, 3]


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="mnist"), "dataset must be one of"),
    (dict(dataset="digits", image_size=0), "image_size"),
    (dict(dataset="digits", val_fraction=1.0), "val_fraction"),
    (dict(dataset="digits", val_fraction=0), "val_fraction"),
    (dict(dataset="digits", seed=-1), "seed"),
    (dict(dataset="digits", augment="yes"), "augment"),
    (dict(dataset="cifar10"), "root"),
])
def test_load_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.load(**kwargs)


# ---------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_reads_the_release_format(tmp_path):
    folder, batches = write_cifar10(tmp_path)
    for root in (tmp_path, folder):  # the parent or the extracted folder itself
        bundle = D.load("cifar10", root=root, image_size=32, val_fraction=0.2, seed=0)
        assert bundle.num_classes == 10 and bundle.in_chans == 3 and bundle.name == "cifar10"
        assert bundle.class_names == tuple(f"class{i}" for i in range(10))
        assert len(bundle.train) + len(bundle.val) == 30 and len(bundle.val) == 6
        assert len(bundle.test) == 5
    all_data = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    all_labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    position = 2
    row = bundle.val.indices[position]
    image, label = bundle.val[position]
    expected = torch.tensor(all_data[row].reshape(3, 32, 32) / 255.0, dtype=torch.float32)
    torch.testing.assert_close(unnormalise(image, D.CIFAR10_MEAN, D.CIFAR10_STD), expected, atol=1e-5, rtol=0)
    assert label == all_labels[row]
    test_image, test_label = bundle.test[4]
    expected = torch.tensor(batches["test_batch"]["data"][4].reshape(3, 32, 32) / 255.0, dtype=torch.float32)
    torch.testing.assert_close(unnormalise(test_image, D.CIFAR10_MEAN, D.CIFAR10_STD), expected, atol=1e-5, rtol=0)
    assert test_label == batches["test_batch"]["labels"][4]


def test_cifar_bytes_keys_and_resize(tmp_path):
    write_cifar10(tmp_path, bytes_keys=True)
    bundle = D.load("cifar10", root=tmp_path, image_size=16)
    assert bundle.train[0][0].shape == (3, 16, 16)
    assert bundle.sample_batch(4, split="test").shape == (4, 3, 16, 16)


def test_cifar_augmentation_is_padded_crop_and_flip(tmp_path):
    write_cifar10(tmp_path)
    bundle = D.load("cifar10", root=tmp_path, image_size=32)
    positions = torch.arange(12)
    augmented, _ = bundle.train.batch(positions, generator=torch.Generator().manual_seed(0))
    plain, _ = bundle.train.without_augmentation().batch(positions)
    augmented = unnormalise(augmented, D.CIFAR10_MEAN, D.CIFAR10_STD)
    plain = unnormalise(plain, D.CIFAR10_MEAN, D.CIFAR10_STD)
    shifts = set()
    for aug, orig in zip(augmented, plain):
        padded = F.pad(orig, (4, 4, 4, 4))
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.allclose(padded[:, dy:dy + 32, dx:dx + 32].flip(2) if flip
                                     else padded[:, dy:dy + 32, dx:dx + 32], aug, atol=1e-5)]
        assert len(matches) == 1, "each augmented image is exactly one crop (+flip) of the padded original"
        shifts.add(matches[0])
    assert len(shifts) > 1  # parameters differ between images


def test_cifar100_fine_labels(tmp_path):
    _, batches = write_cifar100(tmp_path)
    bundle = D.load("cifar100", root=tmp_path, val_fraction=0.3)
    assert bundle.num_classes == 100 and bundle.class_names[7] == "f7"
    assert len(bundle.train) + len(bundle.val) == 30 and len(bundle.test) == 7
    labels = torch.cat([bundle.train.labels, bundle.val.labels]).sort().values
    assert labels.tolist() == sorted(batches["train"]["fine_labels"])


def test_python2_release_pickle_is_read(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    path = tmp_path / "data_batch_1"
    path.write_bytes(py2_pickle({"batch_label": "training batch 1 of 5", "data": data, "labels": [3, 1, 4, 1]}))
    batch = D.read_cifar_pickle(path)
    assert batch["labels"] == [3, 1, 4, 1] and batch["batch_label"] == "training batch 1 of 5"
    assert batch["data"].dtype == np.uint8 and np.array_equal(batch["data"], data)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_of_every_protocol_are_read(tmp_path, protocol):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": np.array([1, 2]), b"n": np.int64(2)}, f, protocol=protocol)
    batch = D.read_cifar_pickle(path)
    assert np.array_equal(batch["data"], data) and batch["labels"].tolist() == [1, 2] and batch["n"] == 2


class _Planted:
    """Unpickling this would run a shell command creating a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _PlantedSubprocess:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


class _PlantedEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("planted", [_Planted, _PlantedSubprocess, _PlantedEval])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, planted):
    folder, _ = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": planted(marker)}, f)
    if planted is _PlantedEval:  # control: an unrestricted unpickler would run it
        control = tmp_path / "control"
        pickle.loads(pickle.dumps(planted(control)))
        assert control.exists()
    with pytest.raises(UnsafePickleError, match="refused to unpickle") as info:
        D.load("cifar10", root=tmp_path)
    assert "data_batch_3" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


def test_codecs_encode_with_other_codec_is_refused(tmp_path):
    # _codecs.encode('x', 'rot13'): an admitted global called with an unexpected argument.
    stream = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    path = tmp_path / "batch"
    path.write_bytes(stream)
    with pytest.raises(UnsafePickleError, match="latin1"):
        D.read_cifar_pickle(path)


def test_missing_cifar_folder_names_expected_path_and_source(tmp_path):
    with pytest.raises(DataError) as info:
        D.load("cifar10", root=tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert "cifar-10-batches-py" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data_batch_1") as info:
        D.load("cifar10", root=tmp_path / "empty")
    assert str(tmp_path / "empty" / "cifar-10-batches-py" / "data_batch_1") in str(info.value)
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        D.load("cifar100", root=tmp_path / "empty")


def test_missing_cifar_file_is_named(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError) as info:
        D.load("cifar10", root=tmp_path)
    assert str(folder / "data_batch_4") in str(info.value)
    assert "extracted" in str(info.value)


@pytest.mark.parametrize("batch, match", [
    ({"pixels": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, "missing key.*'data'"),
    ({"data": np.zeros((2, 3072), np.uint8)}, "missing key.*'labels'"),
    ({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, "N x 3072 uint8.*shape \\(2, 1024\\)"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "N x 3072 uint8.*float32"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1, 2]}, "2 integers"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, r"labels must lie in \[0, 9\]"),
    ([1, 2, 3], "expected a pickled dict"),
])
def test_malformed_cifar_batch(tmp_path, batch, match):
    folder, _ = write_cifar10(tmp_path)
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(DataError, match=match) as info:
        D.load("cifar10", root=tmp_path)
    assert str(folder / "data_batch_2") in str(info.value)


def test_truncated_and_bad_meta_files(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    content = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        D.load("cifar10", root=tmp_path)
    write_cifar10(tmp_path)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["a", "b"]}, f)
    with pytest.raises(DataError, match="list of 10 class names"):
        D.load("cifar10", root=tmp_path)


# ---------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_layout(tmp_path):
    write_imagefolder(tmp_path)
    bundle = D.load("imagefolder", root=tmp_path, image_size=16, val_fraction=0.2, seed=0)
    assert bundle.class_names == ("ant", "bee", "cat") and bundle.num_classes == 3 and bundle.in_chans == 3
    assert len(bundle.train) == 12 and len(bundle.val) == 3 and len(bundle.test) == 6
    assert sorted(bundle.val.labels.tolist()) == [0, 1, 2]  # stratified
    assert not set(bundle.train.indices.tolist()) & set(bundle.val.indices.tolist())
    image, label = bundle.train[0]
    assert image.shape == (3, 16, 16) and label in (0, 1, 2)
    batch = bundle.sample_batch(5)
    assert batch.shape == (3, 3, 16, 16) and torch.equal(batch, bundle.sample_batch(5))
    # Evaluation transform: resize the 12x12 image to floor(16 / 0.875) = 18, centre-crop 16.
    from torchvision.transforms import functional as TF

    path, label = bundle.val.samples[bundle.val.indices[0]]
    expected = TF.to_tensor(TF.center_crop(TF.resize(Image.open(path).convert("RGB"), 18), 16))
    image, val_label = bundle.val[0]
    torch.testing.assert_close(unnormalise(image, D.IMAGENET_MEAN, D.IMAGENET_STD), expected, atol=1e-5, rtol=0)
    assert val_label == label == bundle.class_names.index(os.path.basename(os.path.dirname(path)))
    # The test split gets the same evaluation transform, whatever the global seed.
    path, label = bundle.test.samples[bundle.test.indices[0]]
    expected = TF.to_tensor(TF.center_crop(TF.resize(Image.open(path).convert("RGB"), 18), 16))
    for seed in (0, 1):
        torch.manual_seed(seed)
        image, test_label = bundle.test[0]
        torch.testing.assert_close(unnormalise(image, D.IMAGENET_MEAN, D.IMAGENET_STD), expected, atol=1e-5, rtol=0)
        assert test_label == label


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        D.load("imagefolder", root=tmp_path / "nowhere")
    write_imagefolder(tmp_path / "a")
    for cls in ("ant", "bee", "cat"):
        for png in (tmp_path / "a" / "val" / cls).iterdir():
            png.unlink()
        (tmp_path / "a" / "val" / cls).rmdir()
    (tmp_path / "a" / "val").rmdir()
    with pytest.raises(DataError) as info:
        D.load("imagefolder", root=tmp_path / "a")
    assert str(tmp_path / "a" / "val") in str(info.value) and "one sub-folder per class" in str(info.value)
    write_imagefolder(tmp_path / "b")
    (tmp_path / "b" / "val" / "dog").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b" / "val" / "dog" / "0.png")
    with pytest.raises(DataError, match=r"only in val/: \['dog'\]"):
        D.load("imagefolder", root=tmp_path / "b")
    (tmp_path / "c" / "train" / "empty").mkdir(parents=True)
    (tmp_path / "c" / "val").mkdir()
    with pytest.raises(DataError, match="train"):
        D.load("imagefolder", root=tmp_path / "c")


def test_cluttered_digits_is_fixed_sized_and_holds_out_unseen_handwriting():
    from nas_attn.data import CLUTTER_IMAGES, _digits_tensors, cluttered_digits
    bundle = D.load("cluttered_digits", image_size=32, seed=5)
    other = D.load("cluttered_digits", image_size=32, seed=0)
    assert len(bundle.val) >= 2000 and len(bundle.train) + len(bundle.val) == CLUTTER_IMAGES
    assert torch.equal(bundle.val.batch([0, 1])[0], other.val.batch([0, 1])[0])  # seed-independent
    images, labels, train_idx, val_idx, _, sources = cluttered_digits()
    assert images.shape == (CLUTTER_IMAGES, 1, 32, 32) and images.dtype == torch.uint8
    assert not set(sources[train_idx]) & set(sources[val_idx])
    digits, digit_labels, _ = _digits_tensors()
    assert torch.equal(labels, digit_labels[torch.from_numpy(sources)])
    counts = torch.bincount(labels[torch.from_numpy(val_idx)], minlength=10)
    assert counts.min() > 0.7 * counts.float().mean()  # every class well represented
    x, y = bundle.val.batch(torch.arange(64))
    assert x.shape == (64, 1, 32, 32) and abs(float(bundle.train.batch(torch.arange(512))[0].mean())) < 0.2


def test_cluttered_rendering_places_the_digit_inside_and_fragments_dimmer():
    import numpy as np
    from nas_attn.data import render_cluttered
    square = torch.zeros(2, 1, 8, 8)
    square[0] = 1.0  # the digit: a full bright square
    square[1, :, 2:6, 2:6] = 1.0
    rng = np.random.default_rng(0)
    out = render_cluttered(square, np.array([0, 0, 0]), np.ones((3, 2), dtype=int), rng,
                           canvas=32, digit_size=(8.0, 8.0), window=(8, 8), gain=(0.5, 0.5))
    for image in out[:, 0].float() / 255:
        bright = (image > 0.99).nonzero()
        assert len(bright) >= 36  # the whole 8x8 digit (minus bilinear edges) is on the canvas
        assert float(image.max()) == 1.0
    # fragments (the full 8x8 window at gain 0.5) show at half intensity where they miss the digit
    half = ((out.float() / 255 - 0.5).abs() < 0.01).flatten(1).sum(1)
    assert int(half.max()) > 10
    dim = render_cluttered(square, np.array([1]), np.ones((1, 0), dtype=int), rng, canvas=32,
                           digit_size=(8.0, 8.0))
    assert float(dim.float().max()) == 255.0


# check(): what load() would raise, with less work where it can

CHECK_CASES = [
    ({"dataset": "cluttered_digits"}, None),
    ({"dataset": "digits", "val_fraction": 0.3, "seed": 2}, None),
    ({"dataset": "cluttered_digits", "image_size": 0}, ValueError),
    ({"dataset": "cluttered_digits", "image_size": True}, ValueError),
    ({"dataset": "cluttered_digits", "val_fraction": 1.0}, ValueError),
    ({"dataset": "cluttered_digits", "seed": -1}, ValueError),
    ({"dataset": "cluttered_digits", "augment": "yes"}, ValueError),
    ({"dataset": "digits", "val_fraction": 0.0}, ValueError),
    ({"dataset": "mnist"}, ValueError),
    ({"dataset": "cifar10", "root": "MISSING"}, DataError),
    ({"dataset": "cifar10"}, ValueError),  # no root
]


@pytest.mark.parametrize("kwargs, error", CHECK_CASES)
def test_check_raises_exactly_what_load_raises(kwargs, error, tmp_path):
    kwargs = {k: (str(tmp_path / "nowhere") if v == "MISSING" else v) for k, v in kwargs.items()}
    outcomes = []
    for function in (D.check, D.load):
        try:
            function(**kwargs)
            outcomes.append(None)
        except Exception as exc:  # noqa: BLE001  (compared below, type and message)
            outcomes.append((type(exc), str(exc)))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] and outcomes[0][0]) == error


def test_check_reads_real_cifar_files_and_names_a_broken_one(tmp_path):
    write_cifar10(tmp_path)
    assert D.check("cifar10", root=tmp_path) is None
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_2"):
        D.check("cifar10", root=tmp_path)


def test_check_of_cluttered_digits_reads_the_digits_but_renders_nothing(monkeypatch):
    # The images are a fixed function of scikit-learn's digits file; rendering them (what a
    # search's data check did, 0.5-0.7 s) proves nothing the file's reading does not.
    import nas_attn.data as data_module

    def no_rendering(*args, **kwargs):
        raise AssertionError("check() rendered the cluttered digits")

    monkeypatch.setattr(data_module, "cluttered_digits", no_rendering)
    monkeypatch.setattr(data_module, "render_cluttered", no_rendering)
    read = []
    digits_tensors = data_module._digits_tensors
    monkeypatch.setattr(data_module, "_digits_tensors", lambda: read.append(1) or digits_tensors())
    assert D.check("cluttered_digits", image_size=32) is None
    assert read == [1]
