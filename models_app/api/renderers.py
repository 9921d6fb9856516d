"""CSV for spreadsheets and billing scripts: `?format=csv` or `Accept: text/csv`."""

import csv
import io
from collections.abc import Mapping
from typing import Any

from rest_framework.renderers import BaseRenderer

# A cell starting with one of these is a formula to Excel and LibreOffice; a token
# name like "=HYPERLINK(...)" must stay text (OWASP's CSV injection advice).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula (a leading = + - @ is quoted); None is empty."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


class CSVRenderer(BaseRenderer):
    """Renders `results` (a list of flat dicts) with the view's `csv_columns` as the header."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None
    ) -> bytes:
        rows = data.get("results", []) if isinstance(data, Mapping) else data or []
        view = (renderer_context or {}).get("view")
        columns = list(getattr(view, "csv_columns", ()) or (rows[0].keys() if rows else ()))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(row.get(column)) for column in columns])
        return buffer.getvalue().encode(self.charset)
