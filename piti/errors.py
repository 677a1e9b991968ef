"""User-facing errors.

Every error that a user can cause (a bad file, a wrong shape, a missing weight)
is one of these, with a message that says what was expected and where. The CLI,
the demo and the notebooks print the message alone, never a traceback.
"""


class PitiError(Exception):
    """Base class of the errors meant for the user."""


class ConfigError(PitiError, ValueError):
    """Unknown preset, unknown option, inconsistent settings."""


class CheckpointError(PitiError, ValueError):
    """A file that is not a checkpoint, or one that does not fit the model."""


class ConditionError(PitiError, ValueError):
    """A condition image of the wrong shape, kind or colours for the task."""


class DatasetError(PitiError, ValueError):
    """A dataset folder or file that cannot be read as the expected layout."""


class MissingWeightsError(PitiError, FileNotFoundError):
    """External weights (Inception, VGG, CLIP, official checkpoints) are not on this machine."""
