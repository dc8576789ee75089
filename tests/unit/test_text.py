"""Text in (control characters refused, lengths checked) and text out (escaped to one line)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.cards import MASK
from billing.domain.text import (
    checked_text,
    escape,
    escape_keeping_newlines,
    gateway_text,
    refuse_unsafe,
)
from billing.errors import InvalidInput
from billing.logs import EventFormatter, log_event

UNSAFE = [
    ("\x00", "a control character (U+0000)"),
    ("\t", "a control character (U+0009)"),
    ("\n", "a control character (U+000A)"),
    ("\r", "a control character (U+000D)"),
    ("\x1b", "a control character (U+001B)"),
    ("\x7f", "a control character (U+007F)"),
    ("\x85", "a control character (U+0085)"),
    ("\x9b", "a control character (U+009B)"),
    ("\u202a", "a bidirectional-text control character (U+202A)"),
    ("\u202e", "a bidirectional-text control character (U+202E)"),
    ("\u2066", "a bidirectional-text control character (U+2066)"),
    ("\u2069", "a bidirectional-text control character (U+2069)"),
    ("\u200f", "a bidirectional-text control character (U+200F)"),
    ("\u061c", "a bidirectional-text control character (U+061C)"),
    ("\u2028", "a line separator (U+2028)"),
    ("\u2029", "a line separator (U+2029)"),
    ("\u200b", "an invisible character (U+200B)"),
    ("\ufeff", "an invisible character (U+FEFF)"),
    ("\ud800", "a lone surrogate (broken Unicode) (U+D800)"),
]


@pytest.mark.parametrize(("char", "kind"), UNSAFE)
def test_unsafe_characters_are_refused_with_the_field_and_the_place(char: str, kind: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        refuse_unsafe(f"Ana{char}Lía", "first_name")
    assert str(caught.value) == f"first_name contains {kind} at character 4; remove it"
    assert char not in str(caught.value)


@pytest.mark.parametrize(
    "value",
    ["Ana Lía", "José Ñandú", "日本語", "علي", "👩‍💻 dev", "O'Brien-Smith", "مرحبا\u200cبك", ""],
)
def test_ordinary_text_of_any_script_is_accepted(value: str) -> None:
    assert checked_text(value, "first_name", 100) == value


def test_checked_text_strips_then_measures_characters() -> None:
    assert checked_text("  ñ" * 1 + "x" * 99 + " ", "first_name", 100) == "ñ" + "x" * 99
    with pytest.raises(
        InvalidInput, match=r"^first_name must be at most 100 characters \(got 101\)$"
    ):
        checked_text("x" * 101, "first_name", 100)
    with pytest.raises(InvalidInput, match="first_name must be text"):
        checked_text(5, "first_name", 100)


def test_a_trailing_newline_is_refused_not_stripped() -> None:
    with pytest.raises(InvalidInput, match=r"U\+000A"):
        checked_text("basic\n", "plan name", 200)


def test_the_length_is_checked_before_the_card_scan() -> None:
    """A huge input is refused for its length at once, whatever digits it holds."""
    with pytest.raises(InvalidInput, match="at most 500 characters"):
        checked_text("1 " * 500_000, "reason", 500)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain", "plain"),
        ("two\nlines", "two\\nlines"),
        ("cr\rlf", "cr\\rlf"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("paid\u202eDIAP", "paid\\u202eDIAP"),
        ("nel\x85", "nel\\x85"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("José 日本", "José 日本"),
    ],
)
def test_escape_makes_one_safe_line(raw: str, shown: str) -> None:
    assert escape(raw) == shown


@given(st.text())
def test_escape_never_leaves_a_line_break_or_control(raw: str) -> None:
    shown = escape(raw)
    assert len(shown.splitlines()) <= 1  # splitlines knows every line break there is
    refuse_unsafe(shown, "escaped")  # nothing unsafe is left


def test_escape_keeping_newlines_keeps_only_newlines() -> None:
    assert escape_keeping_newlines("a\nb\x1b\r") == "a\nb\\x1b\\r"


def test_gateway_text_is_masked_escaped_and_cut() -> None:
    assert gateway_text(None, 32) is None
    assert gateway_text("  ", 32) is None
    assert gateway_text("Visa 4444 3333 2222 1111", 32) == f"Visa {MASK}"
    assert gateway_text("visa\x00\x1b[2J", 32) == "visa\\x00\\x1b[2J"
    assert gateway_text("x" * 40, 32) == "x" * 32


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
@pytest.mark.parametrize(
    "value",
    ["two\nlines", "cr\r", "ls\u2028", "fake=1\nlevel=error event=forged", "back\\slash", "ñ"],
)
def test_a_log_value_never_splits_the_line(fmt: str, value: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EventFormatter(fmt))
    logger = logging.getLogger(f"test.text.{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    log_event(logger, "customer.note", note=value)
    logger.warning("free text: %s", value)
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3, lines  # exactly two lines, each ended by \n
    for line in lines[:2]:
        assert line.isascii() and line.isprintable(), line
        if fmt == "json":
            json.loads(line)
    if fmt == "logfmt":
        assert f"note={json.dumps(value)}" in lines[0]
