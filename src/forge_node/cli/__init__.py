"""The `forge-node` command: run, check, migrate, status, jobs.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error; `run` exits 78
(EX_CONFIG) on a configuration error so that systemd stops restarting it.
"""

from __future__ import annotations

import typer

from . import check, common, jobs, migrate, run, status

app = typer.Typer(
    name="forge-node",
    help="Run and operate a forge-node cluster on PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks with errors."),
) -> None:
    common.STATE.debug = debug


app.command("run")(run.run)
app.command("check")(check.check)
app.command("status")(status.status)
app.add_typer(migrate.app, name="migrate")
app.add_typer(jobs.app, name="jobs")


def main() -> None:
    app()
