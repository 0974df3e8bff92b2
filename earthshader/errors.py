"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

import argparse


class UsageError(Exception):
    """Bad input from the user: a missing file, an unknown name, an output that already exists.

    The message is one line, written for the person at the terminal.
    """


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are a :class:`UsageError`: one line and exit 2, through the dispatcher."""

    def error(self, message: str):
        raise UsageError(message)


class ConfigError(UsageError, ValueError):
    """A setting the code cannot use (an argument or an environment variable): a one-line
    :class:`UsageError` at the terminal, a ``ValueError`` to library callers."""
