"""User-facing errors.

Library code raises :class:`UserError` (or a subclass) for anything a user can fix: a bad flag, a
missing file, an invalid corpus. The command-line shims turn it into a one-line message on stderr
and exit status 2; every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


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
