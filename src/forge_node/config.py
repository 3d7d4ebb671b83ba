"""forge.toml: read once, `${VAR}` substituted from the environment, validated completely.

Every problem is collected before anything is raised, so an operator fixes a file in one pass.
A message names the file, the key and what would be valid. Sections are plain dataclasses:
their fields are the valid keys, their annotations the types, their defaults the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import tomlkit
import tomlkit.exceptions
from psycopg.conninfo import conninfo_to_dict

from . import redaction
from .errors import ConfigError

ROLES = ("gateway", "function", "worker", "scheduler")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
JWT_ALGORITHMS = ("HS256", "RS256")
REQUIRED = dataclasses.MISSING
MAX_JSON_DEPTH = 512

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
CAPABILITY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ORIGIN = re.compile(r"^https?://[^/\s]+$")


def _positive(value: float, key: str) -> list[str]:
    return [] if value > 0 else [f"{key} must be greater than 0, got {value}"]


def _at_least(value: float, minimum: float, key: str) -> list[str]:
    return [] if value >= minimum else [f"{key} must be at least {minimum}, got {value}"]


def _postgres_url(url: str, key: str) -> list[str]:
    """A problem unless `url` is a postgresql:// URL libpq can read; never the password or
    query it holds in the message."""
    if not url.startswith(("postgresql://", "postgres://")):
        return [f'{key} must be a postgresql:// URL, got "{redaction.scrub(url)}"']
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        return [f"{key} is not a valid URL: {redaction.scrub(str(exc).strip().splitlines()[0])}"]
    return []


@dataclass(frozen=True)
class ProjectConfig:
    name: str = REQUIRED
    app: str = "app"

    def problems(self) -> list[str]:
        found = [] if self.name.strip() else ["project.name must not be empty"]
        if not _MODULE.match(self.app):
            found.append(f'project.app must be an importable module name like "app", '
                         f'got "{self.app}"')
        return found


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""
    direct_url: str = ""  # set when `url` goes through a transaction-mode pooler (PgBouncer)
    pool_size: int = 50
    statement_timeout_secs: float = 30
    replica_urls: tuple[str, ...] = ()
    read_from_replica: bool = False
    replica_max_lag_secs: float = 10  # a replica further behind is skipped

    def problems(self) -> list[str]:
        found = _postgres_url(self.url, "database.url") if self.url else []
        if self.direct_url:
            found += _postgres_url(self.direct_url, "database.direct_url")
            if not self.url:
                found.append("database.direct_url is set but database.url (the pooler's) is not")
        found += _at_least(self.pool_size, 2, "database.pool_size")
        found += _at_least(self.statement_timeout_secs, 0, "database.statement_timeout_secs")
        found += _positive(self.replica_max_lag_secs, "database.replica_max_lag_secs")
        for i, url in enumerate(self.replica_urls):
            found += _postgres_url(url, f"database.replica_urls[{i}]")
        if self.read_from_replica and not self.replica_urls:
            found.append("database.read_from_replica is true but database.replica_urls is empty")
        return found


@dataclass(frozen=True)
class SubscriptionsConfig:
    """[gateway.subscriptions]: live queries and job streams over SSE."""

    max_per_session: int = 100
    max_per_node: int = 100_000  # shared evenly by the node's gateway workers
    send_queue: int = 256  # events waiting for a slow client; past it, it is disconnected
    debounce_ms: int = 50  # how often a worker reads the change log: writes between share a run
    keepalive_secs: float = 15
    ticket_ttl_secs: float = 30
    job_poll_ms: int = 250

    def problems(self) -> list[str]:
        name = "gateway.subscriptions"
        return (_at_least(self.max_per_session, 1, f"{name}.max_per_session")
                + _at_least(self.max_per_node, 1, f"{name}.max_per_node")
                + _at_least(self.send_queue, 1, f"{name}.send_queue")
                + _at_least(self.debounce_ms, 5, f"{name}.debounce_ms")
                + _positive(self.keepalive_secs, f"{name}.keepalive_secs")
                + _positive(self.ticket_ttl_secs, f"{name}.ticket_ttl_secs")
                + _at_least(self.job_poll_ms, 10, f"{name}.job_poll_ms"))


@dataclass(frozen=True)
class GatewayConfig:
    port: int = 8080
    workers: int = field(default_factory=lambda: min(os.cpu_count() or 1, 8))
    threads: int = 8
    cors_origins: tuple[str, ...] = ()
    quiet_routes: tuple[str, ...] = ("/_api/health", "/_api/ready")
    static_dir: str | None = None
    max_body_bytes: int = 1024 * 1024
    keepalive_secs: int = 75
    header_timeout_secs: float = 10
    body_timeout_secs: float = 30
    max_json_depth: int = 64
    max_connections: int = 10_000
    # the frontend's framing and referrer policies (API answers are JSON, framed by nothing)
    frame_ancestors: str = "'none'"  # CSP frame-ancestors; "'self'" allows the app's own pages
    referrer_policy: str = "no-referrer"
    subscriptions: SubscriptionsConfig = field(default_factory=SubscriptionsConfig)

    def problems(self) -> list[str]:
        found = self.subscriptions.problems()
        if not 1 <= self.port <= 65535:
            found.append(f"gateway.port must be between 1 and 65535, got {self.port}")
        found += _at_least(self.workers, 1, "gateway.workers")
        found += _at_least(self.threads, 1, "gateway.threads")
        found += _at_least(self.max_body_bytes, 1, "gateway.max_body_bytes")
        found += _at_least(self.keepalive_secs, 1, "gateway.keepalive_secs")
        found += _positive(self.header_timeout_secs, "gateway.header_timeout_secs")
        found += _positive(self.body_timeout_secs, "gateway.body_timeout_secs")
        # past about 900 levels Python's JSON parser and encoder run out of stack
        if not 1 <= self.max_json_depth <= MAX_JSON_DEPTH:
            found.append(f"gateway.max_json_depth must be between 1 and {MAX_JSON_DEPTH}, "
                         f"got {self.max_json_depth}")
        found += _at_least(self.max_connections, 1, "gateway.max_connections")
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.match(origin):
                found.append(f'gateway.cors_origins: "{origin}" is not an origin like '
                             f'"https://app.example.com" (scheme and host, no path) or "*"')
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            found.append('gateway.cors_origins: "*" cannot be combined with other origins')
        for route in self.quiet_routes:
            if not route.startswith("/"):
                found.append(f'gateway.quiet_routes: "{route}" must start with "/"')
        return found


@dataclass(frozen=True)
class AuthConfig:
    jwt_algorithm: str = "HS256"
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.jwt_secret or self.jwks_url)

    def problems(self) -> list[str]:
        if self.jwt_algorithm not in JWT_ALGORITHMS:
            return [f'auth.jwt_algorithm must be one of {", ".join(JWT_ALGORITHMS)}, '
                    f'got "{self.jwt_algorithm}"']
        found = []
        if self.jwt_algorithm == "HS256" and self.jwks_url and not self.jwt_secret:
            found.append('auth.jwks_url needs auth.jwt_algorithm = "RS256"')
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < 32:
            found.append("auth.jwt_secret must be at least 32 bytes long")
        if self.jwt_algorithm == "RS256" and not self.jwks_url:
            found.append('auth.jwt_algorithm = "RS256" needs auth.jwks_url')
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            found.append(f'auth.jwks_url must be an http(s) URL, got "{self.jwks_url}"')
        return found


@dataclass(frozen=True)
class PoolConfig:
    """`[worker.pools.<capability>]`: overrides for one capability's pool."""

    max_concurrent_jobs: int = REQUIRED

    def problems(self) -> list[str]:
        return _at_least(self.max_concurrent_jobs, 1, "max_concurrent_jobs")


@dataclass(frozen=True)
class WorkerConfig:
    max_concurrent_jobs: int = 20
    poll_interval_ms: int = 100
    job_timeout_secs: float = 3600
    retention_secs: float = 7 * 24 * 3600
    pools: dict[str, PoolConfig] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = (_at_least(self.max_concurrent_jobs, 1, "worker.max_concurrent_jobs")
                 + _at_least(self.poll_interval_ms, 1, "worker.poll_interval_ms")
                 + _positive(self.job_timeout_secs, "worker.job_timeout_secs")
                 + _at_least(self.retention_secs, 0, "worker.retention_secs"))
        return found

    def slots_for(self, capability: str) -> int:
        """How many jobs of this capability one worker runs at once."""
        pool = self.pools.get(capability)
        return pool.max_concurrent_jobs if pool else self.max_concurrent_jobs


@dataclass(frozen=True)
class ObservabilityConfig:
    enabled: bool = False
    otlp_endpoint: str | None = None
    log_level: str = "info"
    log_format: str = "json"
    sampling_ratio: float = 1.0
    enable_traces: bool = True
    enable_metrics: bool = True
    enable_logs: bool = True
    metrics_interval_secs: float = 60
    db_spans: bool = False  # a db.query span per SQL statement of functions and jobs

    def exports(self, signal: str) -> bool:
        """Whether `signal` ("traces", "metrics", "logs") is exported over OTLP."""
        return self.enabled and getattr(self, f"enable_{signal}")

    def problems(self) -> list[str]:
        found = _positive(self.metrics_interval_secs, "observability.metrics_interval_secs")
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            found.append(f'observability.otlp_endpoint must be an http(s) URL like '
                         f'"http://collector:4318", got "{self.otlp_endpoint}"')
        if self.log_level not in LOG_LEVELS:
            found.append(f'observability.log_level must be one of {", ".join(LOG_LEVELS)}, '
                         f'got "{self.log_level}"')
        if self.log_format not in ("json", "text"):
            found.append(f'observability.log_format must be "json" or "text", '
                         f'got "{self.log_format}"')
        if not 0.0 <= self.sampling_ratio <= 1.0:
            found.append(f"observability.sampling_ratio must be between 0.0 and 1.0, "
                         f"got {self.sampling_ratio}")
        return found


@dataclass(frozen=True)
class ClusterConfig:
    discovery: str = "postgres"
    heartbeat_interval_secs: float = 5
    dead_threshold_secs: float = 15

    def problems(self) -> list[str]:
        found = []
        if self.discovery != "postgres":
            found.append(f'cluster.discovery must be "postgres" (the only discovery there is), '
                         f'got "{self.discovery}"')
        found += _positive(self.heartbeat_interval_secs, "cluster.heartbeat_interval_secs")
        if self.dead_threshold_secs <= self.heartbeat_interval_secs:
            found.append(f"cluster.dead_threshold_secs ({self.dead_threshold_secs}) must be "
                         f"greater than cluster.heartbeat_interval_secs "
                         f"({self.heartbeat_interval_secs}); three heartbeats is a good value")
        return found


@dataclass(frozen=True)
class NodeConfig:
    roles: tuple[str, ...] = ROLES
    worker_capabilities: tuple[str, ...] = ("general",)
    drain_timeout_secs: float = 30

    def problems(self) -> list[str]:
        found = []
        if not self.roles:
            found.append(f'node.roles must name at least one of {", ".join(ROLES)}')
        for role in self.roles:
            if role not in ROLES:
                found.append(f'node.roles: unknown role "{role}"{_suggest(role, ROLES)}; '
                             f'valid roles: {", ".join(ROLES)}')
        if len(set(self.roles)) != len(self.roles):
            found.append("node.roles lists a role more than once")
        for capability in self.worker_capabilities:
            if not CAPABILITY_NAME.match(capability):
                found.append(f'node.worker_capabilities: "{capability}" must be lowercase '
                             f"letters, digits, '_', '-' or '.'")
        if "worker" in self.roles and not self.worker_capabilities:
            found.append("node.worker_capabilities must not be empty on a node with the "
                         "worker role")
        found += _at_least(self.drain_timeout_secs, 0, "node.drain_timeout_secs")
        return found

    @property
    def serves_functions(self) -> bool:
        """Functions are served by the gateway with the function role; only such a node
        verifies tokens, so only it needs [auth]."""
        return {"gateway", "function"} <= set(self.roles)

    def warnings(self) -> list[str]:
        if "function" in self.roles and "gateway" not in self.roles:
            return ['node.roles has "function" without "gateway": functions are served only '
                    "by the gateway, so the function role does nothing on this node"]
        return []


SECTIONS: dict[str, type] = {
    "project": ProjectConfig,
    "database": DatabaseConfig,
    "gateway": GatewayConfig,
    "auth": AuthConfig,
    "worker": WorkerConfig,
    "observability": ObservabilityConfig,
    "cluster": ClusterConfig,
    "node": NodeConfig,
}


@dataclass(frozen=True)
class Config:
    path: Path
    project: ProjectConfig
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    warnings: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        """The app folder: forge.toml's directory, where migrations/ and the app module live."""
        return self.path.parent

    @property
    def uses_embedded_database(self) -> bool:
        return not self.database.url

    def static_dir_problems(self) -> list[str]:
        """A configured static_dir that a gateway would serve nothing from: missing, not a
        folder, or empty. Checked by `run` and `check`, not by every command: `migrate` and
        `jobs` run where the frontend was never built."""
        static_dir = self.gateway.static_dir
        if not static_dir or "gateway" not in self.node.roles:
            return []
        folder = self.root / static_dir
        if not folder.is_dir():
            found = "does not exist" if not folder.exists() else "is not a folder"
        elif not any(folder.iterdir()):
            found = "is empty"
        else:
            return []
        return [f'{self.path}: gateway.static_dir is "{static_dir}", but {folder} {found}: '
                f"build the frontend into it, or remove the key to serve no frontend"]


def load(path: str | Path, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate forge.toml; raise ConfigError listing every problem."""
    path = Path(path).resolve()
    environ = os.environ if environ is None else environ
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file (pass --config or set FORGE_CONFIG)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot be read: {exc}"]) from None
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None

    problems: list[str] = []
    auth_problems: list[str] = []
    sections: dict[str, Any] = {}
    for name, raw in document.items():
        if name not in SECTIONS:
            problems.append(f"unknown section [{name}]{_suggest(name, SECTIONS)}; "
                            f'valid sections: {", ".join(SECTIONS)}')
        elif not isinstance(raw, dict):
            problems.append(f"{name} must be a table ([{name}]), got {_describe(raw)}")
        else:
            found = auth_problems if name == "auth" else problems
            sections[name] = _build_section(name, raw, environ, found)
    if "project" not in document:
        problems.append("[project] is missing; it needs at least name = \"...\"")
    if _needs_auth(document, sections):
        problems += auth_problems
    else:  # one forge.toml serves every node: its workers need no JWT_SECRET
        sections.pop("auth", None)

    warnings: list[str] = []
    for section in sections.values():
        if section is not None:
            problems += section.problems()
            warnings += getattr(section, "warnings", list)()
    problems += _environment_problems(sections.get("observability"), environ)
    if problems:
        raise ConfigError([f"{path}: {problem}" for problem in problems])
    built = {name: value for name, value in sections.items() if value is not None}
    return Config(path=path, warnings=tuple(f"{path}: {w}" for w in warnings), **built)


def _needs_auth(document: dict[str, Any], sections: dict[str, Any]) -> bool:
    """Whether [auth] is resolved: on nodes that serve functions, and when [node] is too
    broken to tell which roles this node runs."""
    node = sections.get("node", None if "node" in document else NodeConfig())
    return node is None or node.serves_functions


def _environment_problems(observability: ObservabilityConfig | None,
                          environ: typing.Mapping[str, str]) -> list[str]:
    """Checks that need the environment: the standard OTEL_* variables count as configuration."""
    if observability is None or not observability.enabled or observability.otlp_endpoint:
        return []
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return []
    signals = [s for s in ("traces", "metrics", "logs") if observability.exports(s)
               and not environ.get(f"OTEL_EXPORTER_OTLP_{s.upper()}_ENDPOINT")]
    if not signals:
        return []
    return ["observability.enabled is true but there is no collector to export to: set "
            "observability.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)"]


def substitute(text: str, environ: typing.Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace `${VAR}` and `${VAR:-default}`; return the text and the variables left unset.

    An unset variable without a default stays as literal text, so validation can name it.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ and (environ[name] != "" or default is None):
            return environ[name]
        if default is not None:
            return default
        missing.append(name)
        return match.group(0)

    return _VAR.sub(replace, text), missing


def _build_section(name: str, raw: dict[str, Any], environ: typing.Mapping[str, str],
                   problems: list[str], cls: type | None = None) -> Any:
    """One table as its dataclass; `name` is its dotted path, for messages."""
    cls = cls or SECTIONS[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    before = len(problems)
    for key, value in raw.items():
        if key not in fields:
            problems.append(f"unknown key {name}.{key}{_suggest(key, fields, prefix=name)}; "
                            f'valid keys in [{name}]: {", ".join(fields)}')
            continue
        if typing.get_origin(hints[key]) is dict:
            converted = _build_tables(f"{name}.{key}", value, environ, problems,
                                      typing.get_args(hints[key])[1])
        elif dataclasses.is_dataclass(hints[key]):
            converted = _build_table(f"{name}.{key}", value, environ, problems, hints[key])
        else:
            converted = _convert(f"{name}.{key}", value, hints[key], environ, problems)
        if converted is not _INVALID:
            values[key] = converted
    for key, spec in fields.items():
        if spec.default is REQUIRED and spec.default_factory is REQUIRED and key not in raw:
            problems.append(f"{name}.{key} is required")
    if len(problems) > before:
        return None
    return cls(**values)


def _build_table(name: str, raw: Any, environ: typing.Mapping[str, str], problems: list[str],
                 cls: type) -> Any:
    """One nested table, e.g. [gateway.subscriptions]."""
    if not isinstance(raw, dict):
        problems.append(f"{name} must be a table ([{name}]), got {_describe(raw)}")
        return _INVALID
    built = _build_section(name, raw, environ, problems, cls)
    return _INVALID if built is None else built


def _build_tables(name: str, raw: Any, environ: typing.Mapping[str, str], problems: list[str],
                  cls: type) -> Any:
    """A table of named tables, e.g. [worker.pools.gpu], [worker.pools.general]."""
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        problems.append(f"{name} must hold tables like [{name}.<name>], got {_describe(raw)}")
        return _INVALID
    built = {key: _build_section(f"{name}.{key}", value, environ, problems, cls)
             for key, value in raw.items()}
    for key, table in built.items():
        if table is not None:
            problems.extend(f"{name}.{key}.{problem}" for problem in table.problems())
    return _INVALID if None in built.values() else built


_INVALID = object()


def _convert(key: str, value: Any, kind: Any, environ: typing.Mapping[str, str],
             problems: list[str]) -> Any:
    """Check one value against its field's type; strings from `${VAR}` are parsed to that type."""
    optional = _is_optional(kind)
    if optional:
        kind = str
    if isinstance(value, str):
        text, missing = substitute(value, environ)
        for variable in missing:
            problems.append(f'{key} is "{value}": the environment variable {variable} is not set')
        if missing:
            return _INVALID
        if _VAR.search(value) and kind is not str:
            return _parse_text(key, text, kind, problems)
        value = text
        if optional and value == "":
            return None  # `${JWT_SECRET:-}` left empty means the key is not set
    if kind is bool:
        return value if isinstance(value, bool) else _wrong(key, "true or false", value, problems)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _wrong(key, "an integer", value, problems)
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value)  # TOML has inf and nan: no limit or timeout can be one
        return float(value) if ok else _wrong(key, "a finite number", value, problems)
    if kind is str:
        return value if isinstance(value, str) else _wrong(key, "a string", value, problems)
    return _convert_list(key, value, environ, problems)


def _convert_list(key: str, value: Any, environ: typing.Mapping[str, str],
                  problems: list[str]) -> Any:
    if not isinstance(value, list):
        return _wrong(key, "a list of strings", value, problems)
    items = []
    for i, item in enumerate(value):
        converted = _convert(f"{key}[{i}]", item, str, environ, problems)
        if converted is _INVALID:
            return _INVALID
        items.append(converted)
    return tuple(items)


def _parse_text(key: str, text: str, kind: Any, problems: list[str]) -> Any:
    """Parse a substituted string as the field's type: `port = "${PORT:-8080}"` is an int."""
    try:
        if kind is int:
            return int(text)
        if kind is float:
            number = float(text)
            return number if math.isfinite(number) else _wrong(key, "a finite number", text,
                                                               problems)
        if kind is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
    except ValueError:
        expected = {int: "an integer", float: "a finite number", bool: "true or false"}[kind]
        return _wrong(key, expected, text, problems)
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _wrong(key: str, expected: str, value: Any, problems: list[str]) -> Any:
    problems.append(f"{key} must be {expected}, got {_describe(value)}")
    return _INVALID


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _is_optional(kind: Any) -> bool:
    return isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)


def _suggest(word: str, candidates: typing.Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)"
