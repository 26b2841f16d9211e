"""One setting: the environment variable that sets it, its local default and what it means. Its own module so
that the engines, which declare the settings they read, and `settings`, which gathers every setting, import it
without importing each other."""

from __future__ import annotations

import os
from dataclasses import dataclass

from dagster import EnvVar


@dataclass(frozen=True)
class Setting:
    env_var: str
    default: str
    description: str
    integer: bool = False

    def current(self, given: str | None = None) -> str:
        """`given` (e.g. a command-line option) when set, else the environment's value, else the default."""
        return given or os.environ.get(self.env_var) or self.default

    def resource_value(self) -> EnvVar:
        """The setting as a resource field's value, which Dagster resolves when the resource is used."""
        return EnvVar.int(self.env_var) if self.integer else EnvVar(self.env_var)
