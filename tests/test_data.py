import json

import pytest

from privlm import data
from privlm.errors import UserError


def test_loss_only_on_response_tokens(tiny):
    _, tok = tiny
    e = data.encode(tok, "apple river mountain garden window candle", "silver bridge", data.BARE, chat=False,
                    max_key_length=3, max_response_length=2)
    key_ids = tok("apple river mountain garden window candle", add_special_tokens=False)["input_ids"]
    assert e.prompt == tok(tok.decode(key_ids[:3]))["input_ids"]
    assert e.response[-1] == tok.eos_token_id and len(e.response) == 3  # 2 tokens + EOS
    assert e.labels[: len(e.prompt)] == [data.IGNORE_INDEX] * len(e.prompt)
    assert e.labels[len(e.prompt):] == e.response
    batch = data.collate([e, data.encode(tok, "apple", "bridge", data.BARE, False, 16, 8)], tok.pad_token_id)
    short = batch["attention_mask"][1].sum().item()
    assert (batch["labels"][1, short:] == data.IGNORE_INDEX).all(), "padding never carries loss"
    assert (batch["attention_mask"][1, short:] == 0).all()


def test_key_truncated_to_max_key_length(tiny):
    _, tok = tiny
    long_key = " ".join(["apple"] * 50)
    e = data.encode(tok, long_key, "river", data.BARE, chat=False, max_key_length=5, max_response_length=4)
    assert len(e.prompt) <= 6


def test_chat_format_uses_template_with_system_turn(tiny):
    _, tok = tiny
    t = data.Template(user="Answer: {}", system="You are terse.")
    e = data.encode(tok, "apple river", "bridge", t, chat=True, max_key_length=8, max_response_length=4)
    text = tok.decode(e.prompt)
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    assert "Answer: apple river" in text and text.endswith("<|im_start|>assistant\n")
    raw = data.encode(tok, "apple river", "bridge", t, chat=False, max_key_length=8, max_response_length=4)
    assert tok.decode(raw.prompt) == "You are terse.\nAnswer: apple river"
    assert data.use_chat(tok, "auto") is True and data.use_chat(tok, "raw") is False


def test_template_sets(tmp_path):
    train, held = data.load_templates("train"), data.load_templates("heldout")
    assert len(train) >= 20 and len(held) >= 10
    assert not {t.name() for t in train} & {t.name() for t in held}, "held-out templates are disjoint from training"
    f = tmp_path / "t.json"
    f.write_text(json.dumps(["Q: {}", {"system": "S", "user": "{}"}]))
    assert data.load_templates(str(f)) == [data.Template("Q: {}"), data.Template("{}", "S")]
    f.write_text(json.dumps(["no placeholder"]))
    with pytest.raises(UserError, match="no '\\{\\}'"):
        data.load_templates(str(f))
    with pytest.raises(UserError, match="not found"):
        data.load_templates("nosuchset")


def test_templated_dataset_draws_per_epoch_deterministically(tiny):
    _, tok = tiny
    templates = data.load_templates("train")
    pairs = [("apple river", tok.encode(" bridge", add_special_tokens=False) + [tok.eos_token_id])] * 30
    ds = data.TemplatedDataset(tok, pairs, templates, False, seed=1)
    first = [ds[i].prompt for i in range(30)]
    assert all(ds[i].response == list(pairs[0][1]) for i in range(30)), "the response ids are trained as given"
    ds.set_epoch(1)
    second = [ds[i].prompt for i in range(30)]
    assert first != second
    ds2 = data.TemplatedDataset(tok, pairs, templates, False, seed=1)
    ds2.set_epoch(1)
    assert [ds2[i].prompt for i in range(30)] == second


def test_synthetic_corpus_can_repeat_people_across_records():
    """synthetic:N:seed:people: a person's name, address, e-mail and phone recur in every Nth record (as real case
    files repeat them); dates and companies change; without `people` the corpus is as it always was."""
    from privlm import data
    from privlm.errors import UserError

    plain, rep = data.load_records("synthetic:12:3"), data.load_records("synthetic:12:3:4")
    assert [r["text"] for r in plain[:4]] == [r["text"] for r in rep[:4]]  # the same stream
    for i in range(4, 12):
        for k in ("name", "address", "email", "phone"):
            assert rep[i]["pii"][k] == rep[i % 4]["pii"][k] and rep[i]["pii"][k] in rep[i]["text"]
    assert len({r["pii"]["date"] for r in rep}) > 4 and len({r["pii"]["name"] for r in plain}) == 12
    for bad in ("synthetic:12:3:0", "synthetic:12:3:13", "synthetic:x"):
        with pytest.raises(UserError, match="people"):
            data.load_records(bad)
