"""Reading configs: YAML recipes with ``base:``, ``key.sub=value`` overrides, the strict
dataclass loader, and the plain dict a config is saved as.

Recipes compose (big_vision style). A YAML recipe may name another as ``base: path`` (relative
to the recipe's own file; the base may have a base of its own). The recipe is read on top of
its base:

- mappings merge key by key, recursively (``train: {seed: 1}`` changes only the seed);
- any other value, lists included, replaces the base's value: a recipe's ``stages`` list
  replaces the base's stages whole, and so do ``data.scale`` and the like;
- ``key+: [...]`` appends to the base's list instead (``stages+: [{name: finetune-336, ...}]``
  runs the base's stages, then the new one); the base must have that list, and ``key`` and
  ``key+`` cannot both appear in one mapping.

Command-line overrides (``key.sub=value``) apply after the bases; ``stage.X=...`` sets X in
every stage. Then the result is loaded strictly and checked (:func:`.validate.validate`).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .schema import ConfigError, RunConfig
from .validate import validate



def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if isinstance(value, bool) and "on" in args:  # YAML 1.1 reads on/off (and yes/no) as booleans
            value = "on" if value else "off"
        if isinstance(value, str) and value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(args)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        # items are named as overrides name them: stages.0.lr
        out = [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys, wrong types and choices outside a
    ``Literal`` raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-safe dict of a config dataclass."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


# ----------------------------------------------------------------------------- composing recipes


def merge(base: dict, child: dict, where: str = "") -> dict:
    """``child`` read on top of ``base``: mappings merge recursively, other values (lists
    included) replace, and ``key+: [...]`` appends to the base's list ``key``."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(key, str) and key.endswith("+"):
            name = key[:-1]
            if name in child:
                raise ConfigError(f"{where}{name}: give '{name}' or '{key}', not both")
            if not isinstance(base.get(name), list) or not isinstance(value, list):
                raise ConfigError(f"{where}{key}: appends a list to the base's list '{name}', "
                                  f"which the base does not have")
            out[name] = base[name] + value
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What a YAML parser error says, on one line, with the line and column it names."""
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The mapping a YAML recipe describes, its ``base:`` chain merged under it."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to this file")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = loaded.pop("base", None)
    if base is None:
        return merge({}, loaded)
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a path relative to this file, got {base!r}")
    return merge(_read_recipe(path.parent / base, seen + (path.resolve(),)), loaded)


def _set_path(tree: dict, path: str, value: Any, key: str | None = None) -> None:
    """Set ``a.b.c`` (or ``stages.1.lr``) in a nested dict/list tree, creating mappings. A
    list index out of range, or a key below a plain value, is a ConfigError naming the
    override's ``key`` (``path`` unless given)."""
    parts = path.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not 0 <= int(part) < len(node):
                raise ConfigError(f"{key or path}: {where} names no item: {'.'.join(parts[:i]) or 'the list'} "
                                  f"has {len(node)} (numbered from 0)")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{key or path}: {'.'.join(parts[:i])} is a single value, it has no '{part}'")
        if i == len(parts) - 1:
            break
        if isinstance(node, dict) and (part not in node or node[part] is None):
            # a list key like "stages" must already exist; anything else becomes a mapping
            node[part] = {}
        node = node[part]
    node[part] = value
    # lr and lr_per_256 say the same thing: the one given last wins
    other = _LR_PAIR.get(parts[-1])
    if other is not None and isinstance(node, dict):
        node.pop(other, None)


_LR_PAIR = {"lr": "lr_per_256", "lr_per_256": "lr"}


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (so 3, 1e-3, true, [1,2])."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(e)}") from None
        if key.startswith("stage."):  # shorthand: applies to every stage
            for stage in tree.setdefault("stages", [{}]):
                _set_path(stage, key[len("stage."):], value, key)
        else:
            _set_path(tree, key, value)
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from a YAML recipe and its bases (or the built-in default when
    ``path`` is None), apply ``overrides``, then check it."""
    return config_from_tree(_read_recipe(Path(path)) if path is not None else {}, overrides)


def config_from_tree(tree: dict, overrides: list[str] | None = None) -> RunConfig:
    """A run config from a mapping (a recipe's, or a saved run's ``to_dict``) and ``overrides``."""
    tree = copy.deepcopy(tree)
    if overrides:
        if "stages" not in tree:  # `stage.X=...` and `stages.0.X=...` edit the default stages
            tree["stages"] = to_dict(RunConfig())["stages"]
        apply_overrides(tree, overrides)
    cfg = from_dict(RunConfig, tree)
    validate(cfg)
    return cfg
