"""Imported at the start of the Python processes that the tests start (conftest.py puts
this directory on their PYTHONPATH; a test that sets PYTHONPATH itself leaves it out):
typeguard's ``@typechecked`` becomes a no-op, as under ``python -O``.

ESPnet decorates most of its functions and classes with ``@typechecked``; typeguard
instruments each one when its module is imported (it parses and recompiles the
function's source), about half of what an ESPnet process spends importing on a CPU,
and the tiny recipe starts a few dozen of them (docs/benchmarks.md). Only the processes
that the tests start run without the checks: the pytest processes keep them, so the
tests that build and train models through ESPnet's classes in-process still run
ESPnet's type checks. With ``MAMBA_MI_TYPECHECK=1`` in the environment this file does
nothing.

It imports only what Python has loaded at startup anyway: typeguard is patched when
something first imports it.
"""

import os
import sys
from importlib.machinery import PathFinder


def _typechecked(target=None, **options):
    """``typeguard.typechecked`` that returns what it decorates unchanged."""
    return _typechecked if target is None else target


class _PatchTypeguard:
    """Meta path finder: loads typeguard as usual, then replaces its ``typechecked``."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "typeguard":
            return None
        sys.meta_path.remove(_PatchTypeguard)
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            module.typechecked = _typechecked

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("MAMBA_MI_TYPECHECK") != "1":
    sys.meta_path.insert(0, _PatchTypeguard)
