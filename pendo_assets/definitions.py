"""The single Dagster `Definitions` of pendo-planhat, loaded by ``workspace.yaml``.

The config comes from ``PENDO_PLANHAT_CONFIG`` (default ``./pendo_planhat.yaml``); an invalid
or missing config fails the code location with a message naming the file, line and key.
"""

from __future__ import annotations

from .build import build_definitions
from .config import load_config

defs = build_definitions(load_config())
