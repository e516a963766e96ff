from rest_framework import pagination


class CursorPagination(pagination.CursorPagination):
    """Stable pages over growing tables: newest first, opaque cursors."""

    ordering = "-created_at"
    page_size_query_param = "limit"
    max_page_size = 200
