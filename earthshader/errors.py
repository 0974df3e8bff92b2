"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class UsageError(Exception):
    """Bad input from the user: a missing file, an unknown name, an output that already exists.

    The message is one line, written for the person at the terminal.
    """
