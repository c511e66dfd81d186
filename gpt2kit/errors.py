"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class GPT2KitError(ValueError):
    """Bad input from the user (a file, an argument, a config value); the message says what and where.

    `setting` names the setting that would fix it (`overwrite`, `data.lambada`): the library speaks in settings,
    and the command line adds the flag that sets it.
    """

    def __init__(self, message: str = "", *, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


def short_repr(value: object, limit: int = 60) -> str:
    """`value`'s repr cut to `limit` characters: what a file holds, quoted in an error line without flooding it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
