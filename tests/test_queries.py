"""Query normalisation and synonyms."""

from __future__ import annotations

import pytest

from cliprnn.errors import QueryError
from cliprnn.queries import MAX_QUERIES, normalize_queries, synonyms

BG = ("ground", "sky", "Tree", "water")


def test_strip_drop_empty_and_duplicates_keep_order() -> None:
    out = normalize_queries(["  cat ", "", "dog", "cat", "   ", "bird"], BG)
    assert out.queries == ["cat", "dog", "bird"]
    assert out.background == list(BG)
    assert any("duplicate" in w for w in out.warnings)


def test_tuple_and_generator_accepted() -> None:
    assert normalize_queries(("a", "b"), BG).queries == ["a", "b"]
    assert normalize_queries((q for q in ["a", "b"]), BG).queries == ["a", "b"]


def test_bare_string_is_rejected_with_a_hint() -> None:
    with pytest.raises(QueryError, match=r"\['cat'\]"):
        normalize_queries("cat", BG)


def test_non_string_items_rejected() -> None:
    with pytest.raises(QueryError, match="only strings"):
        normalize_queries(["cat", 3], BG)
    with pytest.raises(QueryError):
        normalize_queries(None, BG)  # type: ignore[arg-type]


def test_nothing_left_raises() -> None:
    with pytest.raises(QueryError, match="no usable query"):
        normalize_queries(["", "  "], BG)
    with pytest.raises(QueryError, match="no usable query"):
        normalize_queries([], BG)


def test_too_many_queries() -> None:
    many = [f"q{i}" for i in range(MAX_QUERIES + 1)]
    with pytest.raises(QueryError, match="65535"):
        normalize_queries(many, BG)
    assert len(normalize_queries(many[:MAX_QUERIES], ()).queries) == 65535


def test_background_word_equal_to_query_removed() -> None:
    out = normalize_queries(["Sky", "tree ", "boat"], BG)
    assert out.background == ["ground", "water"]
    assert sum("background word" in w for w in out.warnings) == 2


def test_background_partial_match_is_kept() -> None:
    out = normalize_queries(["sky scraper", "water bottle"], BG)
    assert out.background == list(BG)


def test_clean_mode_removes_background_matching_a_synonym() -> None:
    q = ["lake,water", "cat"]
    assert "water" in normalize_queries(q, BG, faithful=True).background
    assert "water" not in normalize_queries(q, BG, faithful=False).background


def test_non_ascii_kept() -> None:
    out = normalize_queries(["café au lait", "猫", "Ünïcödé"], BG)
    assert out.queries == ["café au lait", "猫", "Ünïcödé"]


def test_long_query_warns_without_tokenizer() -> None:
    long = " ".join(["word"] * 80)
    out = normalize_queries([long, "cat"], BG)
    assert out.queries == [long, "cat"]
    assert any("82 tokens" in w for w in out.warnings)  # 80 words + start and end markers
    assert not any("tokens" in w for w in normalize_queries(["a big red cat"], BG).warnings)


def test_long_query_counted_with_tokenizer() -> None:
    calls = []

    def tokenizer(text: str) -> dict[str, list[int]]:
        calls.append(text)
        return {"input_ids": list(range(len(text) + 2))}

    out = normalize_queries(["x" * 76, "y" * 75], BG, tokenizer=tokenizer)
    assert calls == ["x" * 76, "y" * 75]
    assert [w for w in out.warnings if "tokens" in w] == [
        w for w in out.warnings if "78 tokens" in w
    ]
    assert len([w for w in out.warnings if "tokens" in w]) == 1


def test_synonyms() -> None:
    name = "person with clothes,people,human"
    assert synonyms(name, faithful=True) == [name]
    assert synonyms(name, faithful=False) == ["person with clothes", "people", "human"]
    assert synonyms(" a , ,b ", faithful=False) == ["a", "b"]
    assert synonyms(",", faithful=False) == [","]
