"""``GET /v1/balance`` and ``GET /v1/usage``: the calling key's tenant's credit and spend.

Both read through ``billing.selectors`` with the tenant id of the authenticated key,
so another tenant's numbers cannot be reached.
"""

from datetime import date, datetime, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import selectors
from marketplace.models import ApiKey

from .authentication import request_key
from .schema import errors

USAGE_MAX_DAYS = 366


class BalanceSerializer(serializers.Serializer[Any]):
    balance_micros = serializers.IntegerField(help_text="The sum of the ledger, in micro-USD.")
    reserved_micros = serializers.IntegerField(
        help_text="Held for calls in progress (their worst-case cost)."
    )
    available_micros = serializers.IntegerField(
        help_text="What new calls may spend: balance minus reserved."
    )
    currency = serializers.ChoiceField(choices=["usd"])


class UsageQuerySerializer(serializers.Serializer[Any]):
    """The period ``[start, end)`` in UTC days and how to group it."""

    start = serializers.DateField(
        required=False,
        help_text="First day included (UTC). Default: the first day of the month of `end`, "
        "or of the current month.",
    )
    end = serializers.DateField(
        required=False,
        help_text="First day not included (UTC). Default: now. At most 366 days after `start`.",
    )
    group_by = serializers.ChoiceField(
        choices=list(selectors.GROUP_BY_CHOICES), default="model", required=False
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start_day: date | None = attrs.get("start")
        end_day: date | None = attrs.get("end")
        end = selectors.day_start_utc(end_day) if end_day else timezone.now()
        if start_day is not None:
            start = selectors.day_start_utc(start_day)
        else:
            try:
                last_moment = end - timedelta(microseconds=1)
            except OverflowError:
                raise serializers.ValidationError({"end": ["Choose a later day."]}) from None
            start = selectors.month_start_utc(last_moment)
        if end <= start:
            raise serializers.ValidationError({"end": ["Must be after start."]})
        if end - start > timedelta(days=USAGE_MAX_DAYS):
            raise serializers.ValidationError(
                {"end": [f"The period is at most {USAGE_MAX_DAYS} days long."]}
            )
        return {"start": start, "end": end, "group_by": attrs.get("group_by", "model")}


class UsageRowSerializer(serializers.Serializer[Any]):
    group = serializers.CharField(
        allow_null=True,
        help_text="The model id, the UTC day (YYYY-MM-DD) or the key id; null for usage "
        "without a key.",
    )
    name = serializers.CharField(
        allow_null=True, required=False, help_text="The key's name (group_by=key only)."
    )
    units = serializers.IntegerField()
    calls = serializers.IntegerField()
    cost_micros = serializers.IntegerField()


class UsageSerializer(serializers.Serializer[Any]):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    group_by = serializers.ChoiceField(choices=list(selectors.GROUP_BY_CHOICES))
    # The response's field is named ``data``, like the other lists of the API; the
    # stubs type a serializer's ``data`` attribute as its output.
    data = UsageRowSerializer(many=True)  # type: ignore[assignment]
    total_cost_micros = serializers.IntegerField()


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class BalanceView(APIView):
    @extend_schema(responses=BalanceSerializer, summary="Your organisation's credit balance")
    def get(self, request: Request) -> Response:
        key = request_key(request)
        return Response({**selectors.balance_get(key.tenant_id), "currency": "usd"})


class UsageView(APIView):
    @extend_schema(
        parameters=[UsageQuerySerializer],
        responses={200: UsageSerializer, **errors(400)},
        summary="Your organisation's usage in a period, by model, day or key",
    )
    def get(self, request: Request) -> Response:
        key = request_key(request)
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        start, end, group_by = (query.validated_data[f] for f in ("start", "end", "group_by"))
        rows = selectors.usage_summary(key.tenant_id, start, end, group_by)
        data: list[dict[str, Any]] = [
            {
                "group": row.group,
                "units": row.units,
                "calls": row.calls,
                "cost_micros": row.cost_micros,
            }
            for row in rows
        ]
        if group_by == "day":
            for item in data:
                item["group"] = item["group"].isoformat()
        elif group_by == "key":
            _keys_named(key.tenant_id, data)
        return Response(
            {
                "start": _iso(start),
                "end": _iso(end),
                "group_by": group_by,
                "data": data,
                "total_cost_micros": sum(row.cost_micros for row in rows),
            }
        )


def _keys_named(tenant_id: int, data: list[dict[str, Any]]) -> None:
    """Replace key row ids with the keys' public ids and names, looked up in this tenant only."""
    ids = [item["group"] for item in data if item["group"] is not None]
    keys = {
        pk: (public_id, name)
        for pk, public_id, name in ApiKey.objects.filter(
            tenant_id=tenant_id, pk__in=ids
        ).values_list("pk", "public_id", "name")
    }
    for item in data:
        item["group"], item["name"] = keys.get(item["group"], (None, None))
