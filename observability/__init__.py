"""Operator-facing observability: Prometheus metrics, health alerts.

``observability.metrics`` is a leaf (no models): any app may record into it.
The rest sits above every other app and only reads them.
"""
