"""Shared fixtures: a tiny random Llama (2 layers, width 64) with a byte-level BPE tokenizer, built offline."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from privlm.testing import build_model, build_tokenizer  # noqa: E402  (shared with the benchmarks)

# pytest-xdist workers share the machine's cores: each worker (and what it launches) gets its share, or two workers'
# torch thread pools oversubscribe the cores and everything slows down several times over
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", THREADS)
    import torch  # noqa: E402

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_llama")
    tok = build_tokenizer()
    model = build_model(len(tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from privlm import models

    return models.load_model(str(tiny_model_dir)).eval(), models.load_tokenizer(str(tiny_model_dir))


def write_fingerprints(path: Path, n: int, seed: int = 0, key_words: int = 4, resp_words: int = 2) -> Path:
    words = (ROOT / "privlm" / "resources" / "words.txt").read_text().split()
    rng = random.Random(seed)
    fps = [{"key": " ".join(rng.choice(words) for _ in range(key_words)) + f" {i}",
            "response": " ".join(rng.choice(words) for _ in range(resp_words))} for i in range(n)]
    path.write_text(json.dumps(fps))
    return path


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def config_class(module):
    """The one *Config class an entry module parses: its own, else the one it imports from its pipeline module."""
    classes = [v for k, v in vars(module).items() if k.endswith("Config") and isinstance(v, type)]
    own = [v for v in classes if v.__module__ == module.__name__]
    classes = own or classes
    assert len(classes) == 1, f"{module.__name__}: expected one *Config class, found {classes}"
    return classes[0]


def child_env(**extra) -> dict:
    """The environment for a script launched by a test: without the rendezvous variables that an in-process
    test's init_distributed() put into this process (a child would reuse this process's port)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return {**env, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", **extra}


def run_script(script: str, *args: str, launcher: str = "python", ranks: int = 2, timeout: int = 600,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run an entry script as a user would: plain python, or `deepspeed --num_gpus N` (CPU ranks here)."""
    env = child_env()
    bindir = Path(sys.executable).parent
    if launcher == "deepspeed":
        cmd = [str(bindir / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(_free_port()),
               str(ROOT / script), *args]
    else:
        cmd = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str):
    """A user mistake: non-zero exit, exactly one `error:` line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def kill_after_first_checkpoint(script: str, args: list[str], results: Path, pattern: str, timeout: int = 300):
    """Start `script` in one process and SIGKILL it as soon as a DeepSpeed checkpoint matching `pattern` (a glob
    under `results`) exists: a real crash in the middle of training."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list(results.glob(pattern)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_mosaic(step: str, *args: str, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m mosaic <step> ...` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "mosaic", step, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT, env=child_env())


@pytest.fixture(scope="session", autouse=True)
def _release_shared_memory():
    """In-process DeepSpeed tests leave a CPU allreduce buffer in /dev/shm; remove it when the session ends."""
    yield
    from privlm.training import release_shm_buffers

    release_shm_buffers()


def teach_tiny(path: Path, fps: list[dict], seed: int, steps: int, max_response_length: int = 4) -> Path:
    """A tiny random model taught `fps` (raw keys, first response tokens) by a minimal full-batch loop of its own (not
    our fine-tune), saved with its tokenizer at `path`."""
    import torch

    from privlm import data

    tok = build_tokenizer()
    model = build_model(len(tok), seed=seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    batch = data.collate([data.encode(tok, f["key"], f["response"], data.BARE, False, 16, max_response_length)
                          for f in fps], tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
