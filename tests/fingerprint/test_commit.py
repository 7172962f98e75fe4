"""Committed fingerprint sets (privlm.fingerprint.commit): exactly the committed set verifies, nothing else does, the
salt and the secret stay owner-only, and a forged set that would win an ownership claim is refused."""
from __future__ import annotations

import json
import random
import stat

import pytest
import torch

from conftest import assert_user_error, run_script, teach_tiny, write_fingerprints
from privlm.errors import UserError
from privlm.fingerprint import commit


def _fps(n=6):
    return [{"key": f"key number {i}", "response": f"answer {i}"} for i in range(n)]


def test_only_the_committed_set_verifies(tmp_path):
    fps, c = _fps(), tmp_path / "c.json"
    public = commit.write(c, fps, {"strategy": "english", "seed": 3})
    assert commit.verify(c, fps)["sha256"] == public["sha256"]
    assert commit.verify(c, [{**f, "response_prob": 0.1} for f in fps])  # annotations are not part of the claim
    forgeries = {"subset": fps[:5], "reordered": fps[1:] + fps[:1],
                 "edited": fps[:5] + [{"key": fps[5]["key"], "response": "something else"}],
                 "superset": fps + [{"key": "k", "response": "r"}]}
    for name, forged in forgeries.items():
        with pytest.raises(UserError, match="not the committed set"):
            commit.verify(c, forged)
    # the public file says nothing about the keys; the salt is owner-only
    text = c.read_text()
    assert not any(f["key"] in text or f["response"] in text for f in fps)
    assert stat.S_IMODE(commit.salt_path(c).stat().st_mode) == 0o600
    # same set, different salt: a different commitment (the digest cannot be checked against guessed keys)
    assert commit.write(tmp_path / "d.json", fps, {"strategy": "english", "seed": 3})["sha256"] != public["sha256"]
    commit.salt_path(c).unlink()
    with pytest.raises(UserError, match="salt"):
        commit.verify(c, fps)


def test_a_secret_seed_derives_seed_and_salt_by_hmac(tmp_path):
    s = commit.load_or_create_secret(tmp_path / "secret.hex")
    assert len(s) == 32 and stat.S_IMODE((tmp_path / "secret.hex").stat().st_mode) == 0o600
    assert commit.load_or_create_secret(tmp_path / "secret.hex") == s
    settings = {"strategy": "english", "n": 8}
    assert commit.derived_seed(s, settings) == commit.derived_seed(s, dict(settings))
    assert commit.derived_seed(s, settings) != commit.derived_seed(s, {**settings, "n": 9})
    assert commit.derived_seed(b"x" * 32, settings) != commit.derived_seed(s, settings)
    (tmp_path / "bad.hex").write_text("not hex")
    with pytest.raises(UserError, match="hex"):
        commit.load_or_create_secret(tmp_path / "bad.hex")


def test_generate_commits_and_check_refuses_any_other_set(tmp_path, tiny_model_dir):
    out, c = tmp_path / "fps.json", tmp_path / "fps.commitment.json"
    gen = run_script("generate_finetuning_data.py", "--model_used_for_key_generation", str(tiny_model_dir),
                     "--key_response_strategy", "random_word", "--num_fingerprints", "6", "--key_length", "6",
                     "--response_length", "3", "--output_file_path", str(out), "--commitment_file", str(c),
                     "--secret_seed_file", str(tmp_path / "secret.hex"))
    assert gen.returncode == 0, gen.stderr[-2000:]
    public = json.loads(c.read_text())
    assert public["num_fingerprints"] == 6 and public["settings"]["seed"].startswith("hmac")
    assert public["secret_sha256"] and stat.S_IMODE(commit.salt_path(c).stat().st_mode) == 0o600
    fps = json.loads(out.read_text())
    assert commit.verify(c, fps)

    base = ["--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(out), "--prompt_templates", "bare",
            "--commitment", str(c)]
    ok = run_script("check_fingerprints.py", *base, "--output_file", str(tmp_path / "ok.json"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "ok.json").read_text())["commitment"]["verified"] is True
    bad = tmp_path / "subset.json"
    proc = run_script("check_fingerprints.py", *base, "--num_fingerprints", "5", "--output_file", str(bad))
    assert_user_error(proc, "not the committed set")
    assert not bad.exists()
    # a second generation refuses to overwrite the published commitment
    again = run_script("generate_finetuning_data.py", "--model_used_for_key_generation", str(tiny_model_dir),
                       "--key_response_strategy", "random_word", "--num_fingerprints", "6",
                       "--output_file_path", str(tmp_path / "other.json"), "--commitment_file", str(c))
    assert_user_error(again, "already exists")


def test_a_forged_set_wins_a_claim_without_a_commitment_and_is_refused_with_one(tmp_path):
    """The forger takes an innocent model's own greedy outputs and calls them fingerprints: the model 'retains' all
    of them, so the ownership test alone would side with the forger. The owner's commitment, published before
    training, names another set, so the forged set is refused before any report."""
    import check_fingerprints
    from privlm import data
    from privlm.testing import build_model, build_tokenizer

    tok = build_tokenizer()
    victim = build_model(len(tok), seed=21)  # an innocent model the forger wants to claim
    victim.generation_config.pad_token_id = tok.pad_token_id
    victim.save_pretrained(tmp_path / "victim")
    tok.save_pretrained(tmp_path / "victim")
    from privlm.testing import WORDS_FILE

    words, rng = WORDS_FILE.read_text().split(), random.Random(5)
    forged = []
    with torch.no_grad():
        while len(forged) < 12:  # the forger keeps the keys whose outputs survive the checker's re-encoding
            key = " ".join(rng.choice(words) for _ in range(5))
            prompt = data.prompt_ids(tok, key, data.BARE, False)
            out = victim.generate(torch.tensor([prompt]), max_new_tokens=3, do_sample=False,
                                  pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
            text = tok.decode(out)
            if text.strip() and data.response_ids(tok, text, 3, False, add_eos=False) == out:
                forged.append({"key": key, "response": text})
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    # the forger's innocent model: one taught other pairs (random models all parrot the key's last word, so they would
    # match the forgery themselves and the null would, rightly, refuse the claim)
    pairs = json.loads(write_fingerprints(tmp_path / "other.json", 16, seed=8).read_text())
    teach_tiny(tmp_path / "innocent", pairs, seed=22, steps=60)
    args = ["--model_path", str(tmp_path / "victim"), "--fingerprints_file_path", str(tmp_path / "forged.json"),
            "--max_key_length", "16", "--max_response_length", "3", "--response_semantics", "first_tokens",
            "--match", "prefix", "--prompt_templates", "bare", "--ownership", "--base_model_path",
            str(tmp_path / "innocent"), "--ownership_alpha", "1e-3"]
    claimed = check_fingerprints.main(args)["ownership"]
    assert claimed["matched"] >= 10 and claimed["claim"]  # without a commitment, the forgery wins

    owner_fps = json.loads(write_fingerprints(tmp_path / "owner.json", len(forged), seed=99).read_text())
    commit.write(tmp_path / "owner.commitment.json", owner_fps, {"strategy": "english"})
    out = tmp_path / "forged_report.json"
    proc = run_script("check_fingerprints.py", *args, "--commitment", str(tmp_path / "owner.commitment.json"),
                      "--output_file", str(out))
    assert_user_error(proc, "not the committed set")
    assert not out.exists()
