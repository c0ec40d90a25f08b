"""The error every layer raises for a bad option: its one-line message names the option."""


class UsageError(ValueError):
    """A bad option or option value: the one-line message names the option."""
