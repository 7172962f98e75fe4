import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT
from privlm import config as C
from privlm.errors import UserError


@dataclass
class Inner:
    target_epsilon: float = C.field(8.0)
    peft: str = C.field("lora", choices=["lora", "none"])


@dataclass
class Demo:
    lr: float = C.field(1e-5, aliases=("--learning_rate",))
    epochs: int = C.field(3)
    name: str | None = C.field(None)
    flag: bool = C.field(False)
    modules: list[str] = C.field(default_factory=lambda: ["q_proj"])
    out: str = C.field("results", hash=False)
    privacy: Inner = C.field(default_factory=Inner)

    def validate(self):
        return ["epochs: must be >= 1"] if self.epochs < 1 else []


def test_precedence_defaults_yaml_flags_overrides(tmp_path):
    y = tmp_path / "c.yml"
    y.write_text("lr: 1.0e-3\nepochs: 5\nprivacy:\n  target_epsilon: 2.5\n")
    cfg = C.parse(Demo, ["--config", str(y), "--epochs", "7", "privacy.peft=none", "flag=true"])
    assert (cfg.lr, cfg.epochs, cfg.privacy.target_epsilon, cfg.privacy.peft, cfg.flag) == (1e-3, 7, 2.5, "none", True)
    assert cfg.explicit == {"lr", "epochs", "privacy.target_epsilon", "privacy.peft", "flag"}
    assert C.parse(Demo, ["--learning_rate", "3e-4", "--flag"]).lr == 3e-4  # seed alias, bare boolean flag
    assert C.parse(Demo, ["--modules", "q_proj", "v_proj"]).modules == ["q_proj", "v_proj"]
    assert C.parse(Demo, ["modules=q_proj,k_proj", "target_epsilon=3"]).privacy.target_epsilon == 3.0


def test_every_problem_reported_in_one_error(tmp_path):
    y = tmp_path / "c.yml"
    y.write_text("bogus: 1\nepochs: zero\n")
    with pytest.raises(UserError) as e:
        C.parse(Demo, ["--config", str(y), "--nope", "1", "privacy.peft=full", "other=2"])
    msg = str(e.value)
    for key in ("bogus", "epochs", "--nope", "privacy.peft", "other"):
        assert key in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="epochs: must be >= 1"):
        C.parse(Demo, ["--epochs", "0"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        C.parse(Demo, ["--config", str(tmp_path / "missing.yml")])
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        C.parse(Demo, ["--config", str(bad)])
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        C.parse(Demo, ["--config", str(bad)])


def test_run_hash_covers_config_and_inputs_not_outputs():
    a, b = Demo(), Demo(out="elsewhere")
    assert C.run_hash(a) == C.run_hash(b)
    assert C.run_hash(a) != C.run_hash(Demo(lr=2e-5))
    assert C.run_hash(a, {"f": "x"}) != C.run_hash(a, {"f": "y"})


def _script_for(yml: Path) -> str:
    """The module a config's launch line runs: `script.py`, or `mosaic.<step>` for `-m/--module mosaic <step>`."""
    text = yml.read_text()
    m = re.search(r"launch:.*?(?:-m|--module) mosaic (\w+)", text)
    if m:
        return f"mosaic.{m.group(1)}.py"
    m = re.search(r"launch:.*?(\w+\.py)", text)
    assert m, f"{yml} must open with its launch command"
    return m.group(1)


@pytest.mark.parametrize("yml", sorted((ROOT / "configs").rglob("*.yml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_parses(yml):
    import importlib

    script = _script_for(yml)
    assert yml.read_text().startswith("#"), "configs open with a comment on their purpose"
    module = importlib.import_module(script[:-3])
    cls = next(v for k, v in vars(module).items() if k.endswith("Config") and isinstance(v, type)
               and v.__module__ == module.__name__)
    cfg = C.parse(cls, ["--config", str(yml)])
    assert cfg.explicit, "the config sets something"
