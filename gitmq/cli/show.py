"""How messages and counts look on the command line (publish, consume, log, dlq)."""

from __future__ import annotations

import base64
import json
from typing import Any

from gitmq.message import Message


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def message_json(message: Message) -> dict[str, Any]:
    try:
        payload: dict[str, str] = {"payload": message.payload.decode("utf-8")}
    except UnicodeDecodeError:
        payload = {"payload_base64": base64.b64encode(message.payload).decode()}
    return {
        "id": message.id,
        "sha": message.sha,
        "time": message.time.isoformat(),
        "author": str(message.author),
        "headers": dict(message.headers),
        **payload,
        **({"undecodable": message.undecodable} if message.undecodable is not None else {}),
        **({"duplicate_of": message.duplicate_of} if message.duplicate_of is not None else {}),
    }


def entry(message: Message, as_json: bool) -> str:
    if as_json:
        return json.dumps(message_json(message))
    return f"{message.id}  {message.time.isoformat()}  {message.author}  {shown(message)}"


def shown(message: Message) -> str:
    """The payload's preview, marked when the message is undecodable or a copy."""
    text = preview(message.payload)
    if message.undecodable is not None:
        return f"[undecodable: {message.undecodable}] {text}"
    if message.duplicate_of is not None:
        return f"[copy of {message.duplicate_of[:12]}] {text}"
    return text


def preview(payload: bytes, width: int = 60) -> str:
    text = payload.decode("utf-8", "replace")
    flat = " ".join(text.split()) if text.strip() else repr(text)
    return flat if len(flat) <= width else flat[: width - 3] + "..."
