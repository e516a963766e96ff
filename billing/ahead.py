"""Holds taken ahead: credit already reserved for a sync caller's next call.

A sync call's settle may also hold credit for the same caller's next call
(``ledger.Ahead``). That hold waits here, in the web process, and the next call
takes it instead of making a hold of its own: one database round trip fewer on the
hot path. Only this process knows of it. A hold not taken within its usable time is
dropped here and freed by the expiry sweep, as the hold of a crashed process is.
"""

import os
import threading
import time

from .ledger import Hold

#: (tenant id, API key id): whose next call a hold is for.
Caller = tuple[int, int | None]

#: Holds kept per caller: about as many as the web threads that settle at once.
PER_CALLER = 4
#: Callers remembered per process; past it, no more holds are taken ahead.
CALLERS = 10_000


class _Shelf:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.holds: dict[Caller, list[tuple[float, Hold]]] = {}  # usable until (monotonic)


_shelf = _Shelf()


def _here() -> _Shelf:
    """This process's shelf: a forked child must not use the holds of its parent."""
    global _shelf
    if _shelf.pid != os.getpid():
        _shelf = _Shelf()
    return _shelf


def take(caller: Caller, amount_micros: int) -> Hold | None:
    """A usable hold of at least ``amount_micros`` for ``caller``, off the shelf; or None."""
    shelf = _here()
    now = time.monotonic()
    with shelf.lock:
        kept = shelf.holds.pop(caller, None)
        if not kept:
            return None
        usable = [(until, hold) for until, hold in kept if until > now]
        found = next(
            (i for i, (_, hold) in enumerate(usable) if hold.amount_micros >= amount_micros), None
        )
        taken = usable.pop(found)[1] if found is not None else None
        if usable:
            shelf.holds[caller] = usable
        return taken


def has_room(caller: Caller) -> bool:
    """Whether a hold taken ahead for ``caller`` would be kept."""
    shelf = _here()
    with shelf.lock:
        kept = shelf.holds.get(caller)
        if kept is None:
            return len(shelf.holds) < CALLERS
        return len(kept) < PER_CALLER


def put(caller: Caller, hold: Hold, *, usable_seconds: float) -> None:
    shelf = _here()
    with shelf.lock:
        shelf.holds.setdefault(caller, []).append((time.monotonic() + usable_seconds, hold))


def clear() -> None:
    """Forget every hold on the shelf (tests); the database keeps them until they expire."""
    shelf = _here()
    with shelf.lock:
        shelf.holds.clear()
