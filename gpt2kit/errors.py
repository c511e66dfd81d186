"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class GPT2KitError(ValueError):
    """Bad input from the user (a file, an argument, a config value); the message says what and where."""
