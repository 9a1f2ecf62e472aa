"""Runtimes: one interface (:class:`Runtime`) to run any artifact on the same named inputs."""

from wconv_deploy.runtimes.base import Runtime, outputs_of

__all__ = ["Runtime", "outputs_of"]
