"""The storage layer: GitMQ's one boundary to Git (GitPython and the git CLI)."""

from gitmq.storage.repository import Storage

__all__ = ["Storage"]
