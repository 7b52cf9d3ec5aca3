"""The one error tree of fleet/: every error a user can see is a FleetError whose message says
what went wrong and what to do next.

Services raise these and know nothing of the command line; only fleet/cli turns them into
Click's errors (fleet/cli/_lazy.py `click_errors`), printed as `Error: <message>` with the
error's exit status."""


class FleetError(Exception):
    """A failure the operator can act on. `message` is the one line shown; `exit_code` is 1."""

    exit_code = 1

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message
