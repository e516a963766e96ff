from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from marketplace import retention


def _days(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise CommandError("--older-than-days must be a whole number of days, at least 1.")
    return int(text)


class Command(BaseCommand):
    help = (
        "Delete the input and output of final jobs that finished more than N days ago "
        "(default JOB_PAYLOAD_RETENTION_DAYS). Status, cost, usage and the ledger are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than-days",
            help="Jobs that finished more than this many days ago (default: the setting).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count the jobs; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        raw = options["older_than_days"]
        days = _days(raw) if raw is not None else settings.JOB_PAYLOAD_RETENTION_DAYS
        if days < 1:
            self.stdout.write(
                "Retention is off (JOB_PAYLOAD_RETENTION_DAYS=0): nothing purged. "
                "Pass --older-than-days N to purge once."
            )
            return
        if options["dry_run"]:
            cutoff = timezone.now() - timedelta(days=days)
            count = retention.payload_purge_candidates(cutoff=cutoff).count()
            self.stdout.write(
                f"Dry run: {count} job(s) finished before {cutoff:%Y-%m-%d %H:%M} UTC "
                "would lose their input and output."
            )
            return
        result = retention.jobs_payload_purge(older_than_days=days)
        self.stdout.write(
            f"Purged the input and output of {result.purged} job(s) "
            f"finished before {result.cutoff:%Y-%m-%d %H:%M} UTC."
        )
