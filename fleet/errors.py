"""The one error tree of fleet/: every error a user can see is a FleetError (a ClickException)
whose message says what went wrong and what to do next."""
import click


class FleetError(click.ClickException):
    """A failure the operator can act on; printed as `Error: <message>` with exit status 1."""

    exit_code = 1
