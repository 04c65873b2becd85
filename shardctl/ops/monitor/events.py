"""What ``shardctl monitor`` says: one event per thing it saw or did."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

Value = str | int | float | bool | None


@dataclass(frozen=True)
class Event:
    """One thing the monitor saw or did: a timestamped line on stderr, or a JSON line."""

    kind: str
    message: str
    shard: str | None = None
    command: str | None = None
    data: dict[str, Value] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def line(self) -> str:
        """``2026-12-07T01:02:03.456Z shard-0 promote: ...`` (and the command, if any)."""
        stamp = self.at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.at.microsecond // 1000:03d}Z"
        where = f" {self.shard}" if self.shard else ""
        tail = f" -- run: {self.command}" if self.command else ""
        return f"{stamp}{where} {self.kind}: {self.message}{tail}"

    def facts(self) -> dict[str, Value]:
        """The event as one JSON object."""
        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "shard": self.shard,
            "message": self.message,
            "command": self.command,
            **self.data,
        }


Emit = Callable[[Event], None]
