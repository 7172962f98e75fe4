"""The fingerprints file format: a JSON list of {"key": str, "response": str} (extra fields such as "strategy" or
"response_prob" are kept). Custom keys: a JSON list of strings."""
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
            if not isinstance(it[k], str) or not it[k].strip():
                raise UserError(f"fingerprints file {path}: entry {i} has an empty or non-string \"{k}\"")
    if num is None:
        return items
    start, end = data_split * num, (data_split + 1) * num
    if end > len(items):
        raise UserError(f"fingerprints file {path} has {len(items)} fingerprints, fewer than the "
                        f"{end} needed for num_fingerprints={num} with data_split={data_split}")
    return items[start:end]


def load_keys(path: str) -> list[str]:
    keys = read_json(path, "keys file")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k.strip() for k in keys):
        raise UserError(f"keys file {path} must hold a non-empty JSON list of non-empty strings")
    return keys


