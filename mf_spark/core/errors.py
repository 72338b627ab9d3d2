"""Error types. The job maps the first three to exit code 2, everything else to exit code 1."""

import os


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


class Stopped(BaseException):
    """The job was asked to stop (SIGTERM, as schedulers do before SIGKILL, or SIGINT): raised in the
    main thread at once, so that every clean-up on the way out runs (the staging folder deleted, the
    lease released, checkpoints kept). A BaseException, as KeyboardInterrupt is, so that handlers of
    `Exception` do not swallow it. Its exit code is 128 + the signal's number (143, 130)."""

    def __init__(self, signum: int, phase: str | None = None) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum, self.phase = signum, phase  # the job's phase when the signal came


class InjectedFault(MfSparkError):
    """Raised by the MF_SPARK_FAIL_AT test hook."""


# Test hook: MF_SPARK_FAIL_AT=<stage> raises InjectedFault at that stage of a training run (read,
# checkpoint, model, recommendations, rejected, metrics, swap); MF_SPARK_FAIL_AT=<stage>:kill kills
# the process there (SIGKILL: nothing runs after it), to prove that the next run recovers;
# <stage>:term sends SIGTERM to the whole process group there, as a scheduler stops a task.
FAIL_AT_ENV = "MF_SPARK_FAIL_AT"


def fault_point(stage: str) -> None:
    """The MF_SPARK_FAIL_AT test hook at `stage`."""
    wanted = os.environ.get(FAIL_AT_ENV, "")
    if wanted == f"{stage}:kill":
        os.kill(os.getpid(), 9)
    if wanted == f"{stage}:term":
        os.killpg(os.getpgid(0), 15)
    if wanted == stage:
        raise InjectedFault(f"injected failure at stage {stage!r} ({FAIL_AT_ENV})")
