"""The `forge-node` command: run, check, migrate, status, jobs, new.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error; `run` exits 78
(EX_CONFIG) on a configuration error so that systemd stops restarting it.
"""

from __future__ import annotations

import typer

from .. import db
from . import check, common, jobs, migrate, new, run, status

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
app.command("new")(new.new)
app.add_typer(migrate.app, name="migrate")
app.add_typer(jobs.app, name="jobs")


def main() -> None:
    try:
        code = app(standalone_mode=False)  # an Exit's code comes back as the result
    except typer.Abort:
        raise SystemExit(130) from None
    except typer.TyperException as exc:  # usage errors (and bare help): their own message
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:  # never a traceback (which may hold a URL) without --debug
        common.error(f"unexpected {type(exc).__name__}: {db.first_line(exc)}")
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)
