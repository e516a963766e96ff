"""Browser pages: hosted Checkout, hosted invoice (HTML and PDF), charge receipts.

Plain HTML forms, one inline stylesheet, no scripts and no external assets. The
checkout page pays with one of three buttons: a card that succeeds, a bank debit that
settles later (``POST /_test/checkout/{id}/settle``), or a card that is declined.
"""

from __future__ import annotations

import html
from urllib.parse import quote

from .billing import invoice_summary
from .core import amount_text
from .errors import StripeError
from .formdata import get_str
from .objects import Obj
from .payments import complete_session, get_session
from .routing import Ctx, Response, route

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;background:#f6f8fa;color:#1a1f36;
margin:0;padding:40px 16px}
main{max-width:520px;margin:0 auto;background:#fff;border-radius:8px;padding:32px;
box-shadow:0 2px 8px rgba(0,0,0,.08)}
h1{font-size:20px;margin:0 0 4px}.muted{color:#697386;font-size:14px}
table{width:100%;border-collapse:collapse;margin:20px 0}td{padding:6px 0;font-size:14px}
td.r{text-align:right}tr.total td{border-top:1px solid #e3e8ee;font-weight:600}
.amount{font-size:32px;font-weight:600;margin:12px 0}
button{display:block;width:100%;padding:12px;margin:8px 0;border:0;border-radius:6px;
font-size:16px;cursor:pointer;background:#635bff;color:#fff}
button.alt{background:#fff;color:#635bff;border:1px solid #635bff}
button.bad{background:#fff;color:#c0123c;border:1px solid #c0123c}
.error{background:#fdecef;color:#c0123c;padding:10px;border-radius:6px;font-size:14px}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;background:#e3e8ee;font-size:12px}
a{color:#635bff}
"""

PAY_METHODS = {"card": "paid", "delayed": "delayed", "decline": "declined"}


def _page(title: str, body: str, status: int = 200) -> Response:
    document = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )
    return Response(status, document.encode("utf-8"), "text/html; charset=utf-8")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _checkout_body(ctx: Ctx, session: Obj, error: str | None) -> str:
    items = ctx.state.hidden(session["id"]).get("line_items", [])
    rows = "".join(
        f"<tr><td>{_e(item['description'])} × {item['quantity']}</td>"
        f"<td class='r'>{_e(amount_text(item['amount_total'], item['currency']))}</td></tr>"
        for item in items
    )
    total = amount_text(session["amount_total"], session["currency"])
    email = session["customer_email"]
    customer = ctx.state.objects.get(session["customer"] or "")
    if email is None and customer is not None:
        email = customer["email"]
    saving = ctx.state.hidden(session["id"]).get("setup_future_usage") is not None
    parts = [
        f"<p class='muted'>{_e(ctx.state.options.account_name)} · test mode</p>",
        "<h1>Pay</h1>",
        f"<div class='amount'>{_e(total)}</div>",
        f"<table>{rows}<tr class='total'><td>Total due</td><td class='r'>{_e(total)}</td></tr>"
        "</table>",
    ]
    if email:
        parts.append(f"<p class='muted'>Email: {_e(email)}</p>")
    if saving:
        parts.append("<p class='muted'>Your card will be saved for future payments.</p>")
    if error:
        parts.append(f"<p class='error' role='alert'>{_e(error)}</p>")
    action = f"/checkout/{quote(session['id'])}/pay"
    parts.append(
        f"<form method='post' action='{_e(action)}'>"
        f"<button type='submit' name='method' value='card'>Pay {_e(total)}</button>"
        "<button type='submit' name='method' value='delayed' class='alt'>"
        "Pay by bank transfer (delayed)</button>"
        "<button type='submit' name='method' value='decline' class='bad'>"
        "Pay with a card that is declined</button></form>"
    )
    if session["cancel_url"]:
        parts.append(f"<p><a href='{_e(session['cancel_url'])}'>Cancel</a></p>")
    return "".join(parts)


def _closed_body(session: Obj) -> str:
    if session["status"] == "complete":
        state = "received" if session["payment_status"] == "paid" else "processing"
        link = (
            f"<p><a href='{_e(success_url(session))}'>Continue</a></p>"
            if session["success_url"]
            else ""
        )
        return (
            f"<h1>Payment {state}</h1><p class='muted'>This checkout session is complete.</p>"
            + link
        )
    return "<h1>Session expired</h1><p class='muted'>This checkout session has expired.</p>"


def success_url(session: Obj) -> str:
    """The session's ``success_url`` with ``{CHECKOUT_SESSION_ID}`` filled in."""
    return str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session["id"])


@route("GET", "/checkout/{id}", kind="page")
def checkout_page(ctx: Ctx) -> Response:
    """The hosted checkout page of a session."""
    try:
        session = get_session(ctx.state, ctx.args["id"])
    except StripeError:
        return _page("Not found", "<h1>Checkout session not found</h1>", 404)
    if session["status"] != "open":
        return _page("Checkout", _closed_body(session), 200)
    return _page("Checkout", _checkout_body(ctx, session, None))


@route("POST", "/checkout/{id}/pay", kind="page")
def checkout_pay(ctx: Ctx) -> Response:
    """The checkout form's submit: pay, then 303 to ``success_url`` (or show the decline)."""
    try:
        session = get_session(ctx.state, ctx.args["id"])
    except StripeError:
        return _page("Not found", "<h1>Checkout session not found</h1>", 404)
    if session["status"] != "open":
        return _page("Checkout", _closed_body(session), 409)
    method = get_str(ctx.params, "method") or "card"
    outcome = PAY_METHODS.get(method)
    if outcome is None:
        return _page("Checkout", _checkout_body(ctx, session, f"Unknown method {method}"), 400)
    error = complete_session(ctx.state, session, outcome)
    if error is not None:
        return _page("Checkout", _checkout_body(ctx, session, error), 402)
    if session["success_url"]:
        return Response(303, b"", "text/plain", {"Location": success_url(session)})
    return _page("Checkout", _closed_body(session))


def _invoice_rows(invoice: Obj) -> list[tuple[str, int]]:
    rows = [(line["description"] or "", line["amount"]) for line in invoice["lines"]["data"]]
    for entry in invoice["total_pretax_credit_amounts"] or []:
        rows.append(("Credit grant applied", -entry["amount"]))
    return rows


@route("GET", "/invoices/{id}", kind="page")
def invoice_page(ctx: Ctx) -> Response:
    """The hosted invoice page."""
    invoice = ctx.state.objects.get(ctx.args["id"])
    if invoice is None or invoice.get("object") != "invoice":
        return _page("Not found", "<h1>Invoice not found</h1>", 404)
    currency = invoice["currency"]
    totals = invoice_summary(invoice)
    rows = "".join(
        f"<tr><td>{_e(text)}</td><td class='r'>{_e(amount_text(amount, currency))}</td></tr>"
        for text, amount in _invoice_rows(invoice)
    )
    body = (
        f"<p class='muted'>{_e(ctx.state.options.account_name)} · test mode</p>"
        f"<h1>Invoice {_e(invoice['number'] or invoice['id'])}</h1>"
        f"<span class='badge'>{_e(invoice['status'])}</span>"
        f"<div class='amount'>{_e(amount_text(totals['amount_due'], currency))}</div>"
        f"<table>{rows}"
        f"<tr class='total'><td>Subtotal</td><td class='r'>"
        f"{_e(amount_text(totals['subtotal'], currency))}</td></tr>"
        f"<tr><td>Credits</td><td class='r'>-{_e(amount_text(totals['credits'], currency))}"
        "</td></tr>"
        f"<tr class='total'><td>Amount due</td><td class='r'>"
        f"{_e(amount_text(totals['amount_due'], currency))}</td></tr></table>"
        f"<p><a href='/invoices/{_e(invoice['id'])}/pdf'>Download PDF</a></p>"
    )
    return _page(f"Invoice {invoice['number']}", body)


def _pdf_text(text: str) -> str:
    latin = text.replace("×", "x").encode("latin-1", "replace").decode("latin-1")
    return latin.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def render_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with the given lines of Helvetica text."""
    ops = ["BT", "/F1 11 Tf", "50 790 Td", "15 TL"]
    ops += [f"({_pdf_text(line)}) Tj T*" for line in lines]
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(bodies) + 1,
        xref,
    )
    return bytes(out)


@route("GET", "/invoices/{id}/pdf", kind="page")
def invoice_pdf(ctx: Ctx) -> Response:
    """The invoice as a (small, real) PDF."""
    invoice = ctx.state.objects.get(ctx.args["id"])
    if invoice is None or invoice.get("object") != "invoice":
        return _page("Not found", "<h1>Invoice not found</h1>", 404)
    currency = invoice["currency"]
    totals = invoice_summary(invoice)
    lines = [
        f"{ctx.state.options.account_name} - TEST MODE",
        f"Invoice {invoice['number'] or invoice['id']}  ({invoice['status']})",
        f"Customer {invoice['customer']}",
        "",
        *(f"{text}: {amount_text(amount, currency)}" for text, amount in _invoice_rows(invoice)),
        "",
        f"Subtotal: {amount_text(totals['subtotal'], currency)}",
        f"Credits: -{amount_text(totals['credits'], currency)}",
        f"Amount due: {amount_text(totals['amount_due'], currency)}",
    ]
    filename = f"Invoice-{invoice['number'] or invoice['id']}.pdf"
    return Response(
        200,
        render_pdf(lines),
        "application/pdf",
        {"Content-Disposition": f'inline; filename="{filename}"'},
    )


@route("GET", "/receipts/{id}", kind="page")
def receipt_page(ctx: Ctx) -> Response:
    """A charge's receipt."""
    ch = ctx.state.objects.get(ctx.args["id"])
    if ch is None or ch.get("object") != "charge":
        return _page("Not found", "<h1>Receipt not found</h1>", 404)
    body = (
        f"<p class='muted'>{_e(ctx.state.options.account_name)} · test mode</p>"
        f"<h1>Receipt</h1><div class='amount'>{_e(amount_text(ch['amount'], ch['currency']))}"
        f"</div><p class='muted'>Charge {_e(ch['id'])} · {_e(ch['status'])}"
        f" · refunded {_e(amount_text(ch['amount_refunded'], ch['currency']))}</p>"
    )
    return _page("Receipt", body)
