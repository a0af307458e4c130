"""User-facing errors: one line that names the file or key and what was expected."""


class PixelRNNError(Exception):
    """An error caused by input the user can fix (a file, a config key, a flag).

    The CLI prints it as a single line `pixelrnn: error: <message>` and exits with status 2;
    anything else is a bug and keeps its traceback.
    """


class ConfigError(PixelRNNError):
    """An unknown key, a wrong type or an impossible value in an experiment config."""


class DataError(PixelRNNError):
    """A missing, corrupt or mis-shaped dataset file."""


class ClusterError(PixelRNNError):
    """A Ray cluster that cannot be reached at its address, or a local one that did not start."""
