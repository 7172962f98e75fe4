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
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import sys
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
    sections = {**TRAIN_SECTION_ALIASES, **getattr(cls, "SECTION_ALIASES", {})}
    return f"{sections[head]}.{rest}" if rest and head in sections else key


@functools.lru_cache(maxsize=None)
def _names(cls) -> dict[str, list[str]]:
    """Every name a leaf answers to (its dotted path, its leaf name, its aliases without dashes) -> paths. Built once
    per config class (read-only for callers)."""
    out: dict[str, list[str]] = {}
    for path, (f, _) in _leaves(cls).items():
        *parents, leaf = path.split(".")
        names = {path, leaf} | {a.lstrip("-") for a in f.metadata.get("aliases", ())}
        if parents:  # section.alias works too, e.g. trainer_args.lr
            names |= {f"{'.'.join(parents)}.{a.lstrip('-')}" for a in f.metadata.get("aliases", ())}
        for n in names:
            if path not in out.setdefault(n, []):
                out[n].append(path)
    return out


def resolve_key(cls, key: str) -> str | None:
    """The dotted path a YAML key / override / flag name means, or None when unknown or ambiguous."""
    paths = _names(cls).get(_canonical(cls, key), [])
    return paths[0] if len(paths) == 1 else None


def build(cls, values: dict[str, Any], problems: list[str] | None = None, source: str = "config"):
    """Make a `cls` from dotted-path values; append problems (unknown keys, bad types) to `problems`."""
    own = problems is None
    problems = [] if own else problems
    leaves = _leaves(cls)
    cfg = cls()
    ignored: list[str] = []
    for key, raw in values.items():
        key = _canonical(cls, key)
        path = resolve_key(cls, key)
        if path is None:
            reason = ignored_reason(cls, key)
            if reason is not None:
                ignored.append(f"{key} ({reason})")
            else:
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
    cfg.ignored = sorted(set(ignored))  # type: ignore[attr-defined]
    return cfg


def ignored_reason(cls, key: str) -> str | None:
    """Why a key the seeds' files carry is accepted but means nothing here (None: not such a key)."""
    table = dict(getattr(cls, "IGNORED_KEYS", {}))
    if any(f.name == "trainer_args" for f in dataclasses.fields(cls)):
        table.update({f"trainer_args.{k}": v for k, v in TRAIN_IGNORED.items()})
    key = _canonical(cls, key)
    if key in table:
        return table[key]
    leaf = [v for k, v in table.items() if k.rsplit(".", 1)[-1] == key]
    return leaf[0] if len(leaf) == 1 else None


def _validate(cfg, problems: list[str]):
    """Run `validate()` of the config and of every nested section; each returns a list of 'key: problem'."""
    if hasattr(cfg, "validate"):
        problems.extend(cfg.validate() or [])
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub) and not isinstance(sub, type):
            _validate(sub, problems)


class Captured(Exception):
    """Raised by `parse` while `capture()` is active: carries the parser it built (privlm.docs lists its flags)."""

    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


_CAPTURE = False


@contextlib.contextmanager
def capture():
    global _CAPTURE
    _CAPTURE = True
    try:
        yield
    finally:
        _CAPTURE = False


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + exits 2; we want one line through UserError
        raise UserError(message)


def parse(cls, argv: list[str] | None = None, description: str = "", extra_args=None):
    """Parse `argv` into a validated `cls`. `cfg.explicit` is the set of dotted paths the user set (in YAML, flags
    or overrides), so scripts can tell a default from a choice. With `extra_args(parser)` (options outside the
    config, e.g. --privacy_report) it returns (cfg, argparse namespace) instead of cfg."""
    leaves = _leaves(cls)
    parser = _Parser(description=description, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "--config_path", help="YAML file with any of the keys below (nested sections "
                        "allowed; seed 001's *_args sections too)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    if extra_args:
        extra_args(parser)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for path, (f, tp) in leaves.items():
        leaf = path.rsplit(".", 1)[-1]
        section = path.split(".")[0] if "." in path else ""
        if section and section not in groups:
            groups[section] = parser.add_argument_group(SECTION_TITLES.get(section, f"{section} ({section}.KEY in "
                                                                                  "YAML and overrides)"))
        target = groups.get(section, parser)
        names = [f"--{leaf}"] + [a for a in f.metadata.get("aliases", ())]
        kw = dict(dest=path, default=argparse.SUPPRESS, metavar=leaf.upper(), help=f"{f.metadata.get('help', '')} [{_type_name(tp)}, "
                  f"default: {_get(cls(), path)!r}]".replace("%", "%%"))
        inner = tp
        if get_origin(tp) in (Union, types.UnionType):
            inner = [a for a in get_args(tp) if a is not type(None)][0]
        if inner is bool:
            kw.update(nargs="?", const="true", metavar="BOOL")
        elif get_origin(inner) is list:
            kw.update(nargs="+")
        target.add_argument(*names, **kw)
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested sections)")
    if _CAPTURE:
        parser.config_class = cls
        raise Captured(parser)
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
    argv_list = list(argv if argv is not None else [])
    after_unknown = {argv_list[i + 1] for i, t in enumerate(argv_list[:-1]) if t in unknown and t.startswith("-")}
    for ov in overrides:
        if "=" not in ov and ov in after_unknown:
            continue  # the value of an unknown option, already reported
        if "=" not in ov:
            problems.append(f"{ov}: overrides must look like key=value")
            continue
        k, v = ov.split("=", 1)
        values[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    cfg = build(cls, values, problems, source="configuration")
    _validate(cfg, problems)  # values that failed to parse kept their (valid) defaults, so this is safe
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))
    cfg.explicit = {p for p in map(lambda k: resolve_key(cls, k), values) if p}  # type: ignore[attr-defined]
    if cfg.ignored and os.environ.get("RANK", "0") == "0":  # said once, by rank 0
        print("[privlm] accepted and ignored: " + "; ".join(cfg.ignored), file=sys.stderr)
    if extra_args:
        return cfg, args
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


# ---------------------------------------------------------------------------------------------- shared training args
TRAIN_SECTION_ALIASES = {"training": "trainer_args", "train_args": "trainer_args"}
# Hugging Face TrainingArguments keys the seeds' files carry that mean nothing in this loop: accepted, listed once.
TRAIN_IGNORED = {
    "save_total_limit": "only the newest checkpoint is kept",
    "save_strategy": "checkpoints follow save_steps and save_every_epochs",
    "callback_after_n_steps": "no periodic callbacks",
    "per_device_eval_batch_size": "evaluation batches are sized by the evaluator",
    "remove_unused_columns": "records are encoded by privlm.data",
    "bf16_full_eval": "evaluation runs in the training dtype",
    "do_train": "the script always trains", "do_eval": "each script has its own evaluation, not periodic",
    "evaluation_strategy": "no periodic evaluation", "eval_strategy": "no periodic evaluation",
    "eval_steps": "no periodic evaluation",
}
SECTION_TITLES = {"trainer_args": "training arguments (Hugging Face TrainingArguments names, then the seeds' aliases; "
                                  "`trainer_args:` in YAML, trainer_args.KEY=VALUE as overrides)"}
SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "warmup_decay"]  # warmup_decay: DeepSpeed's
# WarmupDecayLR as the HF Trainer fills it (OML, scalable fingerprinting): see privlm.training
REPORT_TO = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb"}  # backend -> package it needs


@dataclasses.dataclass
class TrainArgs:
    """The one training section every training entry point takes (finetune_multigpu.py, dp_finetune.py,
    `python -m mosaic train`). Names are Hugging Face TrainingArguments'; the seeds' names are aliases (one table,
    the `aliases` below), accepted as flags, YAML keys and overrides. Defaults differ per script (a 135M model
    fingerprinted for 10 epochs is not a 7B model tuned with DP), the meaning never does."""
    output_dir: str | None = field(None, hash=False, help="put the run here (default: a content-hashed directory "
                                                          "under results_dir)")
    results_dir: str = field("results", hash=False, aliases=("--result_path",),
                             help="root of the content-hashed run directories (scalable fingerprinting: --result_path)")
    overwrite_output_dir: bool = field(False, hash=False, aliases=("--overwrite",),
                                       help="train again even if the run is finished")
    num_train_epochs: float = field(3.0, aliases=("--num_epochs", "--epochs"),
                                    help="a fraction trains part of the last epoch")
    max_steps: int = field(-1, help="> 0: this many optimizer steps, overriding num_train_epochs")
    learning_rate: float = field(5e-5, aliases=("--lr",))
    lr_scheduler_type: str = field("linear", aliases=("--lr_scheduler",), choices=SCHEDULERS)
    warmup_steps: int = field(0)
    warmup_ratio: float = field(0.0, help="warm-up as a fraction of all steps (warmup_steps wins when > 0)")
    weight_decay: float = field(0.0, aliases=("--wd",))
    per_device_train_batch_size: int = field(8, aliases=("--batch_size", "--perdevice_bs"),
                                             help="micro-batch size per rank")
    gradient_accumulation_steps: int = field(1)
    total_train_batch_size: int | None = field(None, aliases=("--total_bs",),
                                               help="logical batch over all ranks: sets gradient_accumulation_steps "
                                                    "(with DP: the expected Poisson batch)")
    max_grad_norm: float = field(1.0, aliases=("--grad_clip",), help="ordinary gradient clipping, 0 disables "
                                                                     "(DP's per-example clip is privacy.max_grad_norm_dp)")
    seed: int = field(42)
    bf16: bool = field(False, help="train in bfloat16 (default: bf16 on GPU, fp32 on CPU, through dtype=auto)")
    fp16: bool = field(False, help="train in float16")
    gradient_checkpointing: bool = field(False, help="recompute activations in the backward pass (less memory)")
    deepspeed: str = field("2", aliases=("--deepspeed_stage", "--zero_stage"),
                           help="ZeRO stage 0-3, or the path of a DeepSpeed JSON config")
    offload: bool = field(False, aliases=("--deepspeed_offload",),
                          help="ZeRO CPU offload of the optimizer (and of parameters at stage 3)")
    logging_steps: int = field(10, hash=False, help="log loss and learning rate every N optimizer steps (0: per epoch)")
    save_steps: int = field(0, hash=False, aliases=("--save_every_steps",),
                            help="DeepSpeed checkpoint every N steps inside an epoch (0: epoch ends only)")
    save_every_epochs: int = field(1, hash=False, help="DeepSpeed checkpoint (for resume) every N epochs")
    keep_checkpoints: bool = field(False, hash=False, help="keep the last DeepSpeed checkpoint after success")
    report_to: str = field("none", hash=False, choices=list(REPORT_TO), help="metric logger besides log.txt")
    resume_from_checkpoint: str | None = field(None, hash=False,
                                               help="default: resume a killed run from its own last checkpoint; "
                                                    "false: start over; a path: resume from that checkpoint folder")

    def validate(self) -> list[str]:
        import importlib.util

        p = [f"trainer_args.{k}: must be >= 1" for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                          "save_every_epochs") if getattr(self, k) < 1]
        p += [f"trainer_args.{k}: must be >= 0" for k in ("warmup_steps", "logging_steps", "save_steps", "weight_decay",
                                                           "max_grad_norm") if getattr(self, k) < 0]
        if self.total_train_batch_size is not None and self.total_train_batch_size < 1:
            p.append("trainer_args.total_train_batch_size: must be >= 1")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            p.append("trainer_args.num_train_epochs: must be > 0 (or give max_steps)")
        if self.max_steps == 0 or self.max_steps < -1:
            p.append("trainer_args.max_steps: must be > 0, or -1 to train num_train_epochs")
        if not self.learning_rate > 0:
            p.append("trainer_args.learning_rate: must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            p.append("trainer_args.warmup_ratio: must be in [0, 1)")
        if self.bf16 and self.fp16:
            p.append("trainer_args.bf16/fp16: choose one")
        try:
            self.deepspeed_json()
        except UserError as e:
            p.append(f"trainer_args.deepspeed: {e}")
        pkg = REPORT_TO.get(self.report_to)
        if pkg and importlib.util.find_spec(pkg) is None:
            p.append(f"trainer_args.report_to: {self.report_to} is not installed (pip install {pkg})")
        return p

    def deepspeed_json(self) -> dict | None:
        """The user's DeepSpeed JSON (None when `deepspeed` is a stage number)."""
        if self.deepspeed.strip() in ("0", "1", "2", "3"):
            return None
        path = Path(self.deepspeed)
        if not path.is_file():
            raise UserError(f"expected a ZeRO stage (--deepspeed_stage 0-3) or a DeepSpeed JSON file, got "
                            f"{self.deepspeed!r}")
        try:
            ds = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid JSON ({e})") from None
        stage = ds.get("zero_optimization", {}).get("stage", 0) if isinstance(ds, dict) else None
        if stage not in (0, 1, 2, 3):
            raise UserError(f"{path}: zero_optimization.stage must be 0-3, got {stage!r}")
        return ds

    @property
    def zero_stage(self) -> int:
        ds = self.deepspeed_json()
        return int(self.deepspeed) if ds is None else int(ds.get("zero_optimization", {}).get("stage", 0))

    def precision(self, dtype: str = "auto") -> str:
        """bf16 / fp16 flags (or the DeepSpeed JSON's bf16 / fp16 `enabled: true`) win over the script's dtype."""
        ds = self.deepspeed_json() or {}
        if self.bf16 or ds.get("bf16", {}).get("enabled") is True:
            return "bfloat16"
        if self.fp16 or ds.get("fp16", {}).get("enabled") is True:
            return "float16"
        return dtype


def train_args(**defaults):
    """A `trainer_args` section with this script's defaults, e.g. `trainer_args: TrainArgs = train_args(lr=...)`."""
    return dataclasses.field(default_factory=lambda: TrainArgs(**defaults),
                             metadata={"help": "", "aliases": (), "choices": None, "hash": True})
