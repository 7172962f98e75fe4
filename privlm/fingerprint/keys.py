"""The fingerprints file format: a JSON list of {"key": str, "response": str} (extra fields such as "strategy" or
"response_prob" are kept). `response` may also be a list of strings (scalable fingerprinting's several responses
per key: each is trained, and the key counts when any of them is produced). Custom keys: a JSON list of strings."""
from __future__ import annotations

from ..errors import UserError
from ..io import read_json


def load(path: str, num: int | None = None, data_split: int = 0) -> list[dict]:
    """Read and validate a fingerprints file; return entries [data_split*num, (data_split+1)*num)."""
    items = read_json(path, "fingerprints file")
    if not isinstance(items, list):
        raise UserError(f"fingerprints file {path} must hold a JSON list of {{\"key\", \"response\"}} objects")
    if not items:
        raise UserError(f"fingerprints file {path} holds no fingerprints")
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise UserError(f"fingerprints file {path}: entry {i} is not an object with \"key\" and \"response\"")
        for k in ("key", "response"):
            if k not in it:
                raise UserError(f"fingerprints file {path}: entry {i} has no \"{k}\"")
            v = it[k]
            ok = isinstance(v, str) and v.strip() or (k == "response" and isinstance(v, list) and v and all(
                isinstance(r, str) and r.strip() for r in v))
            if not ok:
                raise UserError(f"fingerprints file {path}: entry {i} has an empty or non-string \"{k}\""
                                + (" (a response may be a non-empty list of strings)" if k == "response" else ""))
    if num is None:
        return items
    start, end = data_split * num, (data_split + 1) * num
    if end > len(items):
        raise UserError(f"fingerprints file {path} has {len(items)} fingerprints, fewer than the "
                        f"{end} needed for num_fingerprints={num} with data_split={data_split}")
    return items[start:end]


def responses(fp: dict) -> list[str]:
    """A fingerprint's responses: one, or several."""
    r = fp["response"]
    return [r] if isinstance(r, str) else list(r)


def load_keys(path: str) -> list[str]:
    keys = read_json(path, "keys file")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k.strip() for k in keys):
        raise UserError(f"keys file {path} must hold a non-empty JSON list of non-empty strings")
    return keys


