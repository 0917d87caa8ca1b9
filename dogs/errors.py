"""Typed errors for user mistakes. Library code raises them; each command's `main` prints
`<prog>: error: <message>` once and exits 2 (no traceback). The message says what is wrong and how to fix it."""


# a trial's result key: the one line of the UserError it raised before its first epoch (it repeats identically on
# every retry, so the trial reports it and ends instead of raising: dogs.ray_trainable; tune.ray_tuner stops such a search)
USER_ERROR_KEY = "user_error"


class UserError(Exception):
    """Input we cannot use (config, data, weights, checkpoint, cache folder, search space, experiment)."""


class ConfigError(UserError, ValueError):
    """A config key or value that is not allowed; names the key, the value and what is allowed."""


class DataError(UserError, ValueError):
    """The data folder does not have the layout we need."""


class WeightsError(UserError, RuntimeError):
    """Pretrained weights could not be found; says where to put them."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used (unreadable, not ours, or from another run)."""


class CacheError(UserError, OSError):
    """The cache folder cannot be written (read-only, full); names the folder and DOGS_CACHE."""


class SpaceError(UserError, ValueError):
    """A search-space file that cannot be used; names the file and the key."""


class ExperimentError(UserError, ValueError):
    """An experiment folder that cannot be read or continued."""


class StorageError(UserError, OSError):
    """A file of an experiment could not be written (disk full, read-only, ...); names the path, what was being
    written, the free space and how to continue."""


class ExportError(UserError, ValueError):
    """A model that cannot be exported: its folder holds other files, a package is missing, or a file does not check."""


class OutputError(UserError, OSError):
    """An output path we cannot write without destroying something: a file where a folder is needed, the current
    folder, or a file or folder we did not write under a name we write; names it and how to go on."""
