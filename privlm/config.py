"""Typed configs: dataclass defaults < `--config file.yml` < command-line flags < `key=value` overrides.

Every entry script declares one dataclass (nested dataclasses allowed, addressed as `section.key`). Flags keep
the seeds' names (the leaf field name, plus aliases in field metadata). All problems (unknown keys in the YAML,
unknown flags, values of the wrong type, failed checks in the dataclass's `validate()`) are collected and
raised as one UserError that names each key.

Field metadata understood here:
    help     text for --help
    aliases  extra flag names, e.g. ("--num_backdoors",)
    choices  allowed values
    hash     False to leave the field out of the run hash (output paths, verbosity, ...)
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .errors import UserError

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def field(default=dataclasses.MISSING, *, help: str = "", aliases: tuple = (), choices=None, hash: bool = True,
          default_factory=dataclasses.MISSING):
    meta = {"help": help, "aliases": tuple(aliases), "choices": choices, "hash": hash}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------- introspection
def _leaves(cls, prefix: str = "") -> dict[str, tuple[dataclasses.Field, Any]]:
    """Dotted path -> (field, resolved type) for every non-dataclass field, recursing into nested dataclasses."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = prefix + f.name
        if dataclasses.is_dataclass(tp):
            out.update(_leaves(tp, path + "."))
        else:
            out[path] = (f, tp)
    return out


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        return "list of " + _type_name(get_args(tp)[0])
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp) -> Any:
    """Convert a YAML / command-line value to `tp`; raise ValueError with a short reason."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in get_args(tp):
                return None
        errors = []
        for a in args:
            try:
                return coerce(value, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            try:
                if coerce(value, type(a)) == a:
                    return a
            except ValueError:
                pass
        raise ValueError(f"expected one of {', '.join(map(str, allowed))}, got {value!r}")
    if origin is list:
        (inner,) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return [coerce(v, inner) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r}")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = prefix + str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set(obj, path: str, value):
    *parents, leaf = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, leaf, value)


def _get(obj, path: str):
    for p in path.split("."):
        obj = getattr(obj, p)
    return obj


# ---------------------------------------------------------------------------------------------- loading
def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def _canonical(cls, key: str) -> str:
    """Map a section alias (e.g. the seed's `privacy_args.x`) to the config's own section name."""
    head, _, rest = key.partition(".")
    sections = getattr(cls, "SECTION_ALIASES", {})
    return f"{sections[head]}.{rest}" if rest and head in sections else key


def build(cls, values: dict[str, Any], problems: list[str] | None = None, source: str = "config"):
    """Make a `cls` from dotted-path values; append problems (unknown keys, bad types) to `problems`."""
    own = problems is None
    problems = [] if own else problems
    leaves = _leaves(cls)
    by_leaf = {}
    for path in leaves:
        by_leaf.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    cfg = cls()
    for key, raw in values.items():
        key = _canonical(cls, key)
        path = key if key in leaves else (by_leaf.get(key, [None])[0] if len(by_leaf.get(key, [])) == 1 else None)
        if path is None:
            problems.append(f"{key}: unknown key in {source}")
            continue
        f, tp = leaves[path]
        try:
            val = coerce(raw, tp)
            if f.metadata.get("choices") and val is not None and val not in f.metadata["choices"]:
                raise ValueError(f"expected one of {', '.join(map(str, f.metadata['choices']))}, got {raw!r}")
            _set(cfg, path, val)
        except ValueError as e:
            problems.append(f"{path}: {e}")
    if own and problems:
        raise UserError("invalid configuration: " + "; ".join(problems))
    return cfg


def _validate(cfg, problems: list[str]):
    """Run `validate()` of the config and of every nested section; each returns a list of 'key: problem'."""
    if hasattr(cfg, "validate"):
        problems.extend(cfg.validate() or [])
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub) and not isinstance(sub, type):
            _validate(sub, problems)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + exits 2; we want one line through UserError
        raise UserError(message)


def parse(cls, argv: list[str] | None = None, description: str = "", extra_args=None):
    """Parse `argv` into a validated `cls`. Returns (cfg, explicit) where explicit is the set of dotted paths the
    user set (in YAML, flags or overrides), so scripts can tell a default from a choice."""
    leaves = _leaves(cls)
    parser = _Parser(description=description, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any of the keys below (nested sections allowed)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    if extra_args:
        extra_args(parser)
    for path, (f, tp) in leaves.items():
        leaf = path.rsplit(".", 1)[-1]
        names = [f"--{leaf}"] + [a for a in f.metadata.get("aliases", ())]
        kw = dict(dest=path, default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} [{_type_name(tp)}, "
                  f"default: {_get(cls(), path)!r}]".replace("%", "%%"))
        inner = tp
        if get_origin(tp) in (Union, types.UnionType):
            inner = [a for a in get_args(tp) if a is not type(None)][0]
        if inner is bool:
            kw.update(nargs="?", const="true", metavar="BOOL")
        elif get_origin(inner) is list:
            kw.update(nargs="+")
        parser.add_argument(*names, **kw)
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested sections)")
    args, unknown = parser.parse_known_args(argv)

    problems: list[str] = []
    values: dict[str, Any] = {}
    if args.config:
        values.update(_flatten(load_yaml(args.config)))
    overrides = list(getattr(args, "overrides", []) or [])
    for tok in unknown:
        if not tok.startswith("-") and "=" in tok:
            overrides.append(tok)
        else:
            problems.append(f"{tok}: unknown option")
    for path in leaves:
        if hasattr(args, path):
            values[path] = getattr(args, path)
    for ov in overrides:
        if "=" not in ov:
            problems.append(f"{ov}: overrides must look like key=value")
            continue
        k, v = ov.split("=", 1)
        values[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    cfg = build(cls, values, problems, source="configuration")
    _validate(cfg, problems)  # values that failed to parse kept their (valid) defaults, so this is safe
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))
    explicit = set()
    for key in map(lambda k: _canonical(cls, k), values):
        if key in leaves:
            explicit.add(key)
        else:
            explicit.update(p for p in leaves if p.rsplit(".", 1)[-1] == key)
    cfg._explicit = explicit  # type: ignore[attr-defined]
    cfg._extra = args  # type: ignore[attr-defined]
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def hashed_dict(cfg) -> dict:
    """The config with fields marked hash=False removed (output locations, logging)."""
    out = {}
    for path, (f, _) in _leaves(type(cfg)).items():
        if f.metadata.get("hash", True):
            out[path] = _get(cfg, path)
    return out


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def run_hash(cfg, inputs: dict[str, str] | None = None, length: int = 16) -> str:
    """Hash of the config (hash=True fields) and the *content* digests of its input files."""
    payload = {"config": hashed_dict(cfg), "inputs": inputs or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]
