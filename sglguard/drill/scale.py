"""`sglguard drill --time-scale F`: the catalog's schedule run F times as fast.

Every duration of every check (interval, timeout, jitter, window, `for:`, change_over), the
schedule of every remediation (budget `within`, backoff, cooldown, restore_after) and of the
notifications (group_wait, repeat_interval) is multiplied by F. Thresholds, the target's own
timings (start-up and stop timeouts), delivery timeouts and a remediation's verification time
are not: the server takes as long as it takes. Bounds are computed on the scaled catalog, so a
scaled drill proves the catalog's logic (which check catches which fault, after how many runs,
what repairs it), not the real-time figures: those need a drill at 1."""

from __future__ import annotations

from collections.abc import Container
from datetime import timedelta
from typing import TypeVar

from pydantic import BaseModel

from sglguard.config.models import Catalog

Model = TypeVar("Model", bound=BaseModel)

REMEDIATION_SCHEDULE = frozenset({"within", "initial", "max", "reset_after", "cooldown",
                                  "restore_after"})
NOTIFICATION_SCHEDULE = frozenset({"group_wait", "repeat_interval"})


def _scaled(model: Model, factor: float, names: Container[str] | None) -> Model:
    """A copy with each duration field (of `names`, or every one) multiplied by factor, nested
    models included."""
    update: dict[str, object] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, timedelta) and (names is None or name in names):
            update[name] = value * factor
        elif isinstance(value, BaseModel):
            update[name] = _scaled(value, factor, names)
    return model.model_copy(update=update)


def scale_catalog(catalog: Catalog, factor: float) -> Catalog:
    """The catalog with its schedule multiplied by factor (0 < factor <= 1)."""
    if not 0 < factor <= 1:
        raise ValueError(f"a time scale is a factor above 0 and at most 1, not {factor:g}")
    if factor == 1:
        return catalog
    scaled = catalog.model_copy(update={
        "checks": tuple(_scaled(check, factor, None) for check in catalog.checks),
        "remediations": tuple(_scaled(item, factor, REMEDIATION_SCHEDULE)
                              for item in catalog.remediations),
        "notifiers": tuple(_scaled(item, factor, NOTIFICATION_SCHEDULE)
                           for item in catalog.notifiers),
        "notifications": _scaled(catalog.notifications, factor, NOTIFICATION_SCHEDULE),
    })
    for cached in ("checks_by_name", "targets_by_name"):  # lookups made on the unscaled copy
        scaled.__dict__.pop(cached, None)
    return scaled
