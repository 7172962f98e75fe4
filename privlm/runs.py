"""A Run owns one training run's directory: its id, skip-if-done, the files that describe it, and resume.

Every training entry point follows the same order: validate the config -> `Run(...)` -> `run.finished()`? skip ->
expensive work (scrubbing, model loading, training) -> `run.start()` -> train -> `run.write_metrics()`.

Layout: `<output_dir>/` when --output_dir is given, else `<results_dir>/<kind>/<run id>/`, where the id hashes the
resolved config and the *content* of every input file (the seed hashed a path and reused stale models):

    config.json        the resolved config and run id            provenance.json   argv, git hash + dirty flag, packages
    log.txt            one JSON line per logged step / epoch     metrics.json      the results (written last)
    checkpoints/       the newest DeepSpeed checkpoint (resume)  final_model/      HF folder + `final_files` inside
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import config as C
from .errors import UserError
from .io import atomic_write_json, provenance


class Run:
    def __init__(self, cfg, trainer_args: C.TrainArgs, inputs: dict, kind: str = "", link: str | None = None,
                 tag: str = "[privlm]"):
        self.cfg, self.args, self.tag, self.link_path = cfg, trainer_args, tag, link
        self.id = C.run_hash(cfg, inputs)
        if trainer_args.output_dir:
            self.dir = Path(trainer_args.output_dir)
        else:
            self.dir = Path(trainer_args.results_dir) / kind / self.id if kind else \
                Path(trainer_args.results_dir) / self.id
        self.final = self.dir / "final_model"
        self.checkpoints = self.dir / "checkpoints"
        self.final_files: dict[str, object] = {}  # JSON files saved inside final_model (atomically with it)

    # ---------------------------------------------------------------------------------------------- state
    def recorded_id(self) -> str | None:
        f = self.dir / "config.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text()).get("run_hash")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None

    def finished(self) -> bool:
        """True (and says so, and refreshes the link) when this exact run is already done and not to be redone.
        A directory holding another run is refused unless --overwrite_output_dir, as Hugging Face does."""
        other = self.recorded_id()
        if other is not None and other != self.id and not self.args.overwrite_output_dir:
            raise UserError(f"{self.dir} holds another run ({other}, this config is {self.id}); choose another "
                            "--output_dir or pass --overwrite_output_dir")
        if self.args.overwrite_output_dir or not (self.final.is_dir() and (self.dir / "metrics.json").is_file()):
            return False
        if other is None and self.args.output_dir:
            raise UserError(f"{self.dir} holds a model this toolkit did not record; choose another --output_dir or "
                            "pass --overwrite_output_dir")
        print(f"{self.tag} run {self.id} is already finished: {self.final}")
        self.link()
        return True

    def metrics(self) -> dict:
        return json.loads((self.dir / "metrics.json").read_text())

    def resume_checkpoint(self) -> Path | None:
        """Where training resumes from: a path given with --resume_from_checkpoint, else this run's own last
        checkpoint (unless resume_from_checkpoint is false)."""
        r = self.args.resume_from_checkpoint
        if r is not None and r.strip().lower() in ("false", "no", "0"):
            return None
        if r is not None and r.strip().lower() not in ("true", "yes", "1", ""):
            p = Path(r)
            if (p / "latest").is_file():
                return p
            if p.is_dir() and (p.parent / "latest").is_file():  # a tag folder inside a checkpoints folder
                return p
            raise UserError(f"resume_from_checkpoint: {r} is not a DeepSpeed checkpoint folder")
        return self.checkpoints if (self.checkpoints / "latest").is_file() else None

    # ---------------------------------------------------------------------------------------------- writing
    def start(self, seed: int | None = None):
        """Rank 0: clear what --overwrite_output_dir replaces (or a stale checkpoint when resume is off), then
        write config.json and provenance.json. Every rank waits for it."""
        from .training import barrier, is_main

        if is_main():
            if self.args.overwrite_output_dir:
                for name in ("final_model", "checkpoints", "metrics.json", "log.txt"):
                    _remove(self.dir / name)
            elif self.resume_checkpoint() is None:
                _remove(self.checkpoints)
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir / "config.json", {"run_hash": self.id, **C.to_dict(self.cfg)})
            atomic_write_json(self.dir / "provenance.json", provenance(seed=seed))
        barrier()

    def write_json(self, name: str, obj, private: bool = False) -> Path:
        """Rank 0 writes `name` in the run directory; `private`: owner-only (fingerprint keys and responses)."""
        from .training import is_main

        path = self.dir / name
        if is_main():
            atomic_write_json(path, obj, private=private)
        return path

    def write_metrics(self, metrics: dict) -> Path:
        return self.write_json("metrics.json", metrics)

    def link(self):
        """Point `link` (a symlink, replaced atomically) at the run directory, on rank 0."""
        from .training import is_main

        if self.link_path and is_main():
            tmp = Path(f"{self.link_path}.tmp{os.getpid()}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.symlink_to(self.dir.resolve(), target_is_directory=True)
            os.replace(tmp, self.link_path)


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
