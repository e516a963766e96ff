from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from workers import services


class Command(BaseCommand):
    help = "Register a Triton server (and its ready models) by reading its repository index."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--site", required=True, help="Site slug (created if new).")
        parser.add_argument("--url", required=True, help="HTTP URL, e.g. http://127.0.0.1:8000")
        parser.add_argument("--grpc-url", default="")
        parser.add_argument("--metrics-url", default="")
        parser.add_argument("--region", default="local")
        parser.add_argument("--power-price", default="0", help="USD per MWh.")
        parser.add_argument("--server-name", default="triton-1")
        parser.add_argument("--models", default="", help="Comma-separated; default all ready.")
        parser.add_argument(
            "--defaults", default="", help="JSON file of catalog defaults for new models."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        deployments = services.server_register(
            site_slug=options["site"],
            http_url=options["url"],
            grpc_url=options["grpc_url"],
            metrics_url=options["metrics_url"],
            region=options["region"],
            power_price_usd_per_mwh=Decimal(options["power_price"]),
            server_name=options["server_name"],
            models=[m for m in options["models"].split(",") if m] or None,
            defaults=services.defaults_load(options["defaults"]) if options["defaults"] else None,
        )
        for deployment in deployments:
            self.stdout.write(f"{options['site']}: {deployment.model.slug}")
