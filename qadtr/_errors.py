"""The one exception type for user mistakes (bad flags, missing data, corrupt checkpoints).

CLIs catch `QadtrError`, print its message on one line and exit 1; anything else is a bug
and keeps its traceback (Polygraphy's user-vs-internal split).
"""


class QadtrError(Exception):
    """A user-facing error whose message names the fix."""
