"""Checks that build and run the space's base model once: timm must accept the model args, the
data must suit the model's input channels and classes, and the image size its downsampling."""
from __future__ import annotations

from ..arch import ArchError, attention_sites, build_model, family
from ._errors import _Checker


def _probe_model(model: dict, check: _Checker):
    """(the base model with no module in any block, its attention sites, its family)."""
    model_name, args, stem = model["name"], model["args"], model["stem"]
    try:
        probe = build_model({"model": model_name, "model_args": args, "stem": stem, "blocks": {}})
        sites = attention_sites(probe)
        model_family = family(probe)
    except ArchError as exc:
        check.fail(("model", "name"), str(exc))
    except Exception as exc:  # timm/torch refuse an argument (TypeError, ValueError, ...): say which
        _fail_model_args(model_name, args, stem, exc, "build", check)
    return probe, sites, model_family


def _check_against_data(model_name: str, args: dict, data: dict, check: _Checker) -> None:
    """The model's input channels and classes must be the dataset's: otherwise every trial fails
    (wrong channels) or trains a head of the wrong size (wrong classes)."""
    from ..data import dataset_format
    in_chans, num_classes = dataset_format(data["dataset"], data["root"])
    for key, want, default in (("in_chans", in_chans, 3), ("num_classes", num_classes, 1000)):
        if want is None:
            continue
        given = args.get(key, default)
        if given == want:
            continue
        where = ("model", "args", key)  # the line of the key, or of model.args / model when it is absent
        stated = f"{key}: {given!r}" if key in args else f"no {key}, so timm's default {default}"
        what = "channel" + ("s" if want != 1 else "") if key == "in_chans" else "classes"
        check.fail(where, f"dataset {data['dataset']} has {want} {what} but the model has {stated}; "
                          f"set model.args.{key}: {want}")


def _fail_model_args(model_name: str, args: dict, stem: str, exc: Exception, what: str, check: _Checker,
                     input_size=None):
    """SpaceError at the model arg that makes timm/torch fail (found by leaving each one out),
    else at model.args."""
    import torch
    for key in args:
        rest = {k: v for k, v in args.items() if k != key}
        try:
            model = build_model({"model": model_name, "model_args": rest, "stem": stem, "blocks": {}})
            if input_size is not None:
                model.eval()
                with torch.no_grad():
                    model(torch.zeros(1, *input_size))
        except Exception:
            continue
        check.fail(("model", "args", key), f"timm could not {what} {model_name} with {key}: {args[key]!r}: "
                                           f"{type(exc).__name__}: {exc}")
    check.fail(("model", "args"), f"timm could not {what} {model_name} with these args: "
                                  f"{type(exc).__name__}: {exc}")


def _check_image_size(probe, model_name: str, args: dict, stem: str, data: dict, train: dict, sites,
                      decisions: list, check: _Checker) -> None:
    """Run the base model once on one image of the data's size: it must run, and the searched
    blocks must see more than a single pixel (beyond the model's downsampling every map is 1x1
    and spatial attention has nothing to attend to)."""
    from ..arch import site_shapes
    size = data["image_size"]
    input_size = (args.get("in_chans", 3), size, size)
    try:
        shapes = site_shapes(probe, input_size)
    except Exception as exc:
        if isinstance(exc, (ValueError, TypeError)) and args:
            _fail_model_args(model_name, args, stem, exc, "run", check, input_size)
        check.fail(("data", "image_size"), f"{model_name} cannot run on {size}x{size} images: "
                                           f"{type(exc).__name__}: {exc}")
    searched = [b for d in decisions for b in d.blocks]
    if searched and all(shapes[b]["slot"][1:] == (1, 1) for b in searched):
        last = next((b for b in shapes if shapes[b]["slot"][1:] == (1, 1)), searched[0])
        check.fail(("data", "image_size"),
                   f"{size}x{size} images are too small for {model_name}'s downsampling: every searched block "
                   f"sees a 1x1 map (from {last} on); use a larger image_size or model.stem: cifar")
    smallest = min((shapes[b]["slot"][1] * shapes[b]["slot"][2] for b in shapes), default=2)
    if train["batch_size"] == 1 and smallest == 1:
        check.fail(("train", "batch_size"), "batch_size 1 with maps of 1x1 pixels: batch norm cannot "
                                            "normalise a single value in training; use batch_size >= 2")
