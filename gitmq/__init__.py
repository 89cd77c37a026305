"""GitMQ: a message queue whose whole state is a Git repository."""

from gitmq.consumer import Consumer
from gitmq.errors import GitMQError
from gitmq.message import Identity, Message
from gitmq.producer import Producer
from gitmq.retry import RetryPolicy
from gitmq.storage import Storage

__all__ = [
    "Consumer",
    "GitMQError",
    "Identity",
    "Message",
    "Producer",
    "RetryPolicy",
    "Storage",
]
__version__ = "0.1.0"
