"""Errors a user can fix: the CLI prints each as one `error:` line and exits with status 2."""


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


class DataError(ValueError):
    """The data on disk cannot be used as given; the message names the place."""


class WeightsError(ConfigError):
    """Pretrained weights that cannot be had or do not fit; the message says what to do instead."""
