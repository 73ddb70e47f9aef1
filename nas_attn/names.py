"""The names a search space may use that the model and data code define: stems, datasets and
the stage of a block.

They live here, free of torch and timm, because the space is checked in two passes. The first
pass (the YAML, every section's keys, types and ranges) needs only these names and answers in
well under a second; torch and timm take 7 s to import on a 2-core machine, and only the second
pass (module names, the model's blocks, the data against the model) needs them. :mod:`arch` and
:mod:`data` re-export these names as their own.
"""
#: ``model.stem``: timm's own stem, or the CIFAR stem (3x3 conv, stride 1, no max-pool).
STEMS = ("default", "cifar")

#: ``data.dataset``: the embedded digits and cluttered digits, and the loaders of local folders.
DATASETS = ("digits", "cluttered_digits", "cifar10", "cifar100", "imagefolder")


def stage_of(block: str) -> str:
    """``layer2.1`` -> ``layer2``; ``blocks.4.0`` -> ``blocks.4``; a name without a dot is its own stage."""
    return block.rsplit(".", 1)[0] if "." in block else block
