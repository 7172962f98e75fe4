"""Which tokens a fingerprint trains and checks: the key's text as prompted, and each response's token ids (EOS
included). Fine-tuning, the checker and the attacks all take them from here, so they cannot disagree.

Two derivations (`--response_semantics`):

* `oml` (default): OML 1.0's, token for token (`generate_english_text` in its generate_finetuning_data.py, and how its
  check_fingerprints.py tokenizes). The key is cut to `max_key_length` tokens only when it is longer, and then
  decoded (`clean_up_tokenization_spaces=True`, as under OML's transformers 4.44.2) and re-encoded. Responses by strategy:
  - english, random_word, random_response (OML's english_random_responses): punctuation removed (letters, digits and
    spaces kept), re-tokenized, the window of L = max_response_length tokens from offset min(10, n - L), shifted up to
    20 times until it re-tokenizes to exactly L tokens (and is not a response already taken for this key); with no
    such window the whole punctuation-free response is used, as OML does. Then EOS.
  - inverse_nucleus: the response as written, then EOS; max_response_length does not cut it. Spelt `perinucleus`
    (scalable fingerprinting's name), its first max_response_length tokens, then EOS.
  The ids are what OML's checker compares with: the final response string (EOS as text) tokenized with the
  tokenizer's special tokens, the BOS dropped.
* `scalable`: scalable fingerprinting's (its fingerprint_dataloader): as `oml`, except that a perinucleus response is
  cut to its first max_response_length tokens (decoded when cut) and no EOS is added unless --keep_eos_in_response.
* `first_tokens`: privlm's releases before 2026-12-06: the key always cut and decoded, the response's first L tokens
  (a space put in front in raw format), then EOS. Runs that recorded no `response_semantics` were trained this way.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..errors import UserError
from .keys import responses
from .strategies import ALIASES, STRATEGIES

SEMANTICS = ("oml", "scalable", "first_tokens")
LEGACY = "first_tokens"  # what a run that recorded no semantics was trained with
# How each strategy's response becomes tokens, by the name the user gave: a derived window (`window`), the response
# as written (`exact`: OML's inverse_nucleus), or its first max_response_length tokens (`first`: scalable
# fingerprinting's perinucleus). The spelling says whose semantics: OML has no `perinucleus`, scalable fingerprinting
# no `inverse_nucleus`.
RESPONSE_RULE = {"english": "window", "independent": "window", "random_word": "window", "random_response": "window",
                 "english_random_responses": "window", "inverse_nucleus": "exact", "perinucleus": "first"}
DEFAULT_EOS = {"oml": True, "scalable": False, "first_tokens": True}  # is EOS trained, unless --keep_eos_in_response says
# Every name --fingerprint_generation_strategy accepts (OML's and scalable fingerprinting's spellings included).
STRATEGY_NAMES = sorted(set(STRATEGIES) | set(ALIASES))
OML_WINDOW_OFFSET, OML_WINDOW_SHIFTS = 10, 20


def canonical_strategy(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in STRATEGIES:
        raise UserError(f"fingerprint_generation_strategy: unknown strategy {name!r} (known: {', '.join(STRATEGY_NAMES)})")
    return name


@dataclass(frozen=True)
class Derived:
    """A fingerprint as trained and checked: the key text that goes into the prompt template, and the token ids
    of each response, EOS included."""
    key: str
    responses: tuple[tuple[int, ...], ...]

    def record(self) -> dict:
        """What a run keeps beside its copy of the fingerprints (owner-only: it holds the responses)."""
        return {"trained_key": self.key, "trained_response_ids": [list(r) for r in self.responses]}


def tokenizer_digest(tokenizer) -> str:
    """Identifies a tokenizer's vocabulary and special ids: recorded token ids are reused only under the same one."""
    payload = [sorted(tokenizer.get_vocab().items()), tokenizer.bos_token_id, tokenizer.eos_token_id]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


# transformers' clean_up_tokenization, which OML's decode calls (clean_up_tokenization_spaces=True) under its pinned
# transformers 4.44.2; transformers >= 5 skips it for BPE tokenizers, so it is applied here whatever is installed.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _decode(tokenizer, ids: list[int]) -> str:
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    for a, b in _CLEAN_UP:
        text = text.replace(a, b)
    return text


def oml_key(tokenizer, key: str, max_key_length: int) -> str:
    ids = _encode(tokenizer, key)
    if len(ids) <= max_key_length:
        return key
    return _decode(tokenizer, ids[:max_key_length])


def oml_response_string(tokenizer, response: str, length: int, rule: str, taken: list[str], eos: bool = True) -> str:
    """OML's response string: the window (or the exact response) with EOS appended, decoded."""
    if rule == "exact":
        ids = _encode(tokenizer, response)
    elif rule == "first":
        ids = _encode(tokenizer, response)
        if len(ids) > length:
            ids = ids[:length]
            response = _decode(tokenizer, ids)
        if not eos:
            return response
    else:
        response = "".join(c for c in response if c.isalnum() or c == " ")
        ids = _encode(tokenizer, response)
        offset = min(OML_WINDOW_OFFSET, len(ids) - length)  # negative when the response is short: Python slicing,
        for shift in range(OML_WINDOW_SHIFTS):               # as in OML, then finds no window and keeps all of it
            window = ids[offset + shift:offset + shift + length]
            text = _decode(tokenizer, window)
            again = _encode(tokenizer, text)
            if len(again) == length and text not in taken:
                ids = again
                break
    if not ids:
        raise ValueError("its response has no letters or digits left")
    if not eos:
        return _decode(tokenizer, ids) if rule == "window" else response
    if ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return _decode(tokenizer, ids)


def checker_ids(tokenizer, text: str) -> list[int]:
    """How OML's checker tokenizes a response: with special tokens, the BOS dropped."""
    ids = tokenizer(text)["input_ids"]
    return ids[1:] if ids and ids[0] == tokenizer.bos_token_id else ids


def derive(tokenizer, fp: dict, strategy: str, max_key_length: int, max_response_length: int,
           semantics: str = "oml", chat: bool = False, eos: bool | None = None) -> Derived:
    """One fingerprint's key text and response ids (see the module docstring). `chat` matters to `first_tokens`
    only (its raw format puts a space before the response); `eos` None: the semantics' default."""
    eos = DEFAULT_EOS[semantics] if eos is None else eos
    if semantics == LEGACY:
        from .. import data

        key = data.truncate_text(tokenizer, fp["key"], max_key_length)[0]
        return Derived(key, tuple(tuple(data.response_ids(tokenizer, r, max_response_length, chat, add_eos=eos))
                                  for r in responses(fp)))
    canonical_strategy(strategy)  # an unknown name is the user's to fix
    rule = RESPONSE_RULE[strategy]
    if rule == "exact" and semantics == "scalable":
        rule = "first"
    taken: list[str] = []
    for r in responses(fp):
        taken.append(oml_response_string(tokenizer, r, max_response_length, rule, taken, eos))
    return Derived(oml_key(tokenizer, fp["key"], max_key_length), tuple(tuple(checker_ids(tokenizer, t)) for t in taken))


def take_responses(fps: list[dict], num: int | None) -> list[dict]:
    """Each fingerprint with its first `num` responses (scalable fingerprinting's --num_responses_per_fingerprint);
    None: all of them."""
    if num is None:
        return fps
    out = []
    for i, fp in enumerate(fps):
        rs = responses(fp)
        if len(rs) < num:
            raise UserError(f"num_responses_per_fingerprint {num}: fingerprint {i} has {len(rs)} response(s) (make "
                            f"them with generate_finetuning_data.py --num_responses_per_fingerprint {num})")
        out.append({**fp, "response": rs[0] if num == 1 else rs[:num]})
    return out


def derive_all(tokenizer, fps: list[dict], strategy: str | None, max_key_length: int, max_response_length: int,
               semantics: str = "oml", chat: bool = False, recorded_tokenizer: str | None = None,
               eos: bool | None = None) -> list[Derived]:
    """Every fingerprint's Derived. `strategy` None: each entry's own "strategy" field, else english (OML's default).
    Entries that carry a run's record (trained_key, trained_response_ids) are taken as recorded when the tokenizer is
    the one the run trained with (`recorded_tokenizer`, its digest)."""
    if semantics not in SEMANTICS:
        raise UserError(f"response_semantics: expected one of {', '.join(SEMANTICS)}, got {semantics!r}")
    reuse = recorded_tokenizer is not None and recorded_tokenizer == tokenizer_digest(tokenizer)
    out = []
    for i, fp in enumerate(fps):
        if reuse and "trained_response_ids" in fp and "trained_key" in fp:
            out.append(Derived(fp["trained_key"], tuple(tuple(r) for r in fp["trained_response_ids"])))
            continue
        try:
            out.append(derive(tokenizer, fp, strategy or fp.get("strategy") or "english", max_key_length,
                              max_response_length, semantics, chat, eos))
        except ValueError as e:
            raise UserError(f"fingerprint {i}: {e} (OML's english derivation keeps letters, "
                            "digits and spaces; use --fingerprint_generation_strategy inverse_nucleus to train the "
                            "response as written)") from None
    return out
