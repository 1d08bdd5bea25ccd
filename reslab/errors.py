"""Errors a user can cause: the CLI prints them in one line and exits with code 2."""


class ReslabError(Exception):
    """A mistake the user can fix (bad path, bad value, corrupt file); the message says how."""


class ConfigError(ReslabError):
    """A setting that is unknown or out of range."""


class DataError(ReslabError):
    """A dataset file that is missing, corrupt or not what its name says."""
