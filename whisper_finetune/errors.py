"""User-facing errors.

Library code raises :class:`UserError` (or a subclass) for anything a user can fix: a bad flag, a
missing file, an invalid corpus. The command-line shims turn it into a one-line message on stderr
and exit status 2 (a subclass may say another, ``exit_status``); every other exception is a bug and keeps its
traceback.
"""

# sysexits.h EX_TEMPFAIL: the run failed for a reason outside its options and can be rerun as it is once
# the cause is gone (a full disk).
EXIT_TEMPFAIL = 75


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""

    exit_status = 2


class DataValidationError(UserError):
    """A corpus failed validation; ``problems`` holds one message per problem found."""

    def __init__(self, problems, max_shown=20):
        self.problems = list(problems)
        shown = self.problems[:max_shown]
        more = len(self.problems) - len(shown)
        lines = [f"{len(self.problems)} problem(s) found in the source data:"] + [f"  {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        lines.append("fix them, or pass --skip_invalid to drop the bad utterances")
        super().__init__("\n".join(lines))


class OptionError(UserError):
    """An option with a bad value: names the option (its flag is ``--<option>`` unless a script maps it)
    and the value, then says what is accepted."""

    def __init__(self, option, value, reason):
        self.option, self.value, self.reason = option, value, reason
        super().__init__(self.render())

    def render(self, flag_names=None):
        """The one-line message, the option shown as the script's flag (``flag_names`` maps renamed ones)."""
        flag = (flag_names or {}).get(self.option, self.option)
        return f"--{flag} {self.value}: {self.reason}"


class TrainingDiverged(UserError):
    """Training produced a non-finite loss or gradient norm: the run stops before anything of that state
    is saved (no checkpoint, no final model), and the message names the last good checkpoint."""


class DiskFull(UserError):
    """No space left on the device while writing: the half-written part is gone, what was complete before is
    intact. Exit status 75 (EX_TEMPFAIL): the same command works again once space is freed."""

    exit_status = EXIT_TEMPFAIL


class RunLocked(UserError):
    """Another run holds ``--output_dir`` (its lock file names the host and process)."""


class Stopped(Exception):
    """A run stopped on a signal after saving what it could (preemption): the library has logged the one line
    that says what was saved; the script exits with ``exit_status`` (128 + the signal number) and prints nothing."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status
