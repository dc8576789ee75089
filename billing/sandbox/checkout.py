"""The hosted tokenization page a customer would see (`GET /sandbox/checkout/{sessionId}`).

A tiny HTML form: the person at the keyboard (or the demo) types a test card and the session is
completed as if Plexo's hosted page had saved it. The card number is posted to the simulator and
never written back into a page.
"""

from __future__ import annotations

from html import escape

from billing.sandbox.cards import TEST_CARDS


def card_table_html() -> str:
    rows = "\n".join(
        f"<tr><td><code>{card.number}</code></td><td>{escape(card.brand)}</td>"
        f"<td>{escape(card.card_type)}</td><td>{escape(card.note)}</td></tr>"
        for card in TEST_CARDS.values()
    )
    return (
        "<table><thead><tr><th>Card number</th><th>Brand</th><th>Type</th><th>Outcome</th>"
        f"</tr></thead><tbody>\n{rows}\n</tbody></table>"
    )


def checkout_page(session_id: str, status: str, message: str | None = None) -> str:
    """The page for one session: a notice, the form while the session is open, the card table."""
    notice = f"<p><strong>{escape(message)}</strong></p>" if message else ""
    form = ""
    if status == "open":
        form = (
            f'<form method="post" action="/sandbox/checkout/{escape(session_id)}">'
            '<label>Card number <input name="cardNumber" autocomplete="off"></label> '
            '<label>Month <input name="expMonth" value="12" size="2"></label> '
            '<label>Year <input name="expYear" value="2030" size="4"></label> '
            '<button type="submit">Save card</button></form>'
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Plexo sandbox checkout</title>"
        "</head><body><h1>Plexo sandbox checkout</h1>"
        f"<p>Tokenization session <code>{escape(session_id)}</code>: {escape(status)}</p>"
        f"{notice}{form}<h2>Test cards</h2>{card_table_html()}"
        "<p>Any expiry in the future; any other Luhn-valid number approves.</p></body></html>"
    )
