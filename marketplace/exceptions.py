"""Domain errors raised by services; ``api/errors.py`` maps them to HTTP answers."""


class DomainError(Exception):
    """Base of the errors a caller can act on. ``code`` is the API's error code."""

    code = "invalid_request"

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
