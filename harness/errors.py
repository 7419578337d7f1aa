"""The one exception type that the CLI turns into a single clear error line and exit code 2."""


class UserError(Exception):
    """Bad input from the user (file, shape, config value): the message says what and where."""
