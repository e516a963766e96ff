from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import metering


def _period(text: str) -> tuple[datetime, datetime]:
    """``2026-11`` → [2026-11-01, 2026-12-01) in UTC."""
    try:
        year, month = (int(part) for part in text.split("-"))
        start = datetime(year, month, 1, tzinfo=UTC)
    except ValueError as exc:
        raise CommandError("--period must look like 2026-11") from exc
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


class Command(BaseCommand):
    help = "Compare the ledger's usage per tenant and model with Stripe's meter event summaries."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="Calendar month, e.g. 2026-11 (UTC).")

    def handle(self, *args: Any, **options: Any) -> None:
        start, end = _period(options["period"])
        differences = metering.reconcile(start=start, end=end)
        if not differences:
            self.stdout.write(
                f"No difference between the ledger and Stripe for {options['period']}."
            )
            return
        for difference in differences:
            self.stdout.write(str(difference))
        raise CommandError(f"{len(differences)} difference(s) for {options['period']}")
