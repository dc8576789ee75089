"""The revenue report's HTML page as a person opens it: Debian's headless Chromium renders it
(no network, no script), the rendered DOM still holds the charts with their figures and the
totals, and the screenshot shows them (the collected bars' green is on the page).

Skipped only when chromium is absent outside CI; under CI=true its absence fails (.ci/run
installs it)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing.cli.report_html import COLOURS, render_html
from billing.domain.buckets import Bucket, buckets
from billing.engine.report import BucketFigures, CurrencyReport, Figure, RevenueReport

TZ = ZoneInfo("America/Montevideo")
FROM = datetime(2026, 3, 1, 3, tzinfo=UTC)
TO = datetime(2026, 5, 1, 3, tzinfo=UTC)
HOSTILE = '<img src=x onerror="alert(1)">'


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed (apt-get install --no-install-recommends chromium)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(reason + "; CI=true: .ci/run installs it")
        pytest.skip(reason)
    return path


def sample_report() -> RevenueReport:
    cuts = buckets(FROM, TO, "month", TZ)
    uyu = CurrencyReport("UYU", [BucketFigures(b) for b in cuts])
    figures = [(120000, 30000, 59000), (250000, 59000, 0)]
    for b, (collected, failed, recovered) in zip(uyu.buckets, figures, strict=True):
        b.collected = Figure(3, collected)
        b.failed = Figure(1, failed)
        b.recovered = Figure(1 if recovered else 0, recovered)
    uyu.collected = Figure(6, 370000)
    uyu.failed_attempts = Figure(2, 89000)
    uyu.recovered = Figure(1, 59000)
    uyu.failed_invoices = Figure(2, 118000)
    uyu.recovered_of_failed = Figure(1, 59000)
    uyu.involuntary_churn = Figure(1, 59000)
    uyu.mrr_start, uyu.mrr_end = 187000, 227000
    uyu.subscriptions_start, uyu.subscriptions_end = 4, 4
    uyu.movement.update(new=118000, churned=59000, expansion=40000, moved_out=59000)
    usd = CurrencyReport("USD", [BucketFigures(Bucket(FROM, TO, HOSTILE))])
    usd.buckets[0].collected = Figure(2, 5000)
    usd.collected = Figure(2, 5000)
    usd.mrr_end, usd.subscriptions_end = 2500, 1
    usd.movement["moved_in"] = 2500
    return RevenueReport(FROM, TO, "America/Montevideo", "month", TO, [usd, uyu])


def png_pixels_with(path: Path, colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """(width, height, count of pixels of `colour`) from an 8-bit RGB/RGBA PNG, decoded with
    zlib and the five PNG row filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    target = bytes(colour)
    found = 0
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (row[i] + pred) & 0xFF
        found += sum(1 for x in range(0, stride, bpp) if row[x : x + 3] == target)
        previous = row
    return width, height, found


def tags_and_attributes(page: str) -> tuple[set[str], set[str]]:
    """Every element name and every attribute name of a page, as the HTML parser sees them."""
    tags: set[str] = set()
    attributes: set[str] = set()

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.add(tag)
            attributes.update(name for name, _ in attrs)

    Collect().feed(page)
    return tags, attributes


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)


def test_chromium_renders_the_charts_and_totals(tmp_path: Path) -> None:
    browser = chromium()
    page = render_html(sample_report(), TZ, TO)
    # Self-contained: no URL at all (inline SVG in HTML needs no xmlns), no script.
    assert "http://" not in page and "https://" not in page
    assert tags_and_attributes(page)[1] & {"src", "href", "xlink:href"} == set()
    assert "script" not in tags_and_attributes(page)[0]
    assert HOSTILE not in page and "&lt;img src=x" in page  # escaped, never markup
    html = tmp_path / "report.html"
    html.write_text(page, encoding="utf-8")
    url = html.resolve().as_uri()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2000"]

    dumped = run([*common, "--dump-dom", url])
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    charts = re.findall(r"<svg[^>]*data-chart=\"(\w+)\"[^>]*data-currency=\"(\w+)\"", dom)
    assert sorted(charts) == sorted(
        [("activity", "USD"), ("mrr", "USD"), ("activity", "UYU"), ("mrr", "UYU")]
    )
    activity = re.search(r"<svg[^>]*data-chart=\"activity\" data-currency=\"UYU\"[^>]*>", dom)
    assert activity is not None
    tag = activity.group(0)
    assert 'data-collected-minor="370000"' in tag and 'data-failed-minor="89000"' in tag
    assert 'aria-label="UYU per month: collected 3700.00' in tag
    assert len(re.findall(r'<rect data-series="collected"', dom)) == 3  # 2 UYU months + USD
    mrr = re.search(r"<svg[^>]*data-chart=\"mrr\" data-currency=\"UYU\"[^>]*>", dom)
    assert mrr is not None
    assert 'data-start-minor="187000"' in mrr.group(0)
    assert 'data-end-minor="227000"' in mrr.group(0)
    assert 'data-changes-minor="-19000"' in mrr.group(0)  # +400.00 expansion -590.00 moved out
    assert '<tr data-metric="collected" data-count="6" data-amount-minor="370000">' in dom
    assert "3700.00" in dom and "50.0%" in dom and "2270.00" in dom
    assert "img" not in tags_and_attributes(dom)[0]  # the hostile label stayed text

    shot = tmp_path / "out.png"
    shooting = run([*common, f"--screenshot={shot}", url])
    assert shooting.returncode == 0, shooting.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # a page of tables and charts, not a blank
    green = COLOURS["collected"].lstrip("#")
    rgb = (int(green[0:2], 16), int(green[2:4], 16), int(green[4:6], 16))
    width, height, count = png_pixels_with(shot, rgb)
    assert (width, height) == (1200, 2000)
    assert count > 500, count  # the collected bars are drawn, in their colour
    _, _, white = png_pixels_with(shot, (255, 255, 255))
    assert 0 < white < width * height  # not all one colour
