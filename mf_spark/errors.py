"""Error types. The job maps the first three to exit code 2, everything else to exit code 1."""


class MfSparkError(Exception):
    """Base of the errors this package raises on purpose."""


class UsageError(MfSparkError):
    """Bad command-line arguments."""


class ConfigError(MfSparkError):
    """A configuration key is unknown, has the wrong type or an out-of-range value."""


class InputError(MfSparkError):
    """Input data is missing, unreadable or too dirty to train on."""


class ModelError(InputError):
    """A saved model folder is missing, incomplete, inconsistent or unreadable (exit code 2)."""


class FitDiverged(MfSparkError):
    """The factors stopped being finite numbers during the fit (exit code 1; nothing is published)."""


EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def exit_code(exc: BaseException) -> int:
    """2 for errors the user can fix by changing arguments, config or data; 1 for the rest."""
    return EXIT_BAD_INPUT if isinstance(exc, (UsageError, ConfigError, InputError)) else EXIT_FAILURE
