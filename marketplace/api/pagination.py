from typing import Any

from rest_framework import exceptions, pagination
from rest_framework.request import Request


class CursorPagination(pagination.CursorPagination):
    """Stable pages over growing tables: newest first, opaque cursors."""

    ordering = "-created_at"
    page_size_query_param = "limit"
    max_page_size = 200

    def decode_cursor(self, request: Request) -> Any:
        """A cursor that does not decode is bad input (400 naming it), not a missing page.

        DRF answers 404 for it, which would tell a client the list itself is gone.
        """
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise exceptions.ValidationError(
                {self.cursor_query_param: ["Invalid cursor: pass a page's next or previous link."]}
            ) from None
