"""Import files to rows: line numbers survive quoted newlines and blank lines, a bad row is one
row's error, and what spoils the whole file (encoding, header) is refused up front."""

from __future__ import annotations

import re

import pytest

from billing.domain.importfile import Columns, Row, file_format, parse_rows
from billing.errors import InvalidInput

COLS = Columns(required=("reference_id", "email"), optional=("first_name",), metadata=True)


def test_csv_rows_carry_the_line_they_start_on() -> None:
    text = (
        "\ufeffreference_id,email,first_name,metadata.tier\n"
        "a,a@x.uy,Ana,gold\n"
        "\n"
        'b,b@x.uy,"two\nlines",\n'
        "c,,Cat,\n"
        "d,d@x.uy\n"
        " e , e@x.uy ,,\n"
    )
    rows = parse_rows(text.encode(), "csv", COLS)
    assert rows == [
        Row(2, {"reference_id": "a", "email": "a@x.uy", "first_name": "Ana"}, {"tier": "gold"}),
        Row(4, {"reference_id": "b", "email": "b@x.uy", "first_name": "two\nlines"}),
        Row(6, error="email is required"),
        Row(7, error="has 2 cells; the header names 4"),
        Row(8, {"reference_id": "e", "email": "e@x.uy"}),
    ]


def test_jsonl_rows_one_per_line() -> None:
    text = (
        '{"reference_id": "a", "email": "a@x.uy", "metadata": {"n": 1}}\n'
        '{"reference_id": "b", "email": "b@x.uy", "colour": "red"}\n'
        "{oops\n"
        "\n"
        '"just a string"\n'
        '{"reference_id": "c", "email": null}\n'
        '{"reference_id": "d", "email": "d@x.uy", "first_name": true}\n'
        '{"reference_id": "e", "email": "e@x.uy", "metadata": "tier=gold"}\n'
        '{"reference_id": 7, "email": "f@x.uy", "metadata.tier": "gold"}\n'
    )
    rows = parse_rows(text.encode(), "jsonl", COLS)
    assert [r.line for r in rows] == [1, 2, 3, 5, 6, 7, 8, 9]
    assert rows[0] == Row(1, {"reference_id": "a", "email": "a@x.uy"}, {"n": "1"})
    assert rows[1].error is not None and "unknown field(s) colour" in rows[1].error
    assert rows[2].error is not None and rows[2].error.startswith("not valid JSON")
    assert rows[3].error == "must be a JSON object"
    assert rows[4].error == "email is required"
    assert rows[5].error == "first_name must be a string or a number"
    assert rows[6].error is not None and "metadata must be an object" in rows[6].error
    assert rows[7] == Row(9, {"reference_id": "7", "email": "f@x.uy"}, {"tier": "gold"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"reference_id,email\na,caf\xe9@x.uy\n", "line 2: the file is not UTF-8 (byte 0xe9)"),
        (b"", "the file is empty"),
        (b"reference_id,email,colour\n", "line 1: unknown column(s) colour"),
        (b"reference_id,first_name\n", "line 1: missing required column(s) email"),
        (b"reference_id,email,email\n", "line 1: column(s) email appear more than once"),
        (b"reference_id,email,metadata\n", "line 1: unknown column(s) metadata"),
    ],
)
def test_what_spoils_the_whole_file_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match="^" + re.escape(message)):
        parse_rows(data, "csv", COLS)


def test_non_utf8_jsonl_names_its_line() -> None:
    data = b'{"reference_id": "a", "email": "a@x.uy"}\n{"reference_id": "\xff"}\n'
    with pytest.raises(InvalidInput, match=r"^line 2: "):
        parse_rows(data, "jsonl", COLS)


def test_format_comes_from_the_flag_then_the_extension() -> None:
    assert file_format("x.CSV", None) == "csv"
    assert file_format("x.jsonl", None) == "jsonl"
    assert file_format("x.ndjson", None) == "jsonl"
    assert file_format("x.txt", "JSONL") == "jsonl"
    with pytest.raises(InvalidInput, match="--format"):
        file_format("x.txt", None)
    with pytest.raises(InvalidInput, match="csv or jsonl"):
        file_format("x.csv", "xlsx")
