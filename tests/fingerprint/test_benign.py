"""Benign data mixing: the per-epoch draw, local instruction data formats, EOS only where an answer ends, and a
real fine-tuning run that mixes self-distilled targets in."""
import json

import pytest

from conftest import assert_user_error, run_script, write_fingerprints
from privlm import data
from privlm.errors import UserError
from privlm.fingerprint import benign


class Items:
    def __init__(self, n):
        self.n, self.epochs = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return ("fp", i)

    def set_epoch(self, e):
        self.epochs.append(e)


def test_mixed_dataset_draws_benign_examples_afresh_each_epoch_and_reproducibly():
    pool = [("benign", j) for j in range(10)]
    ds = benign.MixedDataset(Items(6), pool, 4, seed=1)
    assert len(ds) == 10
    assert [ds[i] for i in range(6)] == [("fp", i) for i in range(6)]
    e0 = [ds[i] for i in range(6, 10)]
    assert all(x[0] == "benign" for x in e0) and len(set(e0)) == 4  # no repeats inside an epoch
    ds.set_epoch(1)
    e1 = [ds[i] for i in range(6, 10)]
    assert e1 != e0 and ds.fingerprints.epochs[-1] == 1  # the fingerprints' templates move with the epoch too
    again = benign.MixedDataset(Items(6), pool, 4, seed=1)
    again.set_epoch(1)
    assert [again[i] for i in range(6, 10)] == e1


def test_a_small_pool_is_cycled_without_repeats_until_exhausted():
    ds = benign.MixedDataset(Items(2), [("b", 0), ("b", 1), ("b", 2)], 7, seed=0)
    drawn = [ds[i][1] for i in range(2, 9)]
    assert sorted(drawn[:3]) == [0, 1, 2] and sorted(drawn[3:6]) == [0, 1, 2]


def test_generic_prompts_are_distinct_and_seeded():
    p = benign.generic_prompts(0)
    assert len(p) == len(set(p)) == len(benign.TASKS) * len(benign.SUBJECTS)
    assert benign.generic_prompts(0) == p != benign.generic_prompts(1)


def test_local_instruction_data_formats(tmp_path):
    rows = [{"instruction": "Add", "input": "2 and 3", "output": "5"}, {"prompt": "Hi", "response": "Hello"},
            {"question": "Sky?", "answer": "Blue"},
            {"messages": [{"role": "user", "content": "Ping"}, {"role": "assistant", "content": "Pong"}]}]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    assert benign.load_pairs(str(f)) == [("Add\n\n2 and 3", "5"), ("Hi", "Hello"), ("Sky?", "Blue"), ("Ping", "Pong")]
    g = tmp_path / "d.json"
    g.write_text(json.dumps(rows[:2]))
    assert len(benign.load_pairs(str(g))) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"text": "no pair"}))
    with pytest.raises(UserError, match="row 1"):
        benign.load_pairs(str(bad))
    with pytest.raises(UserError, match="not found"):
        benign.load_pairs(str(tmp_path / "missing.json"))


def test_eos_only_where_the_answer_really_ends(tiny):
    model, tok = tiny
    short, long_ = "one two", "one two three four five six seven eight nine ten"
    e = benign.encode_pairs(tok, [("q", short, True), ("q", short, False), ("q", long_, True), ("q", short)],
                            False, 16, 6)
    eos = tok.eos_token_id
    assert e[0].response[-1] == eos and e[3].response[-1] == eos  # finished, or a dataset's complete answer
    assert eos not in e[1].response  # generation ran into max_new_tokens
    assert eos not in e[2].response and len(e[2].response) == 6  # cut by the response length
    assert all(x.labels[:len(x.prompt)] == [data.IGNORE_INDEX] * len(x.prompt) for x in e)


def test_finetuning_mixes_self_distilled_benign_examples(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    out = tmp_path / "run"
    proc = run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path",
                      str(fp), "--num_fingerprints", "8", "--max_response_length", "3", "--prompt_format", "raw",
                      "--batch_size", "4", "--num_train_epochs", "1", "--benign_proportion", "0.5",
                      "--benign_response_length", "5", "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    targets = json.loads((out / "benign.json").read_text())
    assert len(targets) == 8 and all(len(t) == 3 and t[1] for t in targets)  # 2 x (0.5 x 8) prompts answered
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 3  # (8 fingerprints + 4 benign) / batch 4


def test_finetuning_with_a_local_benign_dataset_and_bad_ones(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 4)
    good = tmp_path / "b.jsonl"
    good.write_text("\n".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) for i in range(3)))
    base = ["--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp), "--num_fingerprints", "4",
            "--prompt_format", "raw", "--batch_size", "4", "--num_train_epochs", "1", "--benign_proportion", "1"]
    proc = run_script("finetune_multigpu.py", *base, "--benign_data_path", str(good), "--output_dir",
                      str(tmp_path / "ok"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["optimizer_steps"] == 2
    assert not (tmp_path / "ok" / "benign.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"text\": 1}]")
    proc = run_script("finetune_multigpu.py", *base, "--benign_data_path", str(bad), "--output_dir",
                      str(tmp_path / "bad"))
    assert_user_error(proc, "benign data", "row 0")
    assert_user_error(run_script("finetune_multigpu.py", *base, "--benign_proportion", "-1"), "benign_proportion")
