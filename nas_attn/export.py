"""Export searched architectures as timm model folders, and load them back.

Each exported folder is written by timm's own ``save_for_hf``: ``config.json`` names the
architecture ``nas_attn_cnn`` and holds the Arch in ``model_args``; ``model.safetensors`` holds
the trial's trained weights. After ``import nas_attn`` (which registers ``nas_attn_cnn`` with
timm), plain ``timm.create_model("local-dir:DIR", pretrained=True)`` rebuilds it, also as a feature
backbone (``features_only=True``). ``--format onnx`` adds ``trial-NNNN.onnx`` beside each folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .arch import arch_summary, build_model, carried_pretrained_cfg
from .metrics import METRICS, accuracy_text
from .results import (SPACE_FILE, WEIGHTS_FILE, ResultsError, check_folder, finished_records, load_space, objective_value,
                      pareto_records, read_trials)
from .units import format_count


FORMATS = ("timm", "onnx")


class ExportError(ValueError):
    """Nothing sensible to export (no choice, unknown trial, no finished trials, folder in the way)."""


def write_model_folder(model: torch.nn.Module, arch: Dict[str, Any], folder: Union[str, os.PathLike],
                       data_config: Optional[Dict[str, Any]] = None, plugins: Optional[List[str]] = None) -> Path:
    """Write ``model`` (built from ``arch``, any weights) as a timm folder that ``local-dir:`` loads.

    ``config.json`` names ``nas_attn_cnn`` with the Arch (and the ``plugins`` modules it needs,
    if any) as its model args; ``model.safetensors`` holds the weights; ``data_config``
    (input_size, mean, std) goes into the pretrained cfg.
    """
    from timm.models import save_for_hf
    model.pretrained_cfg = carried_pretrained_cfg(model.pretrained_cfg)
    model_args = {"arch": arch, **({"plugins": list(plugins)} if plugins else {})}
    model._model_args = model_args
    save_for_hf(model, str(folder), model_args=model_args, safe_serialization=True, data_config=data_config)
    return Path(folder)


def write_onnx(model: Union[torch.nn.Module, "torch.export.ExportedProgram"], path: Union[str, os.PathLike],
               input_size: Sequence[int], batch_size: int = 1) -> Path:
    """Write ``model`` in eval mode as an ONNX file for inputs of shape (batch_size, *input_size).

    Uses the exporter torch recommends (``torch.onnx.export(..., dynamo=True)``, through
    ``torch.export``), which needs the ``onnx`` extra (onnx, onnxscript). ``model`` may also be
    the ``torch.export`` program of an eval-mode model for that input, which saves tracing it
    again. Shapes are fixed: AW-conv folds the batch into its convolution's groups, and
    adaptive pooling becomes fixed slices (``nas_attn.modules._pool``), both from the example
    input's shape. The graph's input is named ``input``, its output ``output``.
    """
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; a clear error beats its ImportError)
    except ImportError as err:
        raise ExportError("ONNX export needs the onnx extra: pip install 'nas_attn[onnx]' "
                          f"(onnx and onnxscript; {err})") from err
    import warnings
    is_module = isinstance(model, torch.nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    try:
        example = torch.zeros(batch_size, *input_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress notes are not the user's problem
            program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                        input_names=["input"], output_names=["output"])
        program.save(str(path))
    finally:
        if was_training:
            model.train()
    return Path(path)


def load(folder: Union[str, os.PathLike], **kwargs) -> torch.nn.Module:
    """The exported model in ``folder`` with its trained weights (``timm.create_model('local-dir:...')``)."""
    import timm
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} holds no config.json: not an exported model folder")
    return timm.create_model(f"local-dir:{folder}", pretrained=(folder / WEIGHTS_FILE).is_file(), **kwargs)


def select(run_dir: Union[str, os.PathLike], *, pareto: bool = False, trial: Optional[int] = None,
           best: Optional[str] = None, max_macs: Optional[float] = None) -> List[Dict[str, Any]]:
    """The trial records an export would write, chosen by exactly one criterion.

    ``best`` names a metric (``accuracy``) and picks the best finished trial by the space's
    direction for it; ``max_macs`` picks the most accurate finished trial with at most that many
    MACs per image.
    """
    chosen = [c for c in (pareto, trial is not None, best is not None, max_macs is not None) if c]
    if len(chosen) != 1:
        raise ExportError("choose exactly one of --pareto, --trial N, --best METRIC, --max-macs X")
    try:
        run_dir = check_folder(run_dir, required=(SPACE_FILE,))
        space = load_space(run_dir)
        records = read_trials(run_dir)
        finished = finished_records(run_dir, records, space.objectives)
    except ResultsError as exc:
        raise ExportError(str(exc)) from None
    if not finished:
        raise ExportError(f"{run_dir} has no finished trials to export "
                          f"({len(records)} trials recorded, none with status ok)")
    if pareto:
        return pareto_records(records, space.objectives)
    if trial is not None:
        match = [r for r in records if r["number"] == trial]
        if not match:
            raise ExportError(f"trial {trial} does not exist in {run_dir}; trials: "
                              f"{', '.join(str(r['number']) for r in records)}")
        if match[0]["status"] != "ok":
            raise ExportError(f"trial {trial} did not finish (status {match[0]['status']}): nothing to export")
        return match
    if best is not None:
        if best not in METRICS:
            raise ExportError(f"--best must be one of {', '.join(METRICS)}, got {best!r}")
        directions = {o["metric"]: o["direction"] for o in space.objectives}
        sign = 1 if directions.get(best, METRICS[best].direction) == "maximize" else -1
        scored = [r for r in finished if r["metrics"].get(best) is not None]
        return [max(scored, key=lambda r: (sign * objective_value(r, best), -r["number"]))]
    under = [r for r in finished if r["metrics"]["macs"] <= max_macs]
    if not under:
        cheapest = min(r["metrics"]["macs"] for r in finished)
        raise ExportError(f"no finished trial has at most {format_count(max_macs, 'MACs')}; "
                          f"the cheapest has {format_count(cheapest, 'MACs')}")
    return [max(under, key=lambda r: (objective_value(r, "accuracy"), -r["number"]))]


def data_config(space) -> Dict[str, Any]:
    """Input size and normalisation the exported model expects: those the search trained with."""
    from . import data
    mean, std = data.normalization(space.data["dataset"])
    return {"input_size": tuple(space.input_size), "mean": tuple(mean), "std": tuple(std)}


def gate_figures(model: torch.nn.Module, space, seed: int = 0, images: int = 32,
                 repeats: int = 5) -> Optional[Dict[str, Any]]:
    """Measured behaviour of a model's DSA gates, for its model card; None without gates.

    Runs the model in eval mode on ``images`` validation images of the space's dataset:
    ``kept`` (gate path -> fraction of pixels kept), ``mean_kept``, ``effective_macs``; and the
    median wall time (ms, ``repeats`` runs) of one image with the sparse path on and off. If the
    data cannot be read (a dataset that needs a root folder not present here), ``error`` says why.
    """
    import time
    from .cost import measure
    from .modules import DSAGate, set_sparse
    if not any(isinstance(m, DSAGate) for m in model.modules()):
        return None
    try:
        from .trial import get_data
        probe = get_data(space.data, seed).sample_batch(images, split="val")
    except Exception as exc:  # the card says what was not measured, the export goes on
        return {"error": f"{type(exc).__name__}: {exc}"}
    model.eval()
    cost = measure(model, tuple(space.input_size), data=probe)
    kept = {k: v for k, v in cost.dsa_kept.items() if k.endswith("gate")}
    times = {}
    with torch.no_grad():
        for sparse in (True, False):
            set_sparse(model, sparse)
            runs = []
            for i in range(repeats + 1):
                start = time.perf_counter()
                model(probe[i % len(probe)].unsqueeze(0))
                runs.append((time.perf_counter() - start) * 1000.0)
            times[sparse] = sorted(runs[1:])[len(runs[1:]) // 2]
    set_sparse(model, True)
    return {"kept": kept, "mean_kept": sum(kept.values()) / len(kept), "images": len(probe),
            "effective_macs": cost.effective_macs, "sparse_ms": times[True], "dense_ms": times[False]}


def _gate_card(gates: Optional[Dict[str, Any]]) -> str:
    if gates is None:
        return ""
    switch = ("The gated blocks compute their residual branch only at kept pixels in eval mode under "
              "`torch.no_grad()` (the sparse path); `nas_attn.modules.set_sparse(model, False)` switches "
              "to the dense masked computation, which gives the same output.")
    if "error" in gates:
        return f"\nDSA gates: kept fraction not measured at export ({gates['error']}). {switch}\n"
    per_block = ", ".join(f"{k.rsplit('.', 1)[0]} {v:.3f}" for k, v in gates["kept"].items())
    return (f"\nDSA gates, measured at export on {gates['images']} validation images: mean kept fraction "
            f"{gates['mean_kept']:.3f} (per block: {per_block}); effective MACs "
            f"{format_count(gates['effective_macs'], 'MACs')} per image; one image takes "
            f"{gates['sparse_ms']:.2f} ms with the sparse path and {gates['dense_ms']:.2f} ms dense masked "
            f"(speedup {gates['dense_ms'] / gates['sparse_ms']:.2f}x, median of a few runs on the export "
            f"machine). {switch}\n")


def model_card(record: Dict[str, Any], run_dir: Path, space_name: str,
               gates: Optional[Dict[str, Any]] = None,
               feature_info: Optional[List[Dict[str, Any]]] = None) -> str:
    """The exported folder's README.md. ``gates``: :func:`gate_figures`; ``feature_info``: the
    model's (timm's list of dicts), which the backbone example reports."""
    m = record["metrics"]
    arch = record["arch"]
    feature_info = feature_info if feature_info is not None else build_model(arch).feature_info
    all_indices = tuple(range(len(feature_info)))
    out_indices = all_indices[1:] if len(all_indices) > 1 else all_indices
    channels = [info["num_chs"] for info in feature_info]
    reductions = [info["reduction"] for info in feature_info]
    rows = "\n".join(f"| {block} | {c['attention']} {json.dumps(c.get('attention_kwargs') or {})} | "
                     f"{'yes ' + json.dumps(c['aw_conv']) if c.get('aw_conv') is not None else 'no'} | "
                     f"{'yes ' + json.dumps(c['gate']) if c.get('gate') is not None else 'no'} |"
                     for block, c in arch["blocks"].items())
    return f"""# nas_attn trial {record['number']}: {arch['model']} with {arch_summary(arch)}

Found by `nas-attn search` (space `{space_name}`, results folder `{run_dir}`).

Load it:
```python
import nas_attn, timm
model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)
```

As a feature backbone (detection, segmentation), with the trained weights:
```python
backbone = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True,
                             features_only=True, out_indices={out_indices})
features = backbone(images)   # one (B, C, H / reduction, W / reduction) map per index
```
Feature maps (indices {all_indices}): channels {channels}, reductions {reductions} (input pixels per
feature-map pixel, per side).

| figure | value |
|---|---|
| validation accuracy (top-1, fraction) [95% interval] | {accuracy_text(record)} |
| MACs per image | {format_count(m.get('macs'), 'MACs')} ({m.get('macs')}) |
| effective MACs per image (DSA-pruned pixels skipped) | {format_count(m.get('effective_macs'), 'MACs')} |
| parameters | {m.get('params')} |
| element-wise ops per image | {format_count(m.get('elementwise_ops'), 'ops')} |
| latency (ms, median forward, search machine) | {m.get('latency_ms', float('nan')):.3f} |
| epochs trained | {m.get('epoch')} |

Base model `{arch['model']}` with args `{json.dumps(arch.get('model_args', {}))}`, stem `{arch.get('stem', 'default')}`.
{_gate_card(gates)}
| block | attention (kwargs) | AW-conv | DSA gate |
|---|---|---|---|
{rows}
"""


def export(run_dir: Union[str, os.PathLike], out: Union[str, os.PathLike], *, pareto: bool = False,
           trial: Optional[int] = None, best: Optional[str] = None, max_macs: Optional[float] = None,
           weights: bool = True, force: bool = False, formats: Sequence[str] = ("timm",)) -> List[Path]:
    """Write one timm folder per chosen trial into ``out``; returns the folders.

    ``formats`` containing ``"onnx"`` also writes ``trial-NNNN.onnx`` beside each folder (batch
    1, the search's input size; see :func:`write_onnx`). Everything is checked and written into
    a temporary folder first, then moved into place, so an error leaves ``out`` as it was.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format {unknown[0]!r}; formats: {', '.join(FORMATS)}")
    onnx = "onnx" in formats
    if onnx and not weights:
        raise ExportError("an ONNX file holds the weights: --format onnx cannot go with --no-weights")
    run_dir = Path(run_dir).resolve()
    out = Path(out)
    records = select(run_dir, pareto=pareto, trial=trial, best=best, max_macs=max_macs)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out} exists and is not empty; pass --force to replace what is in it")
    space = load_space(run_dir)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        written = []
        for record in records:
            name = f"trial-{record['number']:04d}"
            folder = staging / name
            model = build_model(record["arch"])
            if weights:
                checkpoint = record.get("checkpoint")
                if not checkpoint or not (run_dir / checkpoint / WEIGHTS_FILE).is_file():
                    raise ExportError(f"trial {record['number']} has no saved weights in {run_dir} "
                                      f"(checkpoint {checkpoint!r}); use --no-weights to export its config only")
                from safetensors.torch import load_file
                model.load_state_dict(load_file(str(run_dir / checkpoint / WEIGHTS_FILE)))
            # The plugins let timm's nas_attn_cnn import the user's modules before it rebuilds the Arch.
            write_model_folder(model, record["arch"], folder, data_config(space), plugins=space.plugins)
            if not weights:
                (folder / WEIGHTS_FILE).unlink()
            gates = gate_figures(model, space, seed=space.search.get("seed", 0)) if weights else None
            (folder / "README.md").write_text(model_card(record, run_dir, space.name, gates, model.feature_info))
            if onnx:
                write_onnx(model, staging / f"{name}.onnx", space.input_size)
            written.append(name)
        out.mkdir(parents=True, exist_ok=True)
        for name in written:
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / name, target)
            if onnx:
                os.replace(staging / f"{name}.onnx", out / f"{name}.onnx")
        return [out / name for name in written]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
