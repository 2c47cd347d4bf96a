"""Links to the status page for notifications, when the catalog gives `http.external_url`."""

from __future__ import annotations

from urllib.parse import quote

from sglguard.config.models import Catalog


def _base(catalog: Catalog) -> str | None:
    if catalog.http is None or catalog.http.external_url is None:
        return None
    return catalog.http.external_url.rstrip("/")


def incident_url(catalog: Catalog, incident_id: int) -> str | None:
    """The incident's page, or None when the catalog has no `http.external_url`."""
    base = _base(catalog)
    return None if base is None else f"{base}/incidents/{incident_id}"


def check_url(catalog: Catalog, check: str) -> str | None:
    """The check's page, or None when the catalog has no `http.external_url`."""
    base = _base(catalog)
    return None if base is None else f"{base}/checks/{quote(check, safe='')}"
