"""Argument parsing shared by the tool commands (``vit export|predict|eval|explain``)."""

from __future__ import annotations

import argparse


def parse_or_exit_code(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed arguments, or argparse's exit code after ``--help`` or a usage error.

    argparse raises ``SystemExit``; the tools' ``main`` functions return exit codes instead, so
    they can be called (and tested) as functions.
    """
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
