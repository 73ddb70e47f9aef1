"""The schema of the plain sections of a space file (model, data, train, objectives, constraints,
search, plugins): their keys, defaults and allowed values, each checked on its own."""
from __future__ import annotations

from typing import List, Tuple

from ..metrics import METRICS
from ..names import DATASETS, STEMS
from ..plugins import PluginError, import_plugins
from ._errors import _Checker, _did_you_mean, _kind

SAMPLERS = ("tpe", "nsga2", "random")
OPTIMIZERS = ("sgd", "adamw")
TOP_LEVEL_KEYS = ("name", "plugins", "model", "data", "train", "objectives", "constraints", "stages", "blocks", "search")

DEFAULTS = {
    "data": {"dataset": "digits", "root": None, "image_size": 32, "val_fraction": 0.2, "augment": True},
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "weight_decay": None,
              "momentum": 0.9, "label_smoothing": 0.0},
    "search": {"trials": 16, "concurrent": 2, "sampler": "tpe", "seed": 0,
               "resources": {"cpu": 1, "gpu": 0}, "early_stopping": None,
               "latency_batch_size": 1, "max_failures": 2, "confirm": 0, "population": None,
               "startup_trials": None, "anchors": True, "sampler_options": {}},
}


def _plugins_section(doc: dict, check: _Checker) -> List[str]:
    """Python modules to import before the rest is checked: the attention modules they register
    may be named under ``blocks``."""
    plugins = doc.get("plugins", []) or []
    if not isinstance(plugins, list):
        check.fail(("plugins",), f"expected a list of Python module names, got {_kind(plugins)}")
    for i, plugin in enumerate(plugins):
        try:
            import_plugins([plugin])
        except PluginError as exc:
            check.fail(("plugins", i), str(exc))
    return plugins


def _model_section(doc: dict, check: _Checker) -> Tuple[dict, int]:
    """(model: name, args, stem and channel_divisor where given; the channel divisor)."""
    model = check.mapping(doc["model"], ("model",), ("name", "args", "stem", "channel_divisor"), required=("name",))
    model_name = check.string(model["name"], ("model", "name"))
    args = model.get("args", {}) or {}
    if not isinstance(args, dict):
        check.fail(("model", "args"), f"expected a mapping of timm create_model arguments, got {_kind(args)}")
    stem = check.one_of(model.get("stem", "default"), ("model", "stem"), STEMS)
    divisor = check.number(model.get("channel_divisor", 8), ("model", "channel_divisor"), low=1, integer=True)
    model = {"name": model_name, "args": args, "stem": stem,
             **({"channel_divisor": divisor} if "channel_divisor" in doc["model"] else {})}
    return model, divisor


def _check_sampler_options(search: dict, check: _Checker) -> None:
    """``search.sampler_options`` against the Optuna sampler's constructor (second pass: it
    imports optuna, which validate and space show otherwise never load)."""
    if not search["sampler_options"]:
        return
    from ..samplers import check_sampler_options
    for key, problem in check_sampler_options(search["sampler"], search["sampler_options"]).items():
        check.fail(("search", "sampler_options", key), problem)


def _check_model_name(model: dict, check: _Checker) -> None:
    """The model must be one of timm's (second pass: importing timm takes seconds)."""
    import timm
    if not timm.is_model(model["name"]):
        check.fail(("model", "name"), f"unknown timm model {model['name']!r}"
                                      f"{_did_you_mean(model['name'], timm.list_models())}")


def _data_section(doc: dict, check: _Checker) -> dict:
    data = {**DEFAULTS["data"], **check.mapping(doc.get("data", {}) or {}, ("data",), tuple(DEFAULTS["data"]))}
    check.one_of(data["dataset"], ("data", "dataset"), tuple(DATASETS))
    check.number(data["image_size"], ("data", "image_size"), low=1, integer=True)
    check.number(data["val_fraction"], ("data", "val_fraction"), low=0, low_inclusive=False, high=0.9)
    if data["root"] is not None and not isinstance(data["root"], str):
        check.fail(("data", "root"), f"expected a folder path, got {_kind(data['root'])}")
    if data["dataset"] not in ("digits", "cluttered_digits") and data["root"] is None:
        check.fail(("data",), f"dataset {data['dataset']} needs 'root': the folder that holds it "
                              f"(or pass --data-root)")
    if not isinstance(data["augment"], bool):
        check.fail(("data", "augment"), f"expected true or false, got {_kind(data['augment'])}")
    return data


def _train_section(doc: dict, check: _Checker) -> dict:
    train = {**DEFAULTS["train"], **check.mapping(doc.get("train", {}) or {}, ("train",), tuple(DEFAULTS["train"]))}
    check.number(train["epochs"], ("train", "epochs"), low=1, integer=True)
    check.number(train["batch_size"], ("train", "batch_size"), low=1, integer=True)
    check.number(train["lr"], ("train", "lr"), low=0, low_inclusive=False)
    check.one_of(train["optimizer"], ("train", "optimizer"), OPTIMIZERS)
    if train["weight_decay"] is not None:
        check.number(train["weight_decay"], ("train", "weight_decay"), low=0)
    check.number(train["momentum"], ("train", "momentum"), low=0, high=1)
    check.number(train["label_smoothing"], ("train", "label_smoothing"), low=0, high=0.99)
    return train


def _objectives_section(doc: dict, check: _Checker) -> list:
    objectives = doc.get("objectives", [{"metric": "accuracy", "direction": "maximize"},
                                        {"metric": "effective_macs", "direction": "minimize"}])
    if not isinstance(objectives, list) or not objectives:
        check.fail(("objectives",), f"expected a non-empty list of {{metric, direction}}, got {_kind(objectives)}")
    seen = set()
    for i, objective in enumerate(objectives):
        opath = ("objectives", i)
        check.mapping(objective, opath, ("metric", "direction", "ref"), required=("metric",))
        check.one_of(objective["metric"], opath + ("metric",), tuple(METRICS))
        objective.setdefault("direction", METRICS[objective["metric"]].direction)
        check.one_of(objective["direction"], opath + ("direction",), ("maximize", "minimize"))
        if "ref" in objective:
            check.number(objective["ref"], opath + ("ref",))
        if objective["metric"] in seen:
            check.fail(opath + ("metric",), f"metric {objective['metric']!r} appears twice")
        seen.add(objective["metric"])
    return objectives


def _constraints_section(doc: dict, check: _Checker) -> dict:
    constraints = check.mapping(doc.get("constraints", {}) or {}, ("constraints",),
                                ("max_params", "max_macs", "max_effective_macs"))
    for key, value in constraints.items():
        check.number(value, ("constraints", key), low=0, low_inclusive=False)
    return constraints


def _search_section(doc: dict, check: _Checker) -> dict:
    search_doc = check.mapping(doc.get("search", {}) or {}, ("search",), tuple(DEFAULTS["search"]))
    search = {**DEFAULTS["search"], **search_doc}
    check.number(search["trials"], ("search", "trials"), low=1, integer=True)
    check.number(search["concurrent"], ("search", "concurrent"), low=1, integer=True)
    check.one_of(search["sampler"], ("search", "sampler"), SAMPLERS)
    check.number(search["seed"], ("search", "seed"), integer=True)
    check.number(search["latency_batch_size"], ("search", "latency_batch_size"), low=1, integer=True)
    check.number(search["max_failures"], ("search", "max_failures"), low=0, integer=True)
    check.number(search["confirm"], ("search", "confirm"), low=0, integer=True)
    if not isinstance(search["anchors"], bool):
        check.fail(("search", "anchors"), f"expected true or false, got {_kind(search['anchors'])}")
    if search["population"] is not None:
        check.number(search["population"], ("search", "population"), low=2, integer=True)
    if search["startup_trials"] is not None:
        check.number(search["startup_trials"], ("search", "startup_trials"), low=1, integer=True)
    options = search["sampler_options"]
    if options is None:
        options = search["sampler_options"] = {}
    if not isinstance(options, dict):
        check.fail(("search", "sampler_options"), f"expected a mapping of Optuna sampler arguments "
                                                  f"(e.g. {{constant_liar: true}}), got {_kind(options)}")
    resources = {**DEFAULTS["search"]["resources"],
                 **check.mapping(search.get("resources") or {}, ("search", "resources"), ("cpu", "gpu"))}
    check.number(resources["cpu"], ("search", "resources", "cpu"), low=0, low_inclusive=False)
    check.number(resources["gpu"], ("search", "resources", "gpu"), low=0)
    search["resources"] = resources
    if search["early_stopping"] is not None:
        es = check.mapping(search["early_stopping"], ("search", "early_stopping"),
                           ("enabled", "grace_epochs", "reduction_factor"))
        es = {"enabled": True, "grace_epochs": 1, "reduction_factor": 3, **es}
        if not isinstance(es["enabled"], bool):
            check.fail(("search", "early_stopping", "enabled"), f"expected true or false, got {_kind(es['enabled'])}")
        check.number(es["grace_epochs"], ("search", "early_stopping", "grace_epochs"), low=1, integer=True)
        check.number(es["reduction_factor"], ("search", "early_stopping", "reduction_factor"), low=2, integer=True)
        search["early_stopping"] = es
    return search
