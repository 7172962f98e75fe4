"""--recipe sets defaults; what the user says wins."""
import finetune_multigpu
from privlm import config as C
from privlm.fingerprint import recipes


def _cfg(*argv):
    return finetune_multigpu.settings(C.parse(finetune_multigpu.FinetuneConfig, list(argv)))


def test_recipes_set_defaults_and_explicit_flags_win():
    ours = _cfg()
    assert ours.trainable_params == "mlp" and ours.anchor_strength == 3.0 and ours.prompt_format == "raw"
    oml = _cfg("--recipe", "oml", "--learning_rate", "1e-3")
    assert (oml.trainable_params, oml.anchor_strength, oml.benign_proportion) == ("all", 0.0, 0.0)
    assert oml.trainer_args.lr_scheduler_type == "warmup_decay" and oml.trainer_args.max_grad_norm == 0.0
    assert oml.trainer_args.learning_rate == 1e-3 and oml.trainer_args.num_train_epochs == 10
    sc = _cfg("--recipe", "scalable", "--benign_proportion", "0.25")
    assert sc.response_semantics == "scalable" and sc.early_stop_loss == 0.005 and sc.benign_proportion == 0.25
    assert sc.fingerprint_generation_strategy == "perinucleus" and sc.trainer_args.num_train_epochs == 30
    assert _cfg("--use_chat_template").prompt_format == "chat"


def test_full_batch_accumulation_follows_each_seed():
    assert recipes.full_batch_accumulation("oml", 128, 8, 1) == 16  # OML: N // (batch x GPUs)
    assert recipes.full_batch_accumulation("oml", 20, 8, 2) == 1
    assert recipes.full_batch_accumulation("scalable", 20, 8, 1) == 3  # scalable: ceil
    assert recipes.full_batch_accumulation("privlm", 128, 8, 1) is None
