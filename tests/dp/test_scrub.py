import pytest

from privlm.dp import scrub, synthetic
from privlm.errors import UserError


@pytest.fixture(scope="module")
def recs():
    return synthetic.records(12, seed=3)


def test_mask_replaces_pattern_entities_and_deny_list_names(recs, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVLM_CACHE", str(tmp_path))
    out, report = scrub.scrub(recs, deny_list=scrub.load_deny_list("from_data", recs))
    for r, o in zip(recs, out):
        for kind in ("email", "name", "date"):
            assert r["pii"][kind] not in o["text"], (kind, o["text"])
        assert "<MASK>" in o["text"]
        assert r["pii"]["company"] in o["text"], "non-PII text is kept"
    assert report["entities"]["EMAIL_ADDRESS"] == 12 and report["entities"]["PERSON"] == 12
    assert report["entities"]["DATE_TIME"] >= 12
    assert "deny list (12 names)" in report["ner"] or report["ner"].startswith("en_core_web")
    # tagging is cached by content: a second call must not build an analyzer
    monkeypatch.setattr(scrub, "build_analyzer", lambda *a, **k: pytest.fail("not cached"))
    again, _ = scrub.scrub(recs, deny_list=scrub.load_deny_list("from_data", recs))
    assert again == out


def test_pseudonyms_are_consistent(recs, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVLM_CACHE", str(tmp_path))
    twice = [dict(recs[0], id=0), dict(recs[0], id=1)]
    out, report = scrub.scrub(twice, pseudonymize=True, deny_list=[recs[0]["pii"]["name"]])
    assert out[0]["text"] == out[1]["text"] and "<MASK>" not in out[0]["text"]
    assert recs[0]["pii"]["email"] not in out[0]["text"] and report["replacement"] == "pseudonyms"


def test_deny_list_files(tmp_path):
    (tmp_path / "names.txt").write_text("Ann Lee\n\nBo Chen\n")
    assert scrub.load_deny_list(str(tmp_path / "names.txt"), []) == ["Ann Lee", "Bo Chen"]
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="JSON list"):
        scrub.load_deny_list(str(tmp_path / "bad.json"), [])
    with pytest.raises(UserError, match="not found"):
        scrub.load_deny_list(str(tmp_path / "none.txt"), [])
    (tmp_path / "broken.json").write_text('["Ann Lee", ')
    with pytest.raises(UserError, match="not valid JSON"):
        scrub.load_deny_list(str(tmp_path / "broken.json"), [])


def tiny_ner_model(path, label="B-PER"):
    """A tiny BERT token classifier that tags every word with `label` (classifier bias), saved offline."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    words = ["alice", "met", "bob", "in", "paris", "today", "."]
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, id2label=dict(enumerate(labels)),
                     label2id={v: k for k, v in enumerate(labels)})
    model = BertForTokenClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-5.0)
        model.classifier.bias[labels.index(label)] = 5.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_hf_token_classification_ner_finds_names(tmp_path):
    model_dir = tiny_ner_model(tmp_path / "ner")
    recs = [{"text": "Alice met Bob in Paris today."}]
    out, report = scrub.scrub(recs, ner=f"hf:{model_dir}", entities=["PERSON"])
    assert report["ner"] == f"hf:{model_dir}" and report["entities"].get("PERSON", 0) >= 3
    assert "Alice" not in out[0]["text"] and "Bob" not in out[0]["text"] and "<MASK>" in out[0]["text"]
    plain, rep = scrub.scrub(recs, ner="none", entities=["PERSON"])
    assert plain[0]["text"] == recs[0]["text"] and "none" in rep["ner"]


def test_bad_ner_settings():
    assert scrub.check_ner("hf:") and scrub.check_ner("stanza:x") and scrub.check_ner("auto") is None
    with pytest.raises(UserError, match="flair is not installed|could not load flair"):
        scrub.scrub([{"text": "Alice met Bob."}], ner="flair:ner-english")
