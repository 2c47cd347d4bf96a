"""The kind registries: a kind once, unknown kinds named with the valid ones, and a kind's
module imported only when that kind is first used."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from sglguard.checks.base import Check
from sglguard.checks.http import HttpCheck
from sglguard.registry import Registry, UnknownKindError


def test_a_kind_is_registered_once_whether_by_class_or_by_path() -> None:
    registry: Registry[Check[Any]] = Registry("check")
    registry.register("http", "sglguard.checks.http:HttpCheck")
    with pytest.raises(ValueError, match="check kind 'http' is registered twice"):
        registry.register(HttpCheck)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("http", "sglguard.checks.http:HttpCheck")


def test_an_unknown_kind_names_the_valid_ones() -> None:
    registry: Registry[Check[Any]] = Registry("check")
    registry.register("http", "sglguard.checks.http:HttpCheck")
    registry.register("gpu", "sglguard.checks.gpu:GpuCheck")
    with pytest.raises(UnknownKindError, match="unknown check kind 'htp': valid kinds are "
                                               "gpu, http"):
        registry["htp"]
    assert "htp" not in registry and "gpu" in registry
    assert registry.config_models().get("htp") is None


def test_a_path_whose_class_answers_to_another_kind_is_refused_when_loaded() -> None:
    registry: Registry[Check[Any]] = Registry("check")
    registry.register("metric", "sglguard.checks.http:HttpCheck")
    with pytest.raises(TypeError, match="its kind is 'http'"):
        registry["metric"]


def test_a_path_without_a_class_name_is_refused() -> None:
    registry: Registry[Check[Any]] = Registry("check")
    with pytest.raises(TypeError, match="module:Class"):
        registry.register("http", "sglguard.checks.http")


def test_a_kinds_module_is_imported_at_its_first_use_only() -> None:
    probe = ("import sys; from sglguard.checks.registry import CHECKS\n"
             "before = 'sglguard.checks.gpu' in sys.modules\n"
             "known = 'gpu' in CHECKS and 'gpu' in sorted(CHECKS)\n"
             "model = CHECKS.config_models()['gpu'].__name__\n"
             "print(before, known, model, 'sglguard.checks.gpu' in sys.modules,"
             " CHECKS.loaded(), 'sglguard.checks.log' in sys.modules)")
    said = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.split()
    assert said == ["False", "True", "GpuCheckConfig", "True", "['gpu']", "False"]


def test_every_registered_path_loads_a_class_of_its_kind() -> None:
    from sglguard.checks.registry import CHECKS
    from sglguard.controls.registry import CONTROLS
    from sglguard.remediations.registry import REMEDIATIONS

    for registry in (CHECKS, CONTROLS, REMEDIATIONS):
        for kind in registry:
            assert getattr(registry[kind], "kind") == kind  # noqa: B009
        assert registry.loaded() == list(registry)
