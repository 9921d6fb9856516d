"""Pages: limit/offset for the small registries, a cursor for the ever-growing usage log."""

from rest_framework.pagination import CursorPagination, LimitOffsetPagination


class RegistryPagination(LimitOffsetPagination):
    """`?limit=&offset=` over models, configs and tokens (NetBox's style)."""

    default_limit = 50
    max_limit = 1000


class UsageCursorPagination(CursorPagination):
    """Newest first, by id: a row inserted while a client pages lands before its cursor.

    Ordering by `created_at` would not be stable: it is stamped in Python before the
    insert, so under concurrency a row can be written after one stamped later and appear
    inside pages a client has already read. Ids come from the insert itself, so new rows
    go on top.
    """

    ordering = "-id"
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000
