"""GitMQ: a message queue whose whole state is a Git repository."""

from typing import TYPE_CHECKING

from gitmq.consumer import Consumer
from gitmq.errors import GitMQError
from gitmq.message import Identity, Message
from gitmq.producer import Producer
from gitmq.retry import RetryPolicy
from gitmq.storage import Storage

if TYPE_CHECKING:
    from gitmq.aio import AsyncConsumer, AsyncProducer

_ASYNC = ("AsyncConsumer", "AsyncProducer")

__all__ = [
    "AsyncConsumer",
    "AsyncProducer",
    "Consumer",
    "GitMQError",
    "Identity",
    "Message",
    "Producer",
    "RetryPolicy",
    "Storage",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """The asyncio API loads on first use: ``import gitmq`` (every CLI command, every
    thread-only user) does not pay for importing asyncio."""
    if name in _ASYNC:
        from gitmq import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'gitmq' has no attribute {name!r}")
