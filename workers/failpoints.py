"""Named pauses for fault-injection tests, set only through ``CANGO_FAILPOINTS``.

``CANGO_FAILPOINTS="job_before_settle=5"`` makes a worker sleep 5 s between
Triton's answer and the transaction that charges the job, so a test can kill it
there. Unset (always, outside tests) it costs one dictionary lookup.
"""

import os
import time

_PAUSES: dict[str, float] = {
    name: float(seconds)
    for name, _, seconds in (
        item.partition("=") for item in os.environ.get("CANGO_FAILPOINTS", "").split(",") if item
    )
}


def failpoint(name: str) -> None:
    pause = _PAUSES.get(name)
    if pause:
        time.sleep(pause)
