"""The exceptions that reach the command line as one line: a user's mistake, a run stopped from outside."""


class UserError(Exception):
    """Bad input from the user: the CLI prints its message on one line and exits with status 2."""


class Preempted(Exception):
    """A run stopped by SIGTERM after checkpointing: the CLI prints how to continue and exits with status 143."""
