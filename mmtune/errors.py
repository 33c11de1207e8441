"""Errors that name what the user got wrong. The CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, paths), not a bug in mmtune."""


class ConfigError(UserError):
    """A config file or override is wrong: the message names the dotted key."""


class DataError(UserError):
    """A data record is wrong: the message names the file/shard, the record and the field."""


class SampleSkip(DataError):
    """A sample the data policy drops rather than fails on (e.g. nothing left to learn after truncation).

    `reason` names the counter it is reported under in metrics.jsonl.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class TrainingError(UserError):
    """Training cannot go on (e.g. too many non-finite steps); the message says which setting to change."""
