"""Options shared by every command: one-line errors made from the parser's own types, the
checks run once after parsing, and the Trainer options the fold loop cannot work with.

jsonargparse reports a bad value as a multi-line text. Instead of reading that text, a failed
parse is replayed option by option (each prefix of the command line parsed again) until the
first option that fails; the message is then written here from that option's type hint.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from jsonargparse import ArgumentError, Namespace

from lit_cnn.errors import UsageError
from lit_cnn.models.modules import list_models

# ----------------------------------------------------------------------------- types in words

_EXAMPLES = {
    "Callback": "EarlyStopping, LearningRateMonitor, ModelCheckpoint",
    "Logger": "TensorBoardLogger, CSVLogger, WandbLogger, MLFlowLogger",
    "Optimizer": "Adam, AdamW, SGD",
    "LRScheduler": "StepLR, OneCycleLR, CosineAnnealingLR, ReduceLROnPlateau",
}


def describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like on the command line, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        literals = [
            str(a)
            for sub in args
            if typing.get_origin(sub) is Literal
            for a in typing.get_args(sub)
        ]
        parts = ["one of " + ", ".join(dict.fromkeys(literals))] if literals else []
        singles = [sub for sub in args if typing.get_origin(sub) is None and sub is not type(None)]
        parts += [describe(sub) for sub in singles]
        for sub in args:
            inner = typing.get_args(sub)
            if typing.get_origin(sub) in (None, Literal):
                continue
            if inner and inner[0] in singles:
                parts[parts.index(describe(inner[0]))] += ", or a list of them"
            else:
                parts.append(describe(sub))
        return " or ".join(dict.fromkeys(parts)) + (" (or null)" if type(None) in args else "")
    if origin in (list, tuple, Sequence, typing.get_origin(typing.Iterable[int])):
        return "a list of " + (describe(args[0]) if args else "values")
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if inspect.isclass(hint):
        if hint.__name__ == "CNNModule":
            return "a model: " + ", ".join(list_models())
        for base in hint.__mro__:
            if base.__name__ in _EXAMPLES:
                return f"a {base.__name__} class such as {_EXAMPLES[base.__name__]}"
        return f"a {hint.__name__}"
    return str(hint)


# ----------------------------------------------------------------------------- diagnosis


def option_groups(argv: Sequence[str]) -> list[list[str]]:
    """``argv`` cut into options, each ``--name`` with the values that follow it."""
    groups: list[list[str]] = []
    for arg in argv:
        if arg.startswith("--") or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return groups


def _split(group: list[str]) -> tuple[str, str]:
    name, _, inline = group[0].partition("=")
    value = inline if "=" in group[0] else " ".join(group[1:])
    return name.lstrip("-").removesuffix("+"), value


def check_config_file(path: str) -> dict[str, Any]:
    """Reads a ``--config`` file's YAML, or says in one line what is wrong with it."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as err:
        raise UsageError(f"--config {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UsageError(f"--config {path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"--config {path}: expected a mapping of options, found {type(data).__name__}"
        )
    return data


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[list[str]]:
    # A config file as command-line options, in the file's order.
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "class_path" in value:
            yield [f"--{name}={value['class_path']}"]
            yield from _flatten(dict(value.get("init_args") or {}), f"{name}.")
        elif isinstance(value, dict) and key not in ("init_args", "dict_kwargs"):
            yield from _flatten(value, f"{name}.")
        else:
            yield [f"--{name}={json.dumps(value)}"]


def _parses(parser: Any, argv: list[str]) -> bool:
    try:
        parser.parse_args(argv)
    except (ArgumentError, TypeError, ValueError, KeyError, SystemExit):
        return False
    return True


#: Where a class-valued option's short names live (a full class path works too).
CLASS_MODULES = {
    "model": "lit_cnn.models.modules",
    "trainer.callbacks": "lightning.pytorch.callbacks",
    "trainer.logger": "lightning.pytorch.loggers",
    "optimizer": "torch.optim",
    "lr_scheduler": "torch.optim.lr_scheduler",
}

#: What lit_cnn's own options take, where their type hint says less.
EXPECTED = {
    "model.lr": "a finite number > 0",
    "model.l2": "a finite number >= 0",
    "data.k": "an integer >= 2",
    "data.batch_size": "an integer >= 1",
    "data.eval_batch_size": "an integer >= 1",
    "data.seed": "an integer from 0 to 2**32 - 1",
    "patience": "an integer >= 1",
}


def resolve_class(head: str, value: str) -> type | None:
    """The class that ``--head value`` names, or None."""
    import importlib

    module, _, name = value.rpartition(".")
    candidates = [(module, name)] if module else []
    if head in CLASS_MODULES:
        candidates.append((CLASS_MODULES[head], value))
    for mod, attr in candidates:
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError):
            continue
        if inspect.isclass(cls):
            return cls
    return None


def _params(cls: type) -> dict[str, inspect.Parameter]:
    return {
        k: p
        for k, p in inspect.signature(cls).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and k != "self"
    }


def _value_message(name: str, value: str, hint: Any, owner: str = "") -> str:
    key = name.replace(".init_args", "")
    expected = EXPECTED.get(key) or (describe(hint) if hint is not None else None)
    where = f" for {owner}" if owner else ""
    return f"--{key}: invalid value {value!r}{where}" + (
        f"; expected {expected}" if expected else ""
    )


def _class_unit_message(parser: Any, done: list[str], unit: list[list[str]]) -> str:
    # A class-valued option (`--trainer.callbacks EarlyStopping`) with its own arguments
    # (`--trainer.callbacks.monitor val/loss`) that failed to parse together.
    head, value = _split(unit[0])
    cls = resolve_class(head, value)
    if cls is None:
        return _message(parser, done, unit[0])
    params, given = _params(cls), {}
    for group in unit[1:]:
        name, _ = _split(group)
        param = name[len(head) + 1 :].removeprefix("init_args.")
        if param not in params:
            return (
                f"--{name}: {cls.__name__} has no argument {param!r}; it takes {', '.join(params)}"
            )
        given[param] = group
    linked = {"save_dir"} if head == "trainer.logger" else set()
    missing = [
        k
        for k, p in params.items()
        if p.default is p.empty
        and k not in given
        and k not in linked
        and k not in ("params", "optimizer")
    ]
    if missing:
        return f"--{head} {value}: {cls.__name__} needs --{head}.{missing[0]}"
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations
        hints = {}
    for param, group in given.items():
        others = [
            g for p, g in given.items() if p != param and params[p].default is params[p].empty
        ]
        if not _parses(parser, [*done, *unit[0], *(x for g in others for x in g), *group]):
            return _value_message(
                _split(group)[0], _split(group)[1], hints.get(param), cls.__name__
            )
    return _message(parser, done, unit[0])


def _message(parser: Any, before: list[str], group: list[str]) -> str:
    name, value = _split(group)
    action = parser._option_string_actions.get(f"--{name}")
    if action is not None:
        if name == "config":
            return f"--config {value}: not a configuration of this command"
        if name == "model":
            return f"--model: unknown model {value!r}; valid models: {', '.join(list_models())}"
        return _value_message(name, value, getattr(action, "_typehint", None) or action.type)
    for head in CLASS_MODULES:
        if name.startswith(head + "."):
            try:
                spec = parser.parse_args(before).get(head)
            except (ArgumentError, TypeError, ValueError, KeyError, SystemExit):
                spec = None
            spec = spec[-1] if isinstance(spec, list) and spec else spec
            if not isinstance(spec, Namespace) or not spec.get("class_path"):
                return f"--{name}: give --{head} CLASS before its arguments"
            return _class_unit_message(parser, before, [[f"--{head}={spec.class_path}"], group])
    return f"--{name}: unknown option (see --help)"


def diagnose(parser: Any, argv: Sequence[str]) -> str:
    """The one-line message for ``argv``, which ``parser`` refused.

    Args:
        parser: The jsonargparse parser that refused ``argv``.
        argv: The command line as parsed (after any arguments the command prepends).
    """
    return _diagnose(parser, option_groups(list(argv)), [])


def _units(groups: list[list[str]]) -> list[list[list[str]]]:
    # A class-valued option and the arguments of its class that follow it form one unit.
    units: list[list[list[str]]] = []
    for group in groups:
        name = _split(group)[0]
        head = units[-1][0] if units else None
        if (
            head is not None
            and name.startswith(_split(head)[0] + ".")
            and _split(head)[0] in CLASS_MODULES
        ):
            units[-1].append(group)
        else:
            units.append([group])
    return units


def _diagnose(parser: Any, groups: list[list[str]], done: list[str]) -> str:
    for unit in _units(groups):
        flat = [x for g in unit for x in g]
        name, value = _split(unit[0])
        if name == "config":
            data = check_config_file(value)
            if not _parses(parser, [*done, *flat]):
                inner = _diagnose(parser, list(_flatten(data)), list(done))
                return f"--config {value}: " + inner.lstrip("-")
        elif not _parses(parser, [*done, *flat]):
            if len(unit) > 1 or name in CLASS_MODULES:
                return _class_unit_message(parser, done, unit)
            return _message(parser, done, unit[0])
        done += flat
    return "invalid options (see --help)"


def add_options(parser: Any, options: Sequence[tuple[str, Any, Any, str]]) -> None:
    """Adds ``(name, type, default, help)`` options to ``parser``."""
    for name, hint, default, text in options:
        parser.add_argument(name, type=hint, default=default, help=text)


_SAVE_DIR = (
    "--trainer.logger.save_dir: lit_cnn writes each fold's logs to <run directory>/fold_<i>; "
    "choose the place with --trainer.default_root_dir and --run_name"
)


def refuse_logger_save_dir(argv: Sequence[str]) -> None:
    """Refuses a logger ``save_dir`` on the command line or in a ``--config`` file.

    It is linked to ``--trainer.default_root_dir`` (see ``add_shared_arguments``), and the
    link would replace a given value without a word.
    """
    for group in option_groups(list(argv)):
        name, value = _split(group)
        if name in ("trainer.logger.save_dir", "trainer.logger.init_args.save_dir"):
            raise UsageError(_SAVE_DIR)
        if name == "config" and Path(value).is_file():
            logger = (check_config_file(value).get("trainer") or {}).get("logger")
            specs = logger if isinstance(logger, list) else [logger]
            for spec in specs:
                if isinstance(spec, dict) and "save_dir" in (spec.get("init_args") or {}):
                    raise UsageError(f"--config {value}: " + _SAVE_DIR.removeprefix("--"))
