"""Settings declared once: what each one is, what it may be, and where it is given.

A method option (an algorithm's ``options``) is an :class:`Option`: its default, one line
of help, its type and the values it may take (``choices``, or an ``interval`` such as
``"(0, inf)"``). A run setting, a :class:`~fedbcs_fl.config.RunConfig` field, is a
:class:`Setting`, declared on the field with :func:`setting`; its type is the field's
annotation, and it also says where the setting is given. Everything else is derived from
these declarations: the ``fedbcs`` command-line options (``--kebab-name``), the Flower
run-config keys (``kebab-name``), the checks of a config file, and ``fedbcs compare``'s
per-run configs.

Example:
    >>> tau = Option(0.1, "InfoNCE temperature", interval=POSITIVE)
    >>> tau.check(tau.parse("0.5"))
    0.5
    >>> tau.check(-1)
    Traceback (most recent call last):
    ...
    ValueError: must be in (0, inf); got -1.0
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

POSITIVE = "(0, inf)"
NON_NEGATIVE = "[0, inf)"
AT_LEAST_ONE = "[1, inf)"

# The types a setting may have, as its values are written in a config file.
_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
    list: "a list of names",
}
_SETTING = "setting"  # the key of a RunConfig field's metadata that holds its Setting


@dataclass(frozen=True)
class Option:
    """One option: its default, what it is, and what values it may take.

    Args:
        default: its value where none is given; None means "decided elsewhere", as
            ``none_means`` says.
        help: what it is, one line (``fedbcs train --help``).
        none_means: what a default of None stands for, e.g. "the dataset's", "all".
        type: ``bool``, ``int``, ``float``, ``str`` or ``list`` (of names); default: the
            default's type (needed when the default is None).
        choices: the values it may take (a registry, e.g. a dict by name, is read when a
            value is checked, so it may grow); default: any of its type.
        interval: the numbers it may take, e.g. ``"[1, inf)"``; default: any (finite).

    A default that breaks its own rules is a ``ValueError`` where it is declared.
    """

    default: Any
    help: str
    none_means: str | None = None
    type: type | None = None
    choices: Collection[str] | None = None
    interval: str | None = None

    def __post_init__(self):
        if self.type is None:
            if self.default is None:
                raise TypeError(f"option {self.help!r} defaults to None: give its type")
            object.__setattr__(self, "type", type(self.default))
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"option {self.help!r} has type {self.type}; valid: {_TYPE_NAMES}")
        if not self.help.strip():
            raise ValueError("an option needs its help text")
        if (self.default is None) != (self.none_means is not None):
            raise ValueError(f"option {self.help!r}: none_means says what a default None means")
        if self.default is not None:
            self.check(self.default)

    def parse(self, text: str) -> Any:
        """``text`` (a command-line value) as this option's type; ``ValueError`` when it
        is not one. The rules are :meth:`check`'s."""
        if self.type is list:
            return [name.strip() for name in text.split(",") if name.strip()]
        if self.type is bool:
            raise ValueError(f"is a switch, not {text!r}")
        try:
            return self.type(text)
        except ValueError:
            pass
        if self.type is int:  # "1e9": a huge count reaches the check that says why not
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
        raise ValueError(f"must be {_TYPE_NAMES[self.type]}; got {text!r}")

    def check(self, value: Any) -> Any:
        """``value`` if this option may take it (an integer for a number becomes a float),
        else ``ValueError`` saying what it must be; the caller names the option."""
        if value is None and self.default is None:
            return None
        if not self._of_type(value):
            raise ValueError(f"must be {_TYPE_NAMES[self.type]}; got {value!r}")
        if self.type is float:
            value = float(value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}; got {value!r}")
        interval = self.interval or ("(-inf, inf)" if self.type in (int, float) else None)
        if interval is not None and not _inside(value, interval):
            raise ValueError(f"must be in {interval}; got {value}")
        return value

    def _of_type(self, value: Any) -> bool:
        if self.type is list:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        if isinstance(value, bool):
            return self.type is bool
        if self.type is float:
            return isinstance(value, int | float)
        return isinstance(value, self.type)

    def describe(self, default: str | None = None) -> str:
        """The help line: what it is, its default (or ``default``, a text) and the interval
        it lies in."""
        if default is None:
            default = self.none_means if self.default is None else self.default
            if self.type is bool:
                default = "on" if self.default else "off"
        rules = [f"default: {default}"]
        if self.interval is not None:
            rules.append(f"in {self.interval}")
        return f"{self.help} ({'; '.join(rules)})"


def _inside(value: float, interval: str) -> bool:
    """Whether ``value`` is finite and in ``interval``, e.g. ``"(0, inf)"``: NaN fails
    every comparison, so it is never inside."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below and math.isfinite(value)


@dataclass(frozen=True)
class Setting(Option):
    """A run setting (a :class:`~fedbcs_fl.config.RunConfig` field): an :class:`Option`
    and where it is given. Its type is its field's annotation (:func:`settings_of`).

    Args:
        cli: whether the run commands take it as ``--kebab-name`` (default True).
        per_run: whether it differs between the runs of one ``fedbcs compare`` (the method
            and the seed), which sets it itself (default False).
        flower: where a Flower run gives it: ``"key"`` (default), a key of its own in
            ``[tool.flwr.app.config]``; ``"extra"``, inside the ``extra-config`` JSON
            object; ``"node"``, in each SuperNode's node config (where its data is).
        flower_none: how a key of its own writes None, as TOML has no null (default
            ``""``; 0 where 0 is no valid value and the key is a number).
    """

    cli: bool = True
    per_run: bool = False
    flower: str = "key"
    flower_none: Any = ""

    def __post_init__(self):
        if self.flower not in ("key", "extra", "node"):
            raise ValueError(f"flower must be key, extra or node; got {self.flower!r}")
        if self.type is not None:  # else not read yet from its field (settings_of)
            super().__post_init__()


def setting(default: Any, help: str, **declaration: Any) -> Any:
    """A dataclass field whose default is ``default``, declared as the :class:`Setting`
    ``Setting(default, help, **declaration)``; :func:`settings_of` reads it back."""
    declared = Setting(default, help, **declaration)
    return dataclasses.field(default=default, metadata={_SETTING: declared})


def settings_of(cls: type) -> dict[str, Setting]:
    """The fields of dataclass ``cls`` declared with :func:`setting`, by name, in order,
    each of its field's type: ``float | None`` → float, ``list[str]`` → list."""
    hints = typing.get_type_hints(cls)
    declared = {}
    for field in dataclasses.fields(cls):
        if _SETTING in field.metadata:
            of_type = _value_type(hints[field.name])
            declared[field.name] = dataclasses.replace(field.metadata[_SETTING], type=of_type)
    return declared


def _value_type(hint: Any) -> type:
    """The type of the values an annotation allows besides None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def flag(name: str) -> str:
    """The command-line flag of a setting or option: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")
