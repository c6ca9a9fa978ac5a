"""Arguments several commands share: where the configuration is, and typed parameters.

The configuration is found in this order, the first that is set wins:

1. ``-c``/``--config PATH``;
2. the environment variable ``SHARDQ_CONFIG``;
3. ``shardq.toml`` in the current directory.

A ``-p`` value is read as a JSON literal, so it is bound with its type:
``-p 995`` an integer, ``-p 9.5`` a float, ``-p '"42"'`` the text ``42``,
``-p null`` NULL, ``-p true`` a boolean. Any other word is bound as text, as
written: ``-p DE`` or ``-p 2024-05-01`` need no JSON quotes. JSON arrays and
objects are refused: a placeholder takes one value.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from shardq.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "PARAM_HELP",
    "add_config_argument",
    "add_param_argument",
    "at_least_one",
    "config_path",
    "parse_param",
]

CONFIG_ENV = "SHARDQ_CONFIG"
_DEFAULT_FILE = "shardq.toml"
PARAM_HELP = (
    "a value for the next positional placeholder (repeatable), read as JSON: 995 is an "
    "integer, 9.5 a float, '\"42\"' text, null, true and false; any other word is text as "
    "written (DE, 2024-05-01)"
)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``-c``/``--config``, optional: see :func:`config_path` for where it is looked for."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help=f"the configuration (default: ${CONFIG_ENV}, else ./{_DEFAULT_FILE})",
    )


def config_path(args: argparse.Namespace) -> Path:
    """The configuration file a command uses: ``-c``, else ``$SHARDQ_CONFIG``, else ./shardq.toml.

    Raises:
        ConfigError: none of the three names a file. A path given by ``-c`` or
            the environment is returned as it is; opening it reports a missing file.
    """
    if args.config:
        return Path(args.config)
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    local = Path(_DEFAULT_FILE)
    if local.is_file():
        return local
    raise ConfigError(
        f"no configuration found: give -c PATH, set ${CONFIG_ENV}, or run where a "
        f"{_DEFAULT_FILE} is (there is none in this directory; `shardq demo` writes one "
        "into ./shardq-demo)"
    )


def parse_param(text: str) -> Any:
    """One ``-p`` value: a JSON literal with its type, or else the text as written.

    >>> [parse_param(v) for v in ["995", "9.5", '"42"', "null", "true", "DE", "007"]]
    [995, 9.5, '42', None, True, 'DE', '007']
    >>> parse_param("[1, 2]")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: a placeholder takes one value, not a JSON array: '[1, 2]'
    """
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, list | dict):
        kind = "array" if isinstance(value, list) else "object"
        raise argparse.ArgumentTypeError(
            f"a placeholder takes one value, not a JSON {kind}: {text!r}"
        )
    return value


def add_param_argument(parser: argparse.ArgumentParser) -> None:
    """``-p``/``--param VALUE``, repeatable, typed by :func:`parse_param`."""
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        type=parse_param,
        metavar="VALUE",
        help=PARAM_HELP,
    )


def add_timeout_argument(parser: argparse.ArgumentParser, what: str = "the statement") -> None:
    """``-t``/``--timeout SECONDS``: ``what`` is cancelled on the shards after this long."""
    parser.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"cancel {what} on the shards after this long (default: no limit)",
    )


def at_least_one(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 1 (a count of shards, of runs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
