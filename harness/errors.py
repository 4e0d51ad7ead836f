"""The harness's own error type: a one-line message a user can act on."""


class HarnessError(Exception):
    """Bad input or a missing resource; the CLI prints the message alone and exits with code 2."""
