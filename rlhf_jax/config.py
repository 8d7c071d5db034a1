"""Typed, frozen configs and `--set key=value` overrides.

Experiments build their config from frozen dataclasses (the config classes live next to the code
they configure: `ModelConfig` in models/, `TrainConfig` in loop.py, ...). This module knows how to
override any nested field from the command line, how to save a resolved config and how to read one
back. Unknown keys and values of the wrong type are errors that name the key and suggest the
nearest valid one, so nothing starts on a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

from rlhf_jax import files
from rlhf_jax.errors import UserError

C = TypeVar("C")


class ConfigError(UserError):
  """A config key or value that is not valid; the message names the key."""


# Each rule's failing test, written as the configs always wrote it: a NaN fails "> 0" but passes
# the others, so moving a check here changes no config that was accepted or refused before.
_RANGE_FAILS = {
    "> 0": lambda value: not value > 0,
    "positive": lambda value: value <= 0,
    ">= 0": lambda value: value < 0,
    ">= 1": lambda value: value < 1,
}


def check_range(config: Any, section: str, rule: str, *names: str,
                error: type[ValueError] = ValueError) -> None:
  """Raises `error("<section>.<name> must be <rule>, got <value>")` for the first of `names` whose
  value on `config` breaks `rule` ("> 0", "positive", ">= 0" or ">= 1").

  The one wording of a range check, so every config's `__post_init__` names the key the same way
  `--set` spells it.
  """
  fails = _RANGE_FAILS[rule]
  for name in names:
    value = getattr(config, name)
    if fails(value):
      raise error(f"{section}.{name} must be {rule}, got {value}")


def flat_keys(config: Any, prefix: str = "") -> list[str]:
  """All dotted keys of a nested dataclass config, leaves only."""
  keys = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    key = f"{prefix}{field.name}"
    if dataclasses.is_dataclass(value):
      keys.extend(flat_keys(value, key + "."))
    else:
      keys.append(key)
  return keys


def _nearest(key: str, candidates: Sequence[str]) -> str:
  close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
  return f"; did you mean {close[0]!r}?" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _parse(key: str, text: str, annotation: Any) -> Any:
  """Parses `text` as a value of type `annotation`, or raises a ConfigError naming `key`."""
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType):
    if type(None) in args and text.lower() in ("none", "null"):
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _parse(key, text, arg)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"{key}: cannot read {text!r} as {annotation}")
  if origin is typing.Literal:
    if text not in args:
      raise ConfigError(f"{key}: expected one of {list(args)}, got {text!r}{_nearest(text, [str(a) for a in args])}")
    return text
  if origin in (tuple, list):
    items = [t.strip() for t in text.strip("()[]").split(",") if t.strip()]
    item_type = args[0] if args else str
    return tuple(_parse(key, t, item_type) for t in items)
  if annotation is bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise ConfigError(f"{key}: expected a bool (true/false), got {text!r}")
  if annotation is int:
    try:
      return int(text.replace("_", ""))
    except ValueError:
      raise ConfigError(f"{key}: expected an int, got {text!r}") from None
  if annotation is float:
    try:
      value = float(text)
    except ValueError:
      raise ConfigError(f"{key}: expected a float, got {text!r}") from None
    if math.isnan(value):  # inf can mean something (a noiseless labeler's beta); NaN never does
      raise ConfigError(f"{key}: expected a number, got {text!r}")
    return value
  if annotation is str:
    return text
  raise ConfigError(f"{key}: fields of type {annotation} cannot be set from the command line")


def _set(config: Any, path: list[str], text: str, full_key: str, all_keys: list[str]) -> Any:
  names = {f.name for f in dataclasses.fields(config)}
  head = path[0]
  if head not in names:
    raise ConfigError(f"unknown config key {full_key!r}{_nearest(full_key, all_keys)}")
  current = getattr(config, head)
  if len(path) == 1:
    if dataclasses.is_dataclass(current):
      raise ConfigError(f"{full_key!r} is a group of settings, not a value; set one of its fields, "
                        f"e.g. {flat_keys(current, full_key + '.')[0]!r}")
    value = _parse(full_key, text, _field_types(type(config))[head])
  else:
    if not dataclasses.is_dataclass(current):
      raise ConfigError(f"unknown config key {full_key!r}{_nearest(full_key, all_keys)}")
    value = _set(current, path[1:], text, full_key, all_keys)
  return dataclasses.replace(config, **{head: value})


def apply_overrides(config: C, assignments: Sequence[str]) -> C:
  """Returns `config` with each `key=value` of `assignments` applied (dotted keys for nesting).

  All assignments are checked before the config is returned, so a typo stops the run before
  anything starts. Validation in the dataclasses' `__post_init__` runs again on replace.
  """
  all_keys = flat_keys(config)
  for assignment in assignments:
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(f"override {assignment!r} is not of the form key=value")
    try:
      config = _set(config, key.split("."), text.strip(), key, all_keys)
    except ConfigError:
      raise
    except ValueError as e:  # a dataclass's own validation (`__post_init__`) refused the value
      raise ConfigError(f"{key}={text.strip()}: {e}") from None
  return config


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"optim": {"learning_rate": 1e-3}} -> {"optim.learning_rate": 1e-3}; lists become tuples."""
  flat = {}
  for key, value in data.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return flat


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """`key: old -> new` for every dotted key whose value differs between two `to_dict` outputs."""
  a, b = flatten(old), flatten(new)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _text(value: Any) -> str:
  """`value` as `apply_overrides` reads it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if value is None:
    return "none"
  if isinstance(value, (tuple, list)):
    return ",".join(_text(v) for v in value)
  return repr(value) if isinstance(value, float) else str(value)


def overrides(base: Any, config: Any) -> list[str]:
  """The `key=value` overrides that turn the config `base` into `config` (same class): what a
  command line would say to run `config`, e.g. when a composition edits a stage's config in Python."""
  a, b = flatten(to_dict(base)), flatten(to_dict(config))
  return [f"{k}={_text(b[k])}" for k in sorted(b) if a.get(k) != b[k]]


def to_dict(config: Any) -> dict[str, Any]:
  return dataclasses.asdict(config)


def save(config: Any, path: str | Path) -> None:
  """Writes the resolved config as JSON (atomically: a crash never leaves half a file)."""
  files.atomic_write_text(path, json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
  """Rebuilds a nested config dataclass from `to_dict` output; unknown keys are an error."""
  hints = _field_types(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(data) - names
  if unknown:
    key = sorted(unknown)[0]
    raise ConfigError(f"unknown config key {key!r} for {cls.__name__}{_nearest(key, sorted(names))}")
  kwargs = {}
  for name, value in data.items():
    annotation = hints[name]
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
      value = from_dict(annotation, value)
    elif typing.get_origin(annotation) is tuple and isinstance(value, list):
      value = tuple(value)
    kwargs[name] = value
  return cls(**kwargs)
