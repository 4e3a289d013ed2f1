"""The one exception users see: a problem they can fix, with the fix in the message."""


class UserError(Exception):
    """Bad input or state the user can fix; the CLI prints the message and exits 2."""
