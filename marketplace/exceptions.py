"""Domain errors raised by services; ``api/errors.py`` maps them to HTTP answers."""


class DomainError(Exception):
    """Base of the errors a caller can act on. ``code`` is the API's error code."""

    code = "invalid_request"
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class LastOwnerError(DomainError):
    code = "last_owner"


class InvitationInvalid(DomainError):
    code = "invitation_invalid"


class PermissionDenied(DomainError):
    code = "permission_denied"


class ModelNotFound(DomainError):
    code = "model_not_found"
    status = 404


class ModelNotAllowed(DomainError):
    code = "model_not_allowed"
    status = 403


class CostUnbounded(DomainError):
    code = "cost_unbounded"
    status = 422


class JobConflict(DomainError):
    code = "idempotency_conflict"
    status = 409


class JobNotCancelable(DomainError):
    code = "job_not_cancelable"
    status = 409


class WebhookSecretChanged(DomainError):
    """The rotate form named a secret that is no longer the current one."""

    code = "webhook_secret_changed"
    status = 409


class ChargeNotRecorded(DomainError):
    """A sync call ran, but its hold was gone when it came to be charged (PostgreSQL
    lost it in a crash, or the process stalled past its expiry). The output is
    withheld rather than given away; the client retries and pays once."""

    code = "service_unavailable"
    status = 503


class ApiKeyAlreadyCreated(DomainError):
    """The key form was sent again (a refresh): its key exists; its token is not shown again."""

    code = "already_created"
    status = 409

    def __init__(self, key_name: str) -> None:
        super().__init__(
            f"This form was already sent: the key “{key_name}” was created then. Its token "
            "is shown only once; if you did not copy it, revoke that key and create another.",
            field="token",
        )
