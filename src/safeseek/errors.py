"""The one exception type users see: its message is a single line that says what to fix."""


class SafeSeekError(Exception):
    """Bad input or an impossible request; the CLI prints the message and exits non-zero."""
