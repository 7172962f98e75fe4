"""Injection: every copy's span is recorded, the text there is the copy, removing the spans restores the book."""
import random

import pytest

from privlm.errors import UserError
from privlm.mosaic import inject as I


def test_spans_hold_the_copies_and_the_book_is_intact():
    book = " ".join(f"word{i}" for i in range(200))
    copies = ["CANARY one", "CANARY two", "CANARY one", "fuzzy three"]
    text, spans = I.insert(book, copies, random.Random(0))
    assert len(spans) == len(copies)
    for c, (s, e) in zip(copies, spans):
        assert text[s:e] == c
        assert text[s - 1] == " " and text[e] == " "  # word boundaries intact
    rest, prev = [], 0
    for s, e in sorted(spans):
        rest.append(text[prev:s])
        prev = e + 1  # each copy was followed by one space
    rest.append(text[prev:])
    assert "".join(rest) == book


def test_too_short_books_and_bad_groups_are_user_errors():
    with pytest.raises(UserError, match="word starts"):
        I.insert("two words", ["a", "b", "c"], random.Random(0))
    for bad in ("exact:0", "exact", "fuzzy:", "copies:3"):
        with pytest.raises(UserError):
            I.parse_group(bad)
    assert I.group_label("fuzzy:x.json", {"strategy": "mlm", "num_injection_points": 10}) == "mlm_R10"
    assert I.group_label("exact:7") == "exact_7"


def test_a_variations_file_without_a_sound_copy_count_is_refused(tmp_path):
    """rho divides by a group's copies per canary: every canary of a fuzzy group must have the same number."""
    import json

    members = [{"id": i, "text": f"canary {i}"} for i in range(4)]
    good = {"canaries": [{"id": i, "variations": [{"text": f"v{i}a"}, {"text": f"v{i}b"}]} for i in range(4)]}
    (tmp_path / "good.json").write_text(json.dumps(good))
    g = I.build_groups(members, [f"fuzzy:{tmp_path / 'good.json'}"], 4)[0]
    assert g["num_copies"] == 3 and all(len(c) == 3 for c in g["copies"].values())
    uneven = {"canaries": good["canaries"][:3] + [{"id": 3, "variations": [{"text": "only one"}]}]}
    bare = {"canaries": [{"id": i} for i in range(4)]}
    for name, content in (("uneven", uneven), ("bare", bare)):
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
        with pytest.raises(UserError, match="same number"):
            I.build_groups(members, [f"fuzzy:{tmp_path / name}.json"], 4)
