"""Paths in what mnist-train and mnist-export print, written as mnist-infer writes them.

A file name is bytes; one that is not UTF-8 reaches Python as a str with lone surrogates, which strict
JSON parsers and UTF-8 terminals reject. `infer.output.escape_path` writes each undecodable byte as
`\\xNN` and a backslash as `\\\\` (so the text reads back unambiguously, `infer.output.unescape_path`):
every path these commands print, on stdout (JSON) and stderr (messages, logs), goes through it.
"""
from __future__ import annotations

import os

import click

from infer.output import escape_path


def shown(path: str | os.PathLike) -> str:
    """A path as text: escape_path of its str (str [any] -> str, valid UTF-8)."""
    return escape_path(os.fspath(path))


def say(message: str) -> None:
    """One line on stderr with every path in it escaped (messages hold a path as str(path))."""
    click.echo(escape_path(message), err=True)


def check_named_data(data_dir, *, env: bool = True, fix: str = "") -> None:
    """A MNIST folder the user named (--data-dir; $MNIST_DATA too when `env`) that lacks MNIST is a
    usage error before any work, in one line (`fix`: what to do instead, appended); only the user cache
    may lack it. Used by mnist-train and mnist-export."""
    from trainer.data import DataError, check_mnist_folder, named_data_dir

    named = named_data_dir(data_dir)
    if named is None or (named[1] != "--data-dir" and not env):
        return
    folder, how = named
    try:
        check_mnist_folder(folder)
    except DataError as exc:
        if how == "--data-dir":
            raise click.BadParameter(f"{exc}{fix and '; ' + fix}", param_hint="'--data-dir'") from None
        raise click.UsageError(f"{how}: {exc}{fix and '; ' + fix}") from None


class EscapingCommand(click.Command):
    """A click.Command whose error messages (usage errors included) print paths escaped, as `say` does.

    Messages are built with str(path); escaping the whole message escapes the paths in it (the rest of a
    message is plain words, with no backslash or undecodable byte of its own)."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as exc:
            exc.message = escape_path(exc.message)
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = escape_path(exc.message)
            raise
