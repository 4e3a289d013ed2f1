"""How a config section declares its keys, and the generic checks and TOML text behind them.

Each key is a dataclass field. Its type is the annotation (checked while loading: an int
is refused where a bool is expected, and so on); its range, unit, pattern and the words
of the "expected ..." message are declared once, next to the field, with :func:`key`::

    repeats: int = key(20, low=2, high=100_000, expected="an integer in [2, 100000] (split halves need two)")

:func:`section_problems` checks every declared rule of a section, then the section's own
``check()`` (rules *between* fields only). A section whose runtime twin holds the rules
(``[perturb]`` -> ``stimuli.params.PerturbParams``, ``[sim]`` -> ``sim.params.SimParams``)
delegates to it from ``check()``. Every text key refuses control characters unless
declared ``multiline``. Errors are :class:`ConfigError` naming ``section.key``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration problem; the message names the key path, the value and the fix."""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


@dataclass(frozen=True)
class Rule:
    """What one key's value must be (besides its type). ``low``/``high``: inclusive bounds
    (``*_open``: exclusive) on a number or on each element of a list; ``choices``: allowed
    values; ``pattern``: a regular expression every text (or list element) must match in
    full; ``test``: any other predicate on the value; ``nonempty``: a list needs an element;
    ``multiline``: text may hold control characters; ``unit``: the value's unit (documentation)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    pattern: str = ""
    test: Callable[[Any], bool] | None = None
    nonempty: bool = False
    multiline: bool = False
    unit: str = ""
    expected: str = ""

    def wording(self) -> str:
        """The "expected ..." words of the error message."""
        if self.expected:
            return self.expected
        if self.choices:
            return f"one of {list(self.choices)}"
        unit = f" ({self.unit})" if self.unit else ""
        low, high = self.low, self.high
        if low is not None and high is not None:
            return (f"a value in {'(' if self.low_open else '['}{_num(low)}, "
                    f"{_num(high)}{')' if self.high_open else ']'}{unit}")
        if low is not None:
            return f"a value {'>' if self.low_open else '>='} {_num(low)}{unit}"
        if high is not None:
            return f"a value {'<' if self.high_open else '<='} {_num(high)}{unit}"
        return "a valid value"

    def _element_ok(self, v: Any) -> bool:
        if isinstance(v, str):
            if not self.multiline and any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
                return False
            return not self.pattern or re.fullmatch(self.pattern, v) is not None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if self.low is not None and not (v > self.low if self.low_open else v >= self.low):
                return False
            if self.high is not None and not (v < self.high if self.high_open else v <= self.high):
                return False
        return True

    def allows(self, value: Any) -> bool:
        if self.nonempty and isinstance(value, list) and not value:
            return False
        if self.choices and value not in self.choices:
            return False
        if self.test is not None and not self.test(value):
            return False
        return all(self._element_ok(v) for v in (value if isinstance(value, list) else [value]))


def key(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, **rule: Any) -> Any:
    """A config key: a dataclass field with its :class:`Rule` (keywords) declared beside it."""
    meta = {"rule": Rule(**rule)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


CONTROL_FREE = Rule(expected="text without control characters (newlines, tabs)")


def section_problems(obj: Any) -> list[tuple[str, Any, str]]:
    """Every broken rule of config section ``obj`` as (key, value, expected): the rules
    declared with its fields (text keys: no control characters unless declared otherwise),
    then its own ``check()`` (rules between fields, or its runtime twin's rules)."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        rule = f.metadata.get("rule")
        if rule is None and (isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], str))):
            rule = CONTROL_FREE
        if rule is not None and not rule.allows(value):
            out.append((f.name, value, rule.wording()))
    check = getattr(obj, "check", None)
    return out + (list(check()) if callable(check) else [])


# --------------------------------------------------------------------------- types
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"a list of {_type_name(arg)}s"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against type ``tp``; return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{path}' = {value!r}: expected {_type_name(tp)}")
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        return [coerce(f"{path}[{i}]", v, arg) for i, v in enumerate(value)]
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"config key '{path}' = {value!r}: expected a finite number (not nan or inf)")
        return float(value)
    raise TypeError(f"unsupported config type {tp}")  # programming error, not user error


def build_section(name: str, cls: type, table: Any) -> Any:
    """Section ``cls`` from the TOML table ``table`` of section ``name``, every rule checked."""
    if not isinstance(table, dict):
        raise ConfigError(f"config key '{name}' = {table!r}: expected a table ([{name}])")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    obj = cls()
    for k, value in table.items():
        if k not in known:
            raise ConfigError(f"config key '{name}.{k}' is unknown; the keys of [{name}] are: {', '.join(sorted(known))}")
        setattr(obj, k, coerce(f"{name}.{k}", value, hints[k]))
    for k, value, expected in section_problems(obj):
        raise ConfigError(f"config key '{name}.{k}' = {value!r}: expected {expected}")
    return obj


# --------------------------------------------------------------------------- TOML text
def parse_toml(text: str, origin: str = "<string>") -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}. Fix the syntax at that line.") from None
    except RecursionError:
        raise ConfigError(f"{origin} nests tables or arrays too deeply to read; an itloop config has "
                          "[section] tables of keys and flat lists") from None


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s keys replaced, table by table."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):  # a TOML basic string: JSON's escapes are TOML's (control characters included)
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dumps_toml(d: dict) -> str:
    """Write a two-level dict (sections of scalars and lists) as TOML."""
    lines = []
    for section, table in d.items():
        lines.append(f"[{section}]")
        for k, v in table.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)
