"""The one exception type for mistakes a user can make and fix."""


class UserError(Exception):
    """A bad config, override, path or file: printed as one line, exit status 2.

    The message names the key (or file) and says what is allowed, so the user can fix it
    without reading a traceback.
    """
