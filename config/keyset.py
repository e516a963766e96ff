"""Keyset pages over ``(created_at, id)``, newest first, for tables that only grow.

A page reads ``limit + 1`` rows from an index that starts with the filter and
``created_at``, whatever the table's size, and rows added while someone pages never
shift or repeat rows. A cursor is ``<microseconds since 1970>-<id>`` of a page's
oldest (``older``) or newest (``newer``) row. Used by the ledger (billing) and the
jobs list (marketplace), so it lives with neither.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from django.db.models import Model, Q, QuerySet

Row = TypeVar("Row", bound=Model)
Position = tuple[datetime, int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_RE = re.compile(r"^(\d{1,20})-(\d{1,20})$")


@dataclass(frozen=True, slots=True)
class Page(Generic[Row]):
    rows: list[Row]
    older: str | None
    newer: str | None


def cursor_encode(row: Any) -> str:
    micros = (row.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{row.pk}"


def cursor_decode(cursor: str | None) -> Position | None:
    """The (created_at, id) position a cursor names; None for a missing or malformed one."""
    match = _CURSOR_RE.match(cursor or "")
    if match is None:
        return None
    try:
        created_at = _EPOCH + timedelta(microseconds=int(match.group(1)))
    except OverflowError:
        return None
    return created_at, int(match.group(2))


def page(
    queryset: QuerySet[Row], *, before: Position | None, after: Position | None, limit: int
) -> Page[Row]:
    """The rows just older than ``before``, just newer than ``after``, or the newest.

    A position past either end gives the newest page.
    """
    if after is not None:
        created_at, pk = after
        # The explicit bound lets PostgreSQL turn the OR into an index range.
        rows = list(
            queryset.filter(created_at__gte=created_at)
            .filter(Q(created_at__gt=created_at) | Q(pk__gt=pk))
            .order_by("created_at", "id")[: limit + 1]
        )
        if rows:
            has_newer = len(rows) > limit
            rows = rows[:limit]
            rows.reverse()
            return Page(
                rows, cursor_encode(rows[-1]), cursor_encode(rows[0]) if has_newer else None
            )
    elif before is not None:
        created_at, pk = before
        rows = list(
            queryset.filter(created_at__lte=created_at)
            .filter(Q(created_at__lt=created_at) | Q(pk__lt=pk))
            .order_by("-created_at", "-id")[: limit + 1]
        )
        if rows:
            has_older = len(rows) > limit
            rows = rows[:limit]
            return Page(
                rows, cursor_encode(rows[-1]) if has_older else None, cursor_encode(rows[0])
            )
    rows = list(queryset.order_by("-created_at", "-id")[: limit + 1])
    has_older = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, cursor_encode(rows[-1]) if has_older else None, None)
