from celery import shared_task

from . import alerts


@shared_task(
    name="observability.ops_check",
    acks_late=False,
    ignore_result=True,
    soft_time_limit=120,
    time_limit=150,
)
def ops_check() -> list[str]:
    """The operator alerts, every few minutes (beat); mails ``ADMINS`` when one fires."""
    fired = alerts.checks_run()
    alerts.alerts_report(fired, mail=True)
    return [alert.name for alert in fired]
