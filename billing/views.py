"""The Stripe webhook endpoint."""

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import payments, stripe_gateway

logger = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verify the signature, then apply the event once. 400, with nothing written, if forged.

    Unknown event types are acknowledged (200) and ignored, so Stripe stops resending.
    """
    signature = request.headers.get("Stripe-Signature", "")
    try:
        event = stripe_gateway.event_verify(request.body, signature)
    except stripe_gateway.SignatureInvalid:
        logger.warning("stripe webhook: bad signature")
        return JsonResponse({"error": "invalid signature"}, status=400)
    outcome = payments.event_handle(event)
    logger.info(
        "stripe webhook", extra={"event": event["id"], "type": event["type"], "outcome": outcome}
    )
    return JsonResponse({"received": True, "outcome": outcome})
