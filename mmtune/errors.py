"""Errors that name what the user got wrong. The CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, paths), not a bug in mmtune."""


class ConfigError(UserError):
    """A config file or override is wrong: the message names the dotted key."""


class DataError(UserError):
    """A data record is wrong: the message names the file/shard, the record and the field."""
