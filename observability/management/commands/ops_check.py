from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from observability import alerts


class Command(BaseCommand):
    help = (
        "Check for conditions an operator must act on (meter-event backlog, ledger/Stripe "
        "differences, sites down). Exit status 1 and one ERROR log line per alert."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force-reconcile",
            action="store_true",
            help="Ask Stripe now even if the last reconciliation is recent.",
        )
        parser.add_argument("--mail", action="store_true", help="Also mail settings.ADMINS.")

    def handle(self, *args: Any, **options: Any) -> None:
        fired = alerts.checks_run(force_reconcile=options["force_reconcile"])
        alerts.alerts_report(fired, mail=options["mail"])
        if fired:
            raise CommandError(f"{len(fired)} alert(s): {', '.join(a.name for a in fired)}")
        self.stdout.write("OK: no alert.")
