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
