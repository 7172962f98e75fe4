"""A synthetic PII-bearing corpus made by the project (Faker), for offline demos and tests of private fine-tuning.

Each record is a short case summary naming people, dates, addresses, e-mail addresses and phone numbers, and
lists those strings under "pii" so that extraction can be measured against ground truth.
"""
from __future__ import annotations

import random

TEMPLATES = [
    "On {date}, {name} of {address} filed a complaint against {company}. The applicant can be reached at {email} "
    "or by phone at {phone}.",
    "The court heard that {name}, born on {date}, lived at {address} until the dispute with {company} began. "
    "Contact details on file: {phone}, {email}.",
    "{name} wrote to the registry from {email} on {date}, asking that letters be sent to {address}. "
    "A representative of {company} answered by phone at {phone}.",
]


def records(n: int, seed: int = 0, people: int | None = None) -> list[dict]:
    """`n` records. With `people` < n, records are about that many people (record i about person i mod people), each
    with one name, address, e-mail and phone across all their records, as real case files repeat a person's
    details; the date and the company change from record to record."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    people = n if people is None else people
    out = []
    for i in range(n):
        pii = {"name": fake.name(), "date": fake.date(pattern="%d %B %Y"), "address": fake.address().replace("\n", ", "),
               "email": fake.email(), "phone": fake.phone_number(), "company": fake.company()}
        if i >= people:  # the same person again (drawn above all the same: the stream stays as without people)
            pii.update({k: out[i % people]["pii"][k] for k in ("name", "address", "email", "phone")})
        text = rng.choice(TEMPLATES).format(**pii)
        out.append({"id": i, "text": text, "pii": pii})
    return out
