"""PII scrubbing through Presidio.

Offline, Presidio runs its pattern recognizers (EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, DATE_TIME, IP_ADDRESS,
URL, ...) on a blank spaCy pipeline; we add a pattern for written-out dates ("24 September 1984") and a deny-list
recognizer for names the user supplies. PERSON / LOCATION from free text need an NER model, chosen by `ner`:
`auto` uses a spaCy `en_core_web_*` pipeline when one is installed (else the report says that no NER ran),
`spacy:NAME` a given spaCy pipeline, `hf:MODEL` a Hugging Face token-classification model (e.g.
dslim/bert-base-NER, or a local folder), `flair:MODEL` a Flair sequence tagger (e.g. flair/ner-english; needs
`pip install flair`), `none` patterns and the deny list only. Entities are replaced by a token (`<MASK>`) or by
consistent Faker pseudonyms. Tagging is cached by content hash.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
from pathlib import Path

from ..errors import UserError


MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"


def _offline_tldextract():
    """Presidio's e-mail/URL recognizers call tldextract, which would fetch the public suffix list: use the
    snapshot bundled with tldextract instead."""
    import tldextract
    import tldextract.tldextract as tx

    tx.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


# CoNLL / OntoNotes labels of NER models -> Presidio entity types
LABELS = {"PER": "PERSON", "PERSON": "PERSON", "LOC": "LOCATION", "GPE": "LOCATION", "LOCATION": "LOCATION",
          "ORG": "ORGANIZATION", "ORGANIZATION": "ORGANIZATION", "NORP": "NRP", "DATE": "DATE_TIME"}


def ner_model(ner: str = "auto") -> str | None:
    """The NER backend `ner` resolves to, as a string for reports and cache keys (None: no NER)."""
    if ner == "none":
        return None
    if ner != "auto":
        return ner
    for name in ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf"):
        if importlib.util.find_spec(name):
            return f"spacy:{name}"
    return None


def check_ner(ner: str) -> str | None:
    """A config problem with `ner`, or None."""
    kind, _, arg = ner.partition(":")
    if ner in ("auto", "none"):
        return None
    if kind not in ("spacy", "hf", "flair") or not arg:
        return f"ner: expected auto, none, spacy:NAME, hf:MODEL or flair:MODEL, got {ner!r}"
    return None


def _model_recognizer(kind: str, model: str):
    """A Presidio recognizer around an HF token-classification pipeline or a Flair tagger."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    if kind == "hf":
        from transformers import pipeline

        from ..models import resolve

        try:
            tagger = pipeline("token-classification", model=resolve(model), aggregation_strategy="simple",
                              device=-1)
        except (OSError, ValueError) as e:
            raise UserError(f"ner: could not load token-classification model {model!r}: "
                            f"{str(e).splitlines()[0]}") from None

        def spans(text):
            return [(r["start"], r["end"], r["entity_group"], float(r["score"])) for r in tagger(text)]
    else:
        try:
            from flair.data import Sentence
            from flair.models import SequenceTagger
        except ImportError:
            raise UserError("ner: flair is not installed (pip install flair)") from None
        try:
            tagger = SequenceTagger.load(model)
        except Exception as e:  # flair raises several kinds for a missing model
            raise UserError(f"ner: could not load flair model {model!r}: {str(e).splitlines()[0]}") from None

        def spans(text):
            sent = Sentence(text)
            tagger.predict(sent)
            return [(sp.start_position, sp.end_position, sp.tag, float(sp.score)) for sp in sent.get_spans("ner")]

    class ModelNer(EntityRecognizer):
        def load(self):
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            out = []
            for start, end, label, score in spans(text):
                ent = LABELS.get(label.upper().split("-")[-1])
                if ent and (not entities or ent in entities):
                    out.append(RecognizerResult(ent, start, end, score))
            return out

    return ModelNer(supported_entities=sorted(set(LABELS.values())), name=f"{kind}:{model}")


def build_analyzer(deny_list: list[str] | None = None, ner: str = "auto"):
    import spacy
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    _offline_tldextract()
    backend = ner_model(ner)
    kind, _, name = (backend or "").partition(":")
    model = name if kind == "spacy" else None
    if model is None:
        d = Path(tempfile.mkdtemp(prefix="privlm_spacy_"))
        spacy.blank("en").to_disk(d)
        model = str(d)
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
    engine.load()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=engine)
    registry.add_recognizer(PatternRecognizer(
        supported_entity="DATE_TIME", name="WrittenDateRecognizer",
        patterns=[Pattern("written date", rf"\b\d{{1,2}} (?:{MONTHS}) \d{{4}}\b", 0.85),
                  Pattern("written date us", rf"\b(?:{MONTHS}) \d{{1,2}}, \d{{4}}\b", 0.85)]))
    if deny_list:
        registry.add_recognizer(PatternRecognizer(supported_entity="PERSON", name="DenyListNames",
                                                  deny_list=sorted(set(deny_list))))
    if kind in ("hf", "flair"):
        registry.add_recognizer(_model_recognizer(kind, name))
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"]), backend


def _cache_path(texts: list[str], settings: dict) -> Path:
    from ..models import cache_dir

    h = hashlib.sha256(json.dumps([settings, texts]).encode()).hexdigest()[:24]
    return cache_dir() / "scrub" / f"{h}.json"


def tag(texts: list[str], deny_list: list[str] | None = None, entities: list[str] | None = None,
        threshold: float = 0.3, ner: str = "auto") -> tuple[list[list[tuple[int, int, str]]], str | None]:
    """Spans (start, end, entity) per text, overlaps resolved (longest, then highest score, wins)."""
    from ..io import atomic_write_json

    settings = {"deny": sorted(set(deny_list or [])), "entities": entities, "threshold": threshold,
                "ner": ner_model(ner), "v": 1}
    path = _cache_path(texts, settings)
    if path.is_file():
        cached = json.loads(path.read_text())
        return [[tuple(s) for s in spans] for spans in cached["spans"]], cached["ner"]
    analyzer, ner = build_analyzer(deny_list, ner)
    out = []
    for text in texts:
        res = analyzer.analyze(text=text, language="en", entities=entities, score_threshold=threshold)
        res = sorted(res, key=lambda r: (-(r.end - r.start), -r.score))
        taken: list[tuple[int, int, str]] = []
        for r in res:
            if all(r.end <= s or r.start >= e for s, e, _ in taken):
                taken.append((r.start, r.end, r.entity_type))
        out.append(sorted(taken))
    atomic_write_json(path, {"spans": out, "ner": ner})
    return out, ner


TURN_KEYS = ("content", "value", "text")  # chat turns: {"role", "content"} (OpenAI/HF), {"from", "value"} (vicuna)


def _pieces(rec: dict, field: str, n: int) -> list[tuple[tuple, str]]:
    """Every string inside rec[field] with where it sits: a string, a list of strings (ECHR's facts) or a list of
    conversation turns. Anything else is refused: a field must never pass through unscrubbed silently."""
    v = rec.get(field)
    if v is None:
        return []
    if isinstance(v, str):
        return [((field,), v)]
    if isinstance(v, (list, tuple)):
        out = []
        for i, item in enumerate(v):
            if isinstance(item, str):
                out.append(((field, i), item))
            elif isinstance(item, dict) and any(isinstance(item.get(k), str) for k in TURN_KEYS):
                k = next(k for k in TURN_KEYS if isinstance(item.get(k), str))
                out.append(((field, i, k), item[k]))
            else:
                raise UserError(f"record {n}: field {field!r} holds a {type(item).__name__} at position {i}; "
                                "scrubbing handles strings, lists of strings and conversation turns")
        return out
    raise UserError(f"record {n}: field {field!r} is a {type(v).__name__}; scrubbing handles strings, lists of "
                    "strings and conversation turns")


def _put(rec: dict, where: tuple, text: str):
    if len(where) == 1:
        rec[where[0]] = text
    elif len(where) == 2:
        rec[where[0]][where[1]] = text
    else:
        rec[where[0]][where[1]][where[2]] = text


def scrub(records: list[dict], text_field: str | list[str] = "text", anon_token: str = "<MASK>",
          pseudonymize: bool = False, deny_list: list[str] | None = None, entities: list[str] | None = None,
          seed: int = 0, ner: str = "auto") -> tuple[list[dict], dict]:
    """Copies of `records` with PII replaced in every text of the given field(s); plus a report of what was found."""
    import copy

    fields = [text_field] if isinstance(text_field, str) else list(text_field)
    pieces = [(n, where, text) for n, rec in enumerate(records) for f in fields for where, text in _pieces(rec, f, n)]
    spans, ner = tag([t for _, _, t in pieces], deny_list, entities, ner=ner)
    fake, pseudo = None, {}
    if pseudonymize:
        from faker import Faker

        fake = Faker("en_US")
        fake.seed_instance(seed)
    makers = {"PERSON": "name", "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone_number", "DATE_TIME": "date",
              "LOCATION": "city", "URL": "url", "IP_ADDRESS": "ipv4", "CREDIT_CARD": "credit_card_number"}
    counts: dict[str, int] = {}
    out = [copy.deepcopy(r) for r in records]
    for (n, where, text), sp in zip(pieces, spans):
        for s, e, kind in sorted(sp, reverse=True):  # right to left keeps earlier offsets valid
            counts[kind] = counts.get(kind, 0) + 1
            if fake is not None:
                key = (kind, text[s:e])
                if key not in pseudo:
                    pseudo[key] = str(getattr(fake, makers.get(kind, "word"))())
                rep = pseudo[key]
            else:
                rep = anon_token
            text = text[:s] + rep + text[e:]
        _put(out[n], where, text)
    report = {"entities": dict(sorted(counts.items())), "records": len(records), "fields": fields,
              "texts": len(pieces), "replacement": "pseudonyms" if pseudonymize else anon_token,
              "ner": ner or ("none: no NER model installed, so PERSON/LOCATION are found only through the "
                             f"deny list ({len(set(deny_list or []))} names)")}
    return out, report


def load_deny_list(spec: str | None, records: list[dict]) -> list[str] | None:
    """A JSON list or a text file (one name per line), or `from_data`: the names listed in the records' "pii"."""
    if not spec:
        return None
    if spec == "from_data":
        return [r["pii"]["name"] for r in records if isinstance(r.get("pii"), dict) and r["pii"].get("name")]
    from ..io import read_string_list

    return read_string_list(spec, "deny list")
