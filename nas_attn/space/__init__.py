"""Search spaces: YAML -> validated :class:`SearchSpace` -> sampled Arch.

``load(path_or_name)`` reads a YAML file (``yaml.safe_load`` semantics only) or a space
shipped in ``search_spaces/`` by name, checks every key before any trial runs, and raises
:class:`SpaceError` naming the file, the line, the key path and what was expected.
``read(path_or_name)`` runs only the first of the two checks (the YAML alone, no torch) and
returns a :class:`SpaceDocument` whose ``build()`` runs the second.

The format (README "Search spaces" documents every key)::

    name: digits_resnet
    model: {name: resnet18, args: {num_classes: 10, in_chans: 1}, stem: default, channel_divisor: 8}
    data: {dataset: digits, image_size: 32, val_fraction: 0.2}
    train: {epochs: 4, batch_size: 64, lr: 0.05}
    objectives:
      - {metric: accuracy, direction: maximize, ref: 0.0}
      - {metric: effective_macs, direction: minimize, ref: 6.0e7}
    constraints: {max_params: 12.0e6}
    stages:                       # cost knobs, per stage (layer1..4; blocks.0..6 in MobileNetV2)
      "layer*":
        width: {choices: [0.5, 1.0]}    # multiplier of the base channels (or channels: [...])
        depth: {choices: [1, 2]}        # blocks kept, from the first
    blocks:
      "layer*.*":
        attention:
          choices: [none, se, dsa]
          dsa: {threshold: {float: [0.0, 0.8]}}
        aw_conv: {choices: [false, true]}
        gate: {choices: [false, true], threshold: {float: [0.0, 0.8]}}   # DSA gate on the branch
        tie: stage
    search: {trials: 16, concurrent: 2, sampler: tpe, seed: 0}

The public front is this module. The private modules, each importing only those before it:
``_errors`` (SpaceError; the line and key path of a mistake), ``_yaml`` (reading the file),
``_sections`` (model, data, train, objectives, constraints, search, plugins), ``_params`` (one
hyperparameter), ``_knobs`` (width, channels, depth, expansion, kernel), ``_blocks`` (the attention
choices, AW-conv and gate per block glob; the sampler's decisions), ``_probe`` (checks that build
and run the base model) and ``_space`` (:class:`SearchSpace` and :func:`from_dict`).
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Dict, Union

from ._blocks import BlockRule, Decision
from ._errors import SpaceError, _did_you_mean, format_key_path
from ._knobs import BLOCK_KNOBS, STAGE_KEYS, Stage, StageRule
from ._params import Param
from ._sections import DEFAULTS, OPTIMIZERS, SAMPLERS, TOP_LEVEL_KEYS
from ._space import SearchSpace, SpaceDocument, check_document, from_dict
from ._yaml import SpaceLoader, _parse_yaml, _read_text


def shipped_spaces() -> Dict[str, Path]:
    """Name -> file of every search space shipped with nas_attn."""
    folder = importlib.resources.files("nas_attn.search_spaces")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def resolve(path_or_name: Union[str, os.PathLike]) -> Path:
    """A path to an existing file, or the shipped space of that name."""
    candidate = Path(path_or_name)
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise SpaceError(f"is a folder, not a YAML file; give the space file inside it "
                         f"(e.g. {candidate / 'space.yaml'}) or a shipped space name", file=str(path_or_name))
    shipped = shipped_spaces()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    raise SpaceError(f"no such file, and no shipped space of that name"
                     f"{_did_you_mean(path_or_name, shipped)}; shipped: {', '.join(sorted(shipped))}",
                     file=str(path_or_name))


def load(path_or_name: Union[str, os.PathLike]) -> SearchSpace:
    """Load and validate a search space from a YAML path or a shipped name."""
    return read(path_or_name).build()


def read(path_or_name: Union[str, os.PathLike]) -> SpaceDocument:
    """Read a search space and run the first check only (the YAML's keys, types and ranges; no
    torch or timm); ``.build()`` runs the second and returns the :class:`SearchSpace`."""
    path = resolve(path_or_name)
    document, lines = _parse_yaml(_read_text(path), str(path))
    return check_document(document, file=str(path), lines=lines)


def loads(text: str, file: str = "<string>") -> SearchSpace:
    """Load a search space from YAML text (tests, notebooks)."""
    document, lines = _parse_yaml(text, file)
    return from_dict(document, file=file, lines=lines)


__all__ = ["load", "loads", "read", "from_dict", "check_document", "SpaceDocument", "resolve", "shipped_spaces", "SearchSpace", "SpaceError", "SpaceLoader",
           "Decision", "BlockRule", "Stage", "StageRule", "Param", "format_key_path", "DEFAULTS", "SAMPLERS",
           "OPTIMIZERS", "TOP_LEVEL_KEYS", "STAGE_KEYS", "BLOCK_KNOBS"]
