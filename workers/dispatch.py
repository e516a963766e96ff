"""Send one inference to the best site, moving on to the next when a site cannot take it.

Used inline by the web process for sync requests (one retry, within the request's
deadline) and by Celery workers for async jobs.
"""

import time
from dataclasses import dataclass

from marketplace.logging import log_context

from . import routing, triton
from .routing import Candidate


class NoHealthySite(Exception):
    """No deployment of the model may take work now."""

    retry_after_seconds = 2


class SitesUnavailable(Exception):
    """Every site tried failed or was full."""

    retry_after_seconds = 1

    def __init__(self, message: str, *, busy: bool) -> None:
        super().__init__(message)
        self.message = message
        self.busy = busy


@dataclass(frozen=True, slots=True)
class Dispatched:
    response: triton.Response
    candidate: Candidate
    elapsed_us: int


def dispatch(
    *,
    model_slug: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    region_pin: str = "",
    attempts: int = 2,
    exclude: frozenset[int] = frozenset(),
) -> Dispatched:
    """Run the request on the best candidate; on ``TritonUnavailable`` try the next one.

    Raises ``NoHealthySite`` when nothing can take the model, ``SitesUnavailable``
    when every attempt failed, ``triton.TritonRejected`` when Triton refused the
    input (not retried: another site would refuse it too).
    """
    deadline = time.monotonic() + timeout
    excluded = set(exclude)
    last_error: triton.TritonUnavailable | None = None
    all_busy = True
    for _ in range(attempts):
        candidates = routing.candidates_for(
            model_slug, region_pin=region_pin, exclude=frozenset(excluded)
        )
        if not candidates:
            break
        candidate = candidates[0]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        started = time.perf_counter_ns()
        try:
            with routing.InFlight(candidate.server_id), log_context(site=candidate.site_slug):
                response = triton.call(
                    candidate.endpoint,
                    "POST",
                    candidate.infer_path,
                    body=body,
                    headers=headers,
                    timeout=remaining,
                )
        except triton.TritonBusy as exc:
            last_error = exc
        except triton.TritonUnavailable as exc:
            all_busy = False
            routing.breaker_record(candidate.server_id, ok=False)
            last_error = exc
        else:
            routing.breaker_record(candidate.server_id, ok=True)
            elapsed_us = (time.perf_counter_ns() - started) // 1000
            return Dispatched(response=response, candidate=candidate, elapsed_us=elapsed_us)
        excluded.add(candidate.server_id)
    if last_error is None:
        raise NoHealthySite(f"No site can serve {model_slug} right now.")
    raise SitesUnavailable(f"No site could take the request: {last_error.message}", busy=all_busy)
