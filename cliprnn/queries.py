"""Text queries: validation, normalisation, and the background words that go with them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cliprnn.errors import QueryError

#: CLIP's text context length (tokens, start and end markers included).
CLIP_CONTEXT_LENGTH = 77
#: Most queries one call accepts (label maps give each query its own value).
MAX_QUERIES = 65535

# Rough stand-in for CLIP's pre-tokeniser when no tokenizer is given: words, digits and
# single punctuation marks each make at least one token.
_ROUGH_TOKENS = re.compile(r"[^\W\d_]+|\d|[^\s\w]", re.UNICODE)


@dataclass
class NormalizedQueries:
    """Queries ready for the engine, the background words left for them, and notices."""

    queries: list[str]
    background: list[str]
    warnings: list[str] = field(default_factory=list)


def synonyms(query: str, faithful: bool = True) -> list[str]:
    """The names a query stands for: itself (faithful) or its comma-separated parts (clean)."""
    if faithful:
        return [query]
    parts = [p.strip() for p in query.split(",")]
    return [p for p in parts if p] or [query]


def _token_count(text: str, tokenizer: Any | None) -> int:
    """Tokens CLIP would use for ``text``, markers included (an estimate without tokenizer)."""
    if tokenizer is None:
        return len(_ROUGH_TOKENS.findall(text.lower())) + 2
    ids = tokenizer(text)["input_ids"]
    return len(ids)


def _clean_list(values: Any, what: str) -> list[str]:
    if values is None:
        raise QueryError(f"{what} must be a list of strings, got None")
    if isinstance(values, str):
        raise QueryError(
            f"{what} must be a list of strings, not the single string {values!r}; "
            f"pass [{values!r}] for one query"
        )
    if not isinstance(values, Sequence) and not hasattr(values, "__iter__"):
        raise QueryError(f"{what} must be a list of strings, got {type(values).__name__}")
    out: list[str] = []
    for v in values:
        if not isinstance(v, str):
            raise QueryError(f"{what} must contain only strings; got {v!r} ({type(v).__name__})")
        out.append(v.strip())
    return out


def normalize_queries(
    queries: Sequence[str],
    background_words: Sequence[str],
    *,
    tokenizer: Any | None = None,
    faithful: bool = True,
) -> NormalizedQueries:
    """Check and tidy the user's queries and the background words for one call.

    Queries are stripped; empty and repeated ones are dropped (first occurrence kept). A query
    longer than CLIP's 77 tokens is kept with a warning (CLIP truncates it). Background words
    that name a query (case-insensitively; in clean mode also any of its comma-separated
    synonyms) are removed, so a query never competes with itself.
    """
    items = _clean_list(queries, "queries")
    warnings: list[str] = []
    kept: list[str] = []
    seen: set[str] = set()
    for q in items:
        if not q:
            continue
        if q in seen:
            warnings.append(f"duplicate query {q!r} ignored")
            continue
        seen.add(q)
        kept.append(q)
    if not kept:
        raise QueryError("no usable query: pass a non-empty list of non-empty strings")
    if len(kept) > MAX_QUERIES:
        raise QueryError(f"too many queries: {len(kept)} (at most {MAX_QUERIES})")
    if len(items) != len(kept) and any(not q for q in items):
        warnings.append("empty queries ignored")
    for q in kept:
        n = _token_count(q, tokenizer)
        if n > CLIP_CONTEXT_LENGTH:
            warnings.append(
                f"query {q[:40]!r}... has {n} tokens; CLIP reads only the first "
                f"{CLIP_CONTEXT_LENGTH} (including start and end markers)"
            )

    names = {q.casefold() for q in kept}
    if not faithful:
        names |= {s.casefold() for q in kept for s in synonyms(q, faithful=False)}
    background: list[str] = []
    for word in _clean_list(background_words, "background_words"):
        if not word or word in background:
            continue
        if word.casefold() in names:
            warnings.append(f"background word {word!r} removed: it is also a query")
            continue
        background.append(word)
    return NormalizedQueries(queries=kept, background=background, warnings=warnings)
