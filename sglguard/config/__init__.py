"""The YAML catalog: models, loader and the example catalog."""

from __future__ import annotations

from sglguard.config.loader import ConfigError, find_catalog, load_catalog, parse_catalog
from sglguard.config.models import Catalog, NotifierConfig, TargetConfig

__all__ = [
    "Catalog",
    "ConfigError",
    "NotifierConfig",
    "TargetConfig",
    "find_catalog",
    "load_catalog",
    "parse_catalog",
]
