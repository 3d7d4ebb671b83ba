"""The app's functions: the decorators that mark them and the registry that holds them.

`forge-node run` imports the module named by `[project] app` once, in the supervisor, before
any child is forked; a module that fails to import stops the node with exit code 78 instead
of a restart loop. The decorators register into the registry being loaded.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backoff import Backoff
from .config import CAPABILITY_NAME, Config
from .crons import InvalidSchedule, Schedule
from .errors import AppLoadError, ConfigError

Handler = Callable[..., Any]


class _HandlerSpec:
    handler: Handler

    @functools.cached_property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


@dataclass(frozen=True)
class FunctionSpec(_HandlerSpec):
    """A query or mutation callable over `POST /_api/rpc/{name}`."""

    name: str
    kind: str  # "query" | "mutation"
    handler: Handler
    public: bool = False
    roles: tuple[str, ...] = ()
    timeout_secs: float | None = None
    live: tuple[str, ...] = ()  # the tables a live query reads (see live.py)


@dataclass(frozen=True)
class JobSpec(_HandlerSpec):
    """A background job: `def f(ctx, args)` or `async def f(ctx, args)`."""

    name: str
    handler: Handler
    worker_capability: str | None = None
    max_attempts: int = 3
    timeout_secs: float | None = None
    priority: int = 0
    backoff: Backoff = field(default_factory=lambda: DEFAULT_JOB_BACKOFF)


DEFAULT_JOB_BACKOFF = Backoff(base=1.0, factor=2.0, cap=300.0, jitter=0.25)


@dataclass(frozen=True)
class CronSpec:
    """A cron: each tick is a job of type `cron:<name>` run by a worker."""

    name: str
    schedule: Schedule
    catch_up: bool = False
    catch_up_limit: int = 10

    @property
    def job_type(self) -> str:
        return f"cron:{self.name}"


@dataclass
class AppRegistry:
    module: str = ""
    functions: dict[str, FunctionSpec] = field(default_factory=dict)
    jobs: dict[str, JobSpec] = field(default_factory=dict)
    crons: dict[str, CronSpec] = field(default_factory=dict)

    def add_function(self, spec: FunctionSpec) -> None:
        if spec.name in self.functions:
            raise AppLoadError(f"two functions are named {spec.name}")
        self.functions[spec.name] = spec

    def add_job(self, spec: JobSpec) -> None:
        if spec.name in self.jobs:
            raise AppLoadError(f"two jobs are named {spec.name}")
        self.jobs[spec.name] = spec

    def check(self, config: Config) -> None:
        """AppLoadError when this app cannot run under `config`."""
        guarded = sorted(name for name, spec in self.functions.items() if not spec.public)
        if guarded and config.node.serves_functions and not config.auth.configured:
            raise AppLoadError(f"the app's functions {', '.join(guarded)} need a token, but "
                               f"{config.path.name} has no [auth] (jwt_secret or jwks_url); "
                               f"configure [auth], or mark them public=True")


_current = AppRegistry()


def current_registry() -> AppRegistry:
    return _current


def load_app(root: Path, module: str) -> AppRegistry:
    """Import the app module from the app folder and return what it registered."""
    global _current
    _current = AppRegistry(module=module)
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(module)
    except AppLoadError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == module.split(".")[0]:
            raise AppLoadError(f'project.app: no module "{module}" in {root}') from None
        raise _import_failed(module, exc) from exc
    except Exception as exc:
        raise _import_failed(module, exc) from exc
    return _current


def load_for_node(config: Config) -> AppRegistry:
    """The app as a node starts it, or the error that stops the node before it touches the
    database: `run` and `check` both call this, so `check` refuses what `run` refuses, in the
    same words."""
    problems = config.static_dir_problems()
    if problems:
        raise ConfigError(problems)
    registry = load_app(config.root, config.project.app)
    registry.check(config)
    return registry


def _import_failed(module: str, exc: BaseException) -> AppLoadError:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({frame.filename}:{frame.lineno})" if frame else ""
    return AppLoadError(f'the app module "{module}" failed to import: '
                        f"{type(exc).__name__}: {exc}{where}")


def _check_call(kind: str, name: str, fn: Handler, params: str) -> None:
    """AppLoadError unless `fn` can be called as `fn(<params>)`: a handler that cannot would
    fail on every call (every tick, every attempt) instead of once, at load."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read, let it run
        return
    try:
        signature.bind(*params.split(", "))
    except TypeError:
        define = "async def" if inspect.iscoroutinefunction(fn) else "def"
        raise AppLoadError(f"{kind} {name}: the handler is called as {fn.__name__}({params}), "
                           f"but it is {define} {fn.__name__}{signature}{_where(fn)}; write "
                           f"{define} {fn.__name__}({params})") from None


def _where(fn: Handler) -> str:
    code = getattr(fn, "__code__", None)
    return f" ({code.co_filename}:{code.co_firstlineno})" if code else ""


def _refuse_positional(kind: str, value: object) -> Callable[[Handler], Handler]:
    """`@forge.job("send")` passes the name where the handler goes: name the function and
    say what was meant."""
    def refuse(fn: Handler) -> Handler:
        raise AppLoadError(f"{kind} {fn.__name__}: @forge.{kind} takes keywords only, got "
                           f"{value!r}{_where(fn)}; write @forge.{kind}(name={value!r})")
    return refuse


def _function_decorator(kind: str) -> Callable[..., Any]:
    def decorator(handler: Handler | None = None, *, public: bool = False,
                  roles: list[str] | tuple[str, ...] = (), timeout_secs: float | None = None,
                  name: str | None = None, live: list[str] | tuple[str, ...] = ()) -> Any:
        if handler is not None and not callable(handler):
            return _refuse_positional(kind, handler)

        def register(fn: Handler) -> Handler:
            _check_call(kind, name or fn.__name__, fn, "ctx, args")
            if timeout_secs is not None and timeout_secs <= 0:
                raise AppLoadError(f"{fn.__name__}: timeout_secs must be greater than 0")
            _current.add_function(FunctionSpec(name or fn.__name__, kind, fn, public,
                                               tuple(roles), timeout_secs,
                                               _live_tables(fn, kind, live)))
            return fn

        return register(handler) if handler is not None else register

    decorator.__name__ = kind
    decorator.__doc__ = f"Mark `def f(ctx, args)` as a {kind}; works bare or with keywords."
    return decorator


def _live_tables(fn: Handler, kind: str, live: Any) -> tuple[str, ...]:
    if isinstance(live, str) or not all(isinstance(t, str) and t.strip() for t in live):
        raise AppLoadError(f"{fn.__name__}: live must be a list of table names, like "
                           f'live=["notes"], got {live!r}')
    if live and kind != "query":
        raise AppLoadError(f"{fn.__name__}: live applies to queries (a {kind} changes tables; "
                           "it does not watch them)")
    return tuple(live)


query = _function_decorator("query")
mutation = _function_decorator("mutation")


def job(handler: Handler | None = None, *, worker_capability: str | None = None,
        max_attempts: int = 3, timeout_secs: float | None = None, priority: int = 0,
        backoff: Backoff | None = None, name: str | None = None) -> Any:
    """Mark `def f(ctx, args)` (or `async def`) as a background job; bare or with keywords.

    timeout_secs defaults to `[worker] job_timeout_secs`; backoff to exponential from about
    1 s, +-25% jitter, capped at 5 minutes. Higher priority runs first.
    """

    if handler is not None and not callable(handler):
        return _refuse_positional("job", handler)

    def register(fn: Handler) -> Handler:
        job_name = name or fn.__name__
        _check_call("job", job_name, fn, "ctx, args")
        if max_attempts < 1:
            raise AppLoadError(f"job {job_name}: max_attempts must be at least 1")
        if timeout_secs is not None and timeout_secs <= 0:
            raise AppLoadError(f"job {job_name}: timeout_secs must be greater than 0")
        if worker_capability is not None and not CAPABILITY_NAME.match(worker_capability):
            raise AppLoadError(f"job {job_name}: worker_capability {worker_capability!r} must "
                               f"be lowercase letters, digits, '_', '-' or '.'")
        _current.add_job(JobSpec(job_name, fn, worker_capability, max_attempts, timeout_secs,
                                 priority, backoff or DEFAULT_JOB_BACKOFF))
        return fn

    return register(handler) if handler is not None else register


def cron(expression: str | None = None, *, every_secs: float | None = None,
         timezone: str = "UTC", catch_up: bool = False, catch_up_limit: int = 10,
         worker_capability: str | None = None, max_attempts: int = 3,
         timeout_secs: float | None = None, priority: int = 0,
         name: str | None = None) -> Callable[[Handler], Handler]:
    """Mark `def f(ctx)` to run on a schedule: `@forge.cron("*/5 * * * *")`,
    `@forge.cron("@daily", timezone="Europe/Berlin")`, `@forge.cron("*/2 * * * * *")` (with a
    leading seconds field) or `@forge.cron(every_secs=1)`.

    Each tick becomes a job run by a worker, with the job keywords' retries, timeout and
    capability; `ctx.scheduled_for` is the tick it belongs to. With `catch_up=True`, ticks
    missed while no scheduler led are run (the last `catch_up_limit` of them); otherwise a
    missed tick is skipped and logged. A schedule is required: a bare `@forge.cron` is an
    error at load, since no default schedule would be right for most crons.
    """
    if callable(expression):
        raise AppLoadError(f"cron {name or expression.__name__}: @forge.cron needs a schedule"
                           f"{_where(expression)}; write @forge.cron(\"*/5 * * * *\") or "
                           f"@forge.cron(every_secs=60) above def {expression.__name__}(ctx)")

    def register(fn: Handler) -> Handler:
        cron_name = name or fn.__name__
        _check_call("cron", cron_name, fn, "ctx")
        try:
            schedule = Schedule.parse(expression, every_secs, timezone)
        except InvalidSchedule as exc:
            raise AppLoadError(f"cron {cron_name}: {exc}") from None
        if catch_up_limit < 1:
            raise AppLoadError(f"cron {cron_name}: catch_up_limit must be at least 1")
        spec = CronSpec(cron_name, schedule, catch_up, catch_up_limit)
        job(_run_tick(fn), name=spec.job_type, worker_capability=worker_capability,
            max_attempts=max_attempts, timeout_secs=timeout_secs, priority=priority)
        _current.crons[cron_name] = spec
        return fn

    return register


def _run_tick(fn: Handler) -> Handler:
    """The job that runs one tick: `ctx.scheduled_for` set, then `fn(ctx)`."""
    if inspect.iscoroutinefunction(fn):
        async def run_async(ctx: Any, args: dict[str, Any]) -> Any:
            ctx.scheduled_for = datetime.datetime.fromisoformat(args["scheduled_for"])
            return await fn(ctx)
        return run_async

    def run(ctx: Any, args: dict[str, Any]) -> Any:
        ctx.scheduled_for = datetime.datetime.fromisoformat(args["scheduled_for"])
        return fn(ctx)
    return run
