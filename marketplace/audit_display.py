"""How audit events read on the portal's and the console's pages and in CSV.

Shared by ``views`` (a tenant's own events) and ``ops`` (everyone's), so an event
reads the same to its tenant's owner and to staff.
"""

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC

from .models import AuditEvent

AUDIT_CSV_COLUMNS = (
    "created_at",
    "actor",
    "action",
    "target_type",
    "target_id",
    "reason",
    "details",
)

#: The details column shows at most this many characters of an event's metadata.
DETAILS_MAX_CHARS = 300


def _change_text(name: str, change: object) -> str:
    if isinstance(change, dict) and set(change) == {"from", "to"}:
        return f"{name}: {_short(change['from'])} → {_short(change['to'])}"
    return f"{name}: {_short(change)}"


def _short(value: object) -> str:
    if value is None or value == "":
        return "—"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def audit_details(event: AuditEvent) -> str:
    """The event's metadata as one line: ``role: developer → admin; name: ci``."""
    parts: list[str] = []
    for key, value in (event.metadata or {}).items():
        if key == "changes" and isinstance(value, dict):
            parts += [_change_text(name, change) for name, change in value.items()]
        else:
            parts.append(f"{key}: {_short(value)}")
    text = "; ".join(parts)
    return text if len(text) <= DETAILS_MAX_CHARS else text[: DETAILS_MAX_CHARS - 1] + "…"


def audit_row(event: AuditEvent, *, with_tenant: bool = False) -> dict[str, object]:
    """A table row; ``with_tenant`` (the console) reads ``event.tenant``, joined by the query."""
    return {
        "created_at": event.created_at,
        "actor": event.actor_label,
        "action": event.action,
        "action_label": event.action_label,
        "target": f"{event.target_type} {event.target_id}".strip(),
        "reason": event.reason,
        "details": audit_details(event),
        "tenant": event.tenant if with_tenant else None,
    }


class _Line:
    """A file-like target for ``csv.writer`` that hands back each line it is given."""

    def write(self, value: str) -> str:
        return value


def _cell(value: str) -> str:
    # A cell starting with one of these runs as a formula when opened in a spreadsheet.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def audit_csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """The events as CSV lines, header first; generated one row at a time."""
    writer = csv.writer(_Line())
    yield writer.writerow(AUDIT_CSV_COLUMNS)
    for event in events:
        yield writer.writerow(
            (
                event.created_at.astimezone(UTC).isoformat(),
                _cell(event.actor_label),
                event.action,
                event.target_type,
                _cell(event.target_id),
                _cell(event.reason),
                _cell(json.dumps(event.metadata, ensure_ascii=False, sort_keys=True)),
            )
        )
