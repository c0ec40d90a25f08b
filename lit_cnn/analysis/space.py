"""Search spaces for tune.py: YAML files whose keys are kfold.py's dotted option names.

    model.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    data.batch_size: {type: categorical, choices: [64, 128, 256]}

Each entry becomes an Optuna distribution; a trial's values become kfold.py options
(``--model.lr 0.00316``), so any option kfold.py takes can be searched, and every value is
checked by kfold.py's own parser before a study starts (see ``lit_cnn.cli.tune``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lit_cnn.errors import UsageError

#: Fields each type takes (``type`` itself aside), required ones first.
FIELDS = {
    "float": (("low", "high"), ("log", "step")),
    "int": (("low", "high"), ("log", "step")),
    "categorical": (("choices",), ()),
}

#: Searched when no ``--space`` is given: the notebook tuned lr and L2 by hand.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "model.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "model.l2": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "model.optimizer": {"type": "categorical", "choices": ["adam", "sgdm"]},
    "data.batch_size": {"type": "categorical", "choices": [64, 128, 256]},
}

#: The default when ``--optimizer CLASS`` is given: that optimizer's own arguments (the
#: architecture's lr / l2 / optimizer shorthand cannot be combined with it).
OPTIMIZER_SPACE: dict[str, dict[str, Any]] = {
    "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "optimizer.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "data.batch_size": {"type": "categorical", "choices": [64, 128, 256]},
}

#: Options a space may not set: tune.py names trials, models and runs itself.
RESERVED = ("model", "run_name", "resume", "config", "fold_parallel", "data.path", "data.seed")


@dataclass(frozen=True)
class Param:
    """One searched option.

    Args:
        name: kfold.py's dotted option name, without the leading ``--``.
        type: ``float``, ``int`` or ``categorical``.
        low: Lower bound (numbers).
        high: Upper bound, included (numbers).
        log: Sample on a log scale (numbers).
        step: Sample on a grid of this step from ``low`` (numbers).
        choices: The values (categorical).
    """

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def spec(self) -> dict[str, Any]:
        """The entry as a space file writes it.

        >>> Param("model.lr", "float", 1e-4, 1e-2, log=True).spec()
        {'type': 'float', 'low': 0.0001, 'high': 0.01, 'log': True}
        """
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        out = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        return out if self.step is None else {**out, "step": self.step}

    def suggest(self, trial: Any) -> Any:  # trial: optuna.Trial
        """This parameter's value in ``trial``, drawn by the study's sampler."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def extremes(self) -> list[Any]:
        """Values whose acceptance by kfold.py's parser vouches for the whole range."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


def _number(where: str, key: str, field: str, value: Any, integer: bool) -> float:
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise UsageError(f"{where}: {key}: {field} must be {kind}, got {value!r}")
    return value


def parse_entry(where: str, key: Any, spec: Any) -> Param:
    """Checks one entry of a space and returns it as a :class:`Param`.

    Args:
        where: The file's name, for messages.
        key: The entry's key.
        spec: The entry's value.

    Raises:
        UsageError: A bad key, type, field or bound, in one line naming ``where`` and ``key``.
    """
    if not isinstance(key, str) or not key or key.startswith("-"):
        raise UsageError(f"{where}: key {key!r}: expected a kfold.py option name like model.lr")
    if key in RESERVED:
        raise UsageError(
            f"{where}: {key}: tune.py sets it itself and it cannot be searched"
            + ("; list the architectures in --models" if key == "model" else "")
        )
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise UsageError(
            f"{where}: {key}: expected a mapping with a type (float, int, categorical)"
        )
    kind = spec["type"]
    if kind not in FIELDS:
        raise UsageError(f"{where}: {key}: unknown type {kind!r}; valid types: {', '.join(FIELDS)}")
    required, optional = FIELDS[kind]
    unknown = sorted(set(spec) - {"type", *required, *optional}, key=str)
    if unknown:
        raise UsageError(
            f"{where}: {key}: unknown field {unknown[0]!r} for type {kind}; valid fields: "
            f"{', '.join((*required, *optional))}"
        )
    missing = [f for f in required if f not in spec]
    if missing:
        raise UsageError(f"{where}: {key}: type {kind} needs {missing[0]}")
    if kind == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: {key}: choices must be a non-empty list")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise UsageError(
                    f"{where}: {key}: choice {choice!r} is not a number, string, bool or null"
                )
        if len({repr(c) for c in choices}) != len(choices):
            raise UsageError(f"{where}: {key}: a choice is listed twice")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    low = _number(where, key, "low", spec["low"], integer)
    high = _number(where, key, "high", spec["high"], integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"{where}: {key}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(where, key, "step", step, integer)
        if step <= 0:
            raise UsageError(f"{where}: {key}: step must be > 0, got {step}")
        if log:
            raise UsageError(f"{where}: {key}: step and log cannot be combined")
    if not low < high:
        raise UsageError(f"{where}: {key}: low must be below high, got low {low}, high {high}")
    if log and low <= 0:
        raise UsageError(f"{where}: {key}: a log scale needs low > 0, got {low}")
    return Param(key, kind, low, high, log, step)


def load_space(path: str | Path | None, optimizer: bool = False) -> list[Param]:
    """The search space in ``path``; without one, the default space.

    Args:
        path: A space file, or None.
        optimizer: ``--optimizer CLASS`` was given: the default is :data:`OPTIMIZER_SPACE`,
            else :data:`DEFAULT_SPACE`.

    Raises:
        UsageError: An unreadable file, bad YAML, or a bad entry (see :func:`parse_entry`).
    """
    if path is None:
        default = OPTIMIZER_SPACE if optimizer else DEFAULT_SPACE
        return [parse_entry("the default space", k, v) for k, v in default.items()]
    where = f"--space {path}"
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UsageError(f"{where}: cannot be read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"{where}: not valid YAML ({first})") from None
    if not isinstance(data, Mapping) or not data:
        raise UsageError(f"{where}: expected a mapping of option names to their ranges")
    return [parse_entry(where, k, v) for k, v in data.items()]


def as_options(values: Mapping[str, Any]) -> list[str]:
    """kfold.py options setting ``values``: ``{"model.lr": 0.01}`` -> ``--model.lr 0.01``.

    >>> as_options({"model.lr": 0.01, "model.optimizer": "adam", "trainer.logger": False})
    ['--model.lr', '0.01', '--model.optimizer', 'adam', '--trainer.logger', 'false']
    """
    argv: list[str] = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        argv += [f"--{key}", text.removesuffix("\n...").strip()]
    return argv
