"""Run the ledger's one-statement writes on server-side prepared statements.

Outside any transaction (a sync call's hold and settle) a statement runs on a small
per-process pool of connections handed out most-recently-used first. Django gives
each web thread its own connections, so under light load consecutive calls landed
on whichever of the threads' backends was coldest; from a pool used LIFO, the same
warm backend takes call after call, and under load the pool grows to the number of
threads that write at once (``bench/billing.py``). Inside a transaction a statement
runs on Django's connection, so it commits or rolls back with the rest.

Statements are prepared once per connection. psycopg honours ``prepare=True`` only
when the connection has a ``prepare_threshold``, which Django leaves unset unless the
settings give one (``DATABASE_PREPARE_THRESHOLD``). This needs session-level
connections: not a pooler in transaction mode that cannot carry prepared statements.
"""

import os
import threading
import time
from typing import Any

import psycopg
from django.db import connections

Row = tuple[Any, ...]
IDLE = psycopg.pq.TransactionStatus.IDLE


class _Pool:
    """Autocommit connections for one database alias, most recently used on top.

    A connection lives as long as Django's would (``CONN_MAX_AGE``, 300 s here), so
    credentials, server settings and server-side idle limits are picked up the same way.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[psycopg.Cursor[Any]] = []
        self.opened_at: dict[int, float] = {}  # id(connection) -> time.monotonic()
        max_age = connections[alias].settings_dict.get("CONN_MAX_AGE", 0)
        self.max_age = None if max_age is None else float(max_age)  # None: no limit

    def take(self) -> psycopg.Cursor[Any]:
        with self.lock:
            while self.idle:
                cursor = self.idle.pop()
                if not self._expired(cursor):
                    return cursor
                self._close(cursor)
        params = connections[self.alias].get_connection_params()
        params.pop("cursor_factory", None)  # Django's binds on the client; we prepare
        if params.get("prepare_threshold") is None:
            params["prepare_threshold"] = 1  # else psycopg ignores prepare=True
        connection = psycopg.Connection.connect(**params, autocommit=True)
        with self.lock:
            self.opened_at[id(connection)] = time.monotonic()
        return psycopg.Cursor(connection)

    def give_back(self, cursor: psycopg.Cursor[Any]) -> None:
        connection = cursor.connection
        with self.lock:
            if (
                connection.closed
                or connection.info.transaction_status != IDLE
                or self._expired(cursor)
            ):
                self._close(cursor)
                return
            self.idle.append(cursor)

    def _expired(self, cursor: psycopg.Cursor[Any]) -> bool:
        if self.max_age is None:
            return False
        opened = self.opened_at.get(id(cursor.connection), 0.0)
        return time.monotonic() - opened >= self.max_age

    def _close(self, cursor: psycopg.Cursor[Any]) -> None:
        """Close a connection taken out of the pool (call with the lock held)."""
        self.opened_at.pop(id(cursor.connection), None)
        cursor.connection.close()

    def drop_all(self) -> None:
        """Close every idle connection: after one failed, the server likely restarted."""
        with self.lock:
            idle, self.idle = self.idle, []
            for cursor in idle:
                self._close(cursor)


_pools: dict[str, _Pool] = {}
_pools_lock = threading.Lock()


#: Pools inherited through a fork. Kept referenced and never closed: closing would
#: end the parent's sessions over the sockets both processes share.
_inherited: list[_Pool] = []


def _pool(alias: str) -> _Pool:
    pool = _pools.get(alias)
    if pool is not None and pool.pid == os.getpid():
        return pool
    with _pools_lock:  # checked again: another thread may have made it meanwhile
        pool = _pools.get(alias)
        if pool is None or pool.pid != os.getpid():
            if pool is not None:
                _inherited.append(pool)
            pool = _pools[alias] = _Pool(alias)
        return pool


def run(using: str, sql: str, params: dict[str, object]) -> Row | None:
    """Run one statement, prepared; return its first row.

    Errors are raised as Django's database errors, as the ORM raises them.
    """
    wrapper = connections[using]
    if wrapper.in_atomic_block:
        with wrapper.wrap_database_errors:
            wrapper.ensure_connection()
            with psycopg.Cursor(wrapper.connection) as cursor:
                cursor.execute(sql, params, prepare=True)
                return cursor.fetchone()
    pool = _pool(using)
    with wrapper.wrap_database_errors:
        cursor = pool.take()
        try:
            cursor.execute(sql, params, prepare=True)
            row = cursor.fetchone()
        except psycopg.OperationalError:
            with pool.lock:
                pool._close(cursor)
            pool.drop_all()
            raise
        except BaseException:
            pool.give_back(cursor)
            raise
    pool.give_back(cursor)
    return row


def drop_idle() -> None:
    """Close every pool's idle connections: the database went away (or restarted), so
    they are most likely dead; the next statements connect afresh."""
    with _pools_lock:
        pools = list(_pools.values())
    for pool in pools:
        pool.drop_all()


def reset() -> None:
    """Forget the pools and close their idle connections (tests)."""
    drop_idle()
    with _pools_lock:
        _pools.clear()
