"""structlog set-up: one JSON object per line on stdout, stdlib loggers included.

Events are named `noun.verb` (catalog in docs/operations.md). Context such as
`campaign_id`/`run_id` is bound with `structlog.contextvars` or `log.bind()`.
"""

from __future__ import annotations

import enum
import logging
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

# Keys that must never reach a log line, whatever a caller binds.
_SECRET_KEYS = frozenset({"token", "password", "secret", "auth_token", "authorization",
                          "private_key", "access_token"})


def _drop_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = "***"
    return event_dict


def _json_default(value: object) -> object:
    """JSON for what json.dumps does not know: dates as RFC 3339 UTC, enums by value."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
            return value.isoformat().replace("+00:00", "Z")
        return value.isoformat()
    if isinstance(value, date | timedelta):
        return value.isoformat() if isinstance(value, date) else value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _drop_secrets,
    ]


_METHOD_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


def _at_level(_: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Drop an event below the root logger's level before any other processor runs."""
    if not logging.root.isEnabledFor(_METHOD_LEVELS.get(method_name, logging.INFO)):
        raise structlog.DropEvent
    return event_dict


class _LineWriter:
    """Where structlog's own events go: the rendered line, straight to the stream.

    The stdlib route (a LogRecord, the caller's frame looked up, the handler's lock, the
    formatter running the processors again) cost ~35 us per line, on the trigger's path and
    the engine's; this costs what rendering costs. The level is still the root logger's."""

    def __init__(self, name: str, stream: TextIO) -> None:
        self.name = name
        self._stream = stream

    def msg(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    debug = info = warning = error = critical = exception = msg


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog and the stdlib loggers (aiohttp, asyncpg) to stdout, one line per event."""
    renderer: Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(default=_json_default)
    shared = _shared_processors()
    out = stream or sys.stdout
    structlog.configure(
        processors=[
            _at_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=lambda name="daemon", *_: _LineWriter(name, out),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # aiohttp's access log is one line per request, pgserver narrates every pg_ctl call:
    # both are useful at debug only.
    for noisy in ("aiohttp.access", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def set_level(level: str) -> None:
    """Change the level at run time (SIGHUP)."""
    logging.getLogger().setLevel(LEVELS[level])


def get_logger(name: str, **context: Any) -> structlog.stdlib.BoundLogger:
    """A logger for module `name`, with `context` bound."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger.bind(**context) if context else logger
