"""What every CLI command shares: loading the config (exit 2 on a bad one), printing errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from daemon.infra import config as config_module
from daemon.infra.config import Config

EXIT_CONFIG = 2


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, default=None,
        help="TOML config file (default: $CAMPAIGND_CONFIG, else built-in defaults)",
    )


def load_config(args: argparse.Namespace) -> Config:
    """The config, or a message naming every bad key on stderr and exit code 2."""
    try:
        return config_module.load(getattr(args, "config", None))
    except config_module.ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"campaignd: {message}", file=sys.stderr)
    raise SystemExit(code)
