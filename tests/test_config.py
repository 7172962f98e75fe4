import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, config_class
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
    m = re.search(r"launch:.*?-m privlm\.audit (\w+)", text)
    if m:
        return f"privlm.audit.{m.group(1)}.py"
    m = re.search(r"launch:.*?(\w+\.py)", text)
    assert m, f"{yml} must open with its launch command"
    return m.group(1)


@pytest.mark.parametrize("yml", sorted((ROOT / "configs").rglob("*.yml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_parses(yml):
    import importlib

    script = _script_for(yml)
    assert yml.read_text().startswith("#"), "configs open with a comment on their purpose"
    module = importlib.import_module(script[:-3])
    cfg = C.parse(config_class(module), ["--config", str(yml)])
    assert cfg.explicit, "the config sets something"


# ------------------------------------------------------------------------------------------ the shared TrainArgs
@dataclass
class Script:
    model: str = C.field("default")
    trainer_args: C.TrainArgs = C.train_args(learning_rate=1e-5, num_train_epochs=10)


def test_train_args_take_hf_names_and_seed_aliases_as_flags_yaml_keys_and_overrides(tmp_path):
    cfg = C.parse(Script, ["--lr", "3e-4", "--perdevice_bs", "4", "--num_epochs", "2", "--deepspeed_stage", "3",
                           "--total_bs", "64", "--overwrite"])
    ta = cfg.trainer_args
    assert (ta.learning_rate, ta.per_device_train_batch_size, ta.num_train_epochs, ta.zero_stage,
            ta.total_train_batch_size, ta.overwrite_output_dir) == (3e-4, 4, 2.0, 3, 64, True)
    assert "trainer_args.learning_rate" in cfg.explicit and "trainer_args.seed" not in cfg.explicit
    y = tmp_path / "seed.yml"  # seed 001 style: a trainer_args section with HF names; seed 000 style: flat keys
    y.write_text("trainer_args:\n  learning_rate: 1.0e-3\n  per_device_train_batch_size: 2\nbatch_size: 3\n"
                 "lr_scheduler: cosine\n")
    ta = C.parse(Script, ["--config", str(y), "trainer_args.num_train_epochs=0.5", "training.seed=7"]).trainer_args
    assert (ta.learning_rate, ta.per_device_train_batch_size, ta.lr_scheduler_type, ta.num_train_epochs, ta.seed) \
        == (1e-3, 3, "cosine", 0.5, 7)
    assert C.parse(Script, []).trainer_args.learning_rate == 1e-5, "the script's own default"
    with pytest.raises(UserError) as e:
        C.parse(Script, ["--lr", "-1", "--deepspeed_stage", "5", "trainer_args.bogus=1", "--bf16", "--fp16"])
    for needle in ("learning_rate", "--deepspeed_stage", "trainer_args.bogus", "bf16/fp16"):
        assert needle in str(e.value)


def test_train_args_read_a_deepspeed_json(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}, "bf16": {"enabled": true},'
                  ' "train_micro_batch_size_per_gpu": "auto"}')
    ta = C.parse(Script, ["--deepspeed", str(ds)]).trainer_args
    assert ta.zero_stage == 3 and ta.precision("auto") == "bfloat16"
    from privlm.training import TrainSpec, ds_config

    cfg = ds_config(TrainSpec.from_args(ta), world=2)
    assert cfg["zero_optimization"]["offload_param"] == {"device": "cpu"} and cfg["bf16"]["enabled"]
    assert cfg["train_micro_batch_size_per_gpu"] == ta.per_device_train_batch_size, '"auto" keeps ours'
    assert cfg["train_batch_size"] == 2 * ta.per_device_train_batch_size
    ds.write_text('{"zero_optimization": {"stage": 7}}')
    with pytest.raises(UserError, match="stage must be 0-3"):
        C.parse(Script, ["--deepspeed", str(ds)])
    with pytest.raises(UserError, match="DeepSpeed JSON"):
        C.parse(Script, ["--deepspeed", str(tmp_path / "missing.json")])


def test_planned_steps_fractional_epochs_and_max_steps():
    from privlm.training import planned_steps

    assert planned_steps(3, -1, 10) == 30
    assert planned_steps(0.5, -1, 10) == 5
    assert planned_steps(1.25, -1, 3) == 4
    assert planned_steps(10, 7, 3) == 7


def test_help_shows_one_training_block_with_aliases():
    import contextlib
    import io
    import importlib

    blocks = []
    for name in ("finetune_multigpu", "dp_finetune", "mosaic.train"):
        mod = importlib.import_module(name)
        cls = config_class(mod)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            C.parse(cls, ["--help"])
        text = buf.getvalue()
        block = text[text.index("training arguments"):]
        assert "--learning_rate LEARNING_RATE, --lr LEARNING_RATE" in block
        assert "--per_device_train_batch_size PER_DEVICE_TRAIN_BATCH_SIZE, --batch_size" in block
        blocks.append(re.findall(r"^  (--\S+)", block, re.M))
    assert blocks[0] == blocks[1] == blocks[2], "the same flags in the same order for every training script"


def test_seed_fingerprinting_flag_spellings_are_aliases():
    """Seed 000's README spells --use_prompt_augmentation; the scalable successor's --max_num_fingerprints."""
    import finetune_multigpu as ft

    cfg = C.parse(ft.FinetuneConfig, ["--use_prompt_augmentation", "--max_num_fingerprints", "1024"])
    assert cfg.use_augmentation_prompts is True and cfg.num_fingerprints == 1024
