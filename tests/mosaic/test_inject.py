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
