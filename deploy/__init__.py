"""One-machine tooling: run the whole system (``deploy.run``) and the tests (``deploy.testrun``).

``deploy.services`` holds what both share: finding or starting Redis and PostgreSQL,
and a small process supervisor.
"""
