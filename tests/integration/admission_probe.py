"""WSGI entry point for tests: the project's application, with every in-flight slot
taken and given back written to ``ADMISSION_PROBE_LOG``.

Each line is ``admit|release <monotonic seconds> <member>``, written right *after*
the slot was taken and right *before* it is released, so the logged intervals lie
inside the real ones: their overlap can only under-state how many calls the web
processes held at once, never over-state it. (``time.monotonic`` is one clock for
every process on the machine.)
"""

import os
import time

from config.wsgi import application
from marketplace import ratelimits

_admit, _release = ratelimits.admit, ratelimits.release
_LOG = os.environ["ADMISSION_PROBE_LOG"]


def _write(event: str, member: str) -> None:
    with open(_LOG, "a") as log:
        log.write(f"{event} {time.monotonic():.6f} {member}\n")


def _admit_logged(**kwargs: object) -> ratelimits.Admission:
    admission = _admit(**kwargs)  # type: ignore[arg-type]
    _write("admit", admission.member)
    return admission


def _release_logged(admission: ratelimits.Admission) -> None:
    _write("release", admission.member)
    _release(admission)


ratelimits.admit = _admit_logged
ratelimits.release = _release_logged

__all__ = ["application"]
