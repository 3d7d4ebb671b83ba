"""forge.toml: defaults, ${VAR} substitution, and every kind of validation error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from forge_node import config
from forge_node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "forge.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.load(write(tmp_path, text), env or {})
    return caught.value.problems


def test_every_key_has_its_documented_default(tmp_path):
    cfg = config.load(write(tmp_path, '[project]\nname = "demo"\n'), {})
    assert cfg.project.app == "app"
    assert (cfg.database.url, cfg.database.pool_size, cfg.database.statement_timeout_secs,
            cfg.database.replica_urls, cfg.database.read_from_replica) == ("", 50, 30, (), False)
    assert cfg.uses_embedded_database
    assert (cfg.gateway.port, cfg.gateway.cors_origins, cfg.gateway.static_dir) == (8080, (), None)
    assert cfg.gateway.quiet_routes == ("/_api/health", "/_api/ready")
    assert cfg.gateway.workers >= 1 and cfg.gateway.threads >= 1
    assert (cfg.worker.max_concurrent_jobs, cfg.worker.poll_interval_ms,
            cfg.worker.job_timeout_secs) == (20, 100, 3600)
    obs = cfg.observability
    assert (obs.enabled, obs.otlp_endpoint, obs.log_level, obs.sampling_ratio) == \
        (False, None, "info", 1.0)
    assert (obs.enable_traces, obs.enable_metrics, obs.enable_logs) == (True, True, True)
    assert (cfg.cluster.discovery, cfg.cluster.heartbeat_interval_secs,
            cfg.cluster.dead_threshold_secs) == ("postgres", 5, 15)
    assert cfg.node.roles == ("gateway", "function", "worker", "scheduler")
    assert cfg.node.worker_capabilities == ("general",)
    assert cfg.node.drain_timeout_secs == 30
    assert cfg.root == tmp_path


def test_variables_are_substituted_with_and_without_defaults(tmp_path):
    cfg = config.load(write(tmp_path, '''
        [project]
        name = "${NAME}"
        [database]
        url = "postgresql://app:${DB_PASSWORD}@db:5432/${DB_NAME:-forge}"
        replica_urls = ["${REPLICA_URL:-postgresql://replica/forge}"]
    '''), {"NAME": "shop", "DB_PASSWORD": "s3cret"})
    assert cfg.project.name == "shop"
    assert cfg.database.url == "postgresql://app:s3cret@db:5432/forge"
    assert cfg.database.replica_urls == ("postgresql://replica/forge",)


def test_an_empty_variable_takes_the_default(tmp_path):
    cfg = config.load(write(tmp_path, '[project]\nname = "${NAME:-fallback}"\n'), {"NAME": ""})
    assert cfg.project.name == "fallback"


def test_an_unset_variable_names_the_variable_the_key_and_the_file(tmp_path):
    found = problems(tmp_path, '''
        [project]
        name = "demo"
        [database]
        url = "${DATABASE_URL}"
    ''')
    assert found == [f'{tmp_path / "forge.toml"}: database.url is "${{DATABASE_URL}}": '
                     f"the environment variable DATABASE_URL is not set"]


def test_substituted_strings_take_the_type_of_their_key(tmp_path):
    cfg = config.load(write(tmp_path, '''
        [project]
        name = "demo"
        [gateway]
        port = "${PORT:-8080}"
        [observability]
        enabled = "${OTEL_ON:-false}"
        [node]
        roles = "${FORGE_NODE_ROLES:-gateway,function}"
    '''), {"FORGE_NODE_ROLES": "worker, scheduler"})
    assert cfg.gateway.port == 8080
    assert cfg.observability.enabled is False
    assert cfg.node.roles == ("worker", "scheduler")


def test_a_substituted_value_of_the_wrong_type_is_an_error(tmp_path):
    found = problems(tmp_path, '[project]\nname = "d"\n[gateway]\nport = "${PORT}"\n',
                     {"PORT": "eighty"})
    assert found == [f'{tmp_path / "forge.toml"}: gateway.port must be an integer, '
                     f'got the string "eighty"']


def test_an_empty_optional_secret_means_not_set(tmp_path):
    cfg = config.load(write(tmp_path, '''
        [project]
        name = "demo"
        [auth]
        jwt_secret = "${JWT_SECRET:-}"
    '''), {})
    assert cfg.auth.jwt_secret is None


def test_unknown_sections_and_keys_suggest_the_closest_name(tmp_path):
    found = problems(tmp_path, '''
        [project]
        name = "demo"
        [gatway]
        port = 1
        [gateway]
        prot = 8080
    ''')
    assert any("unknown section [gatway] (did you mean gateway?)" in p for p in found)
    assert any("unknown key gateway.prot (did you mean gateway.port?)" in p
               and "valid keys in [gateway]: port," in p for p in found)


@pytest.mark.parametrize(("text", "expected"), [
    ('[gateway]\nport = "8080"', 'gateway.port must be an integer, got the string "8080"'),
    ("[observability]\nenabled = 1", "observability.enabled must be true or false, got int 1"),
    ('[database]\nurl = 3', "database.url must be a string, got int 3"),
    ('[node]\nroles = "worker"', 'node.roles must be a list of strings, got the string "worker"'),
    ("[node]\nroles = [1]", "node.roles[0] must be a string, got int 1"),
    ("[cluster]\nheartbeat_interval_secs = true",
     "cluster.heartbeat_interval_secs must be a finite number, got the boolean true"),
    ("gateway = 3", "gateway must be a table ([gateway]), got int 3"),
])
def test_wrong_types_name_the_key_and_the_expected_type(tmp_path, text, expected):
    found = problems(tmp_path, f'{text}\n[project]\nname = "demo"\n')
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(("text", "expected"), [
    ('[node]\nroles = ["gateway", "wroker"]',
     'node.roles: unknown role "wroker" (did you mean worker?); '
     "valid roles: gateway, function, worker, scheduler"),
    ("[node]\nroles = []", "node.roles must name at least one of"),
    ("[cluster]\nheartbeat_interval_secs = -1",
     "cluster.heartbeat_interval_secs must be greater than 0, got -1.0"),
    ("[cluster]\nheartbeat_interval_secs = 5\ndead_threshold_secs = 5",
     "cluster.dead_threshold_secs (5.0) must be greater than cluster.heartbeat_interval_secs"),
    ("[node]\ndrain_timeout_secs = -3", "node.drain_timeout_secs must be at least 0"),
    ("[gateway]\nport = 70000", "gateway.port must be between 1 and 65535, got 70000"),
    ('[database]\nurl = "mysql://x"', 'database.url must be a postgresql:// URL, got "mysql://x"'),
    ("[database]\nread_from_replica = true",
     "database.read_from_replica is true but database.replica_urls is empty"),
    ('[database]\ndirect_url = "postgresql://h/db"',
     "database.direct_url is set but database.url (the pooler's) is not"),
    ('[database]\nurl = "postgresql://pooler/db"\ndirect_url = "mysql://x"',
     'database.direct_url must be a postgresql:// URL, got "mysql://x"'),
    ('[auth]\njwt_secret = "short"', "auth.jwt_secret must be at least 32 bytes long"),
    ('[auth]\njwt_algorithm = "none"', "auth.jwt_algorithm must be one of HS256, RS256"),
    ("[observability]\nsampling_ratio = 1.5", "observability.sampling_ratio must be between"),
    ('[observability]\nlog_level = "loud"', "observability.log_level must be one of debug,"),
    ('[cluster]\ndiscovery = "consul"', 'cluster.discovery must be "postgres"'),
    ('[gateway]\ncors_origins = ["example.com"]', 'gateway.cors_origins: "example.com" is not'),
    ("[gateway.subscriptions]\nsend_queue = 0",
     "gateway.subscriptions.send_queue must be at least 1, got 0"),
    ("[gateway.subscriptions]\ndebounce_msec = 5",
     "unknown key gateway.subscriptions.debounce_msec (did you mean "
     "gateway.subscriptions.debounce_ms?)"),
    ("[gateway]\nsubscriptions = 5", "gateway.subscriptions must be a table"),
])
def test_invalid_values_name_the_key_and_what_is_valid(tmp_path, text, expected):
    found = problems(tmp_path, f'{text}\n[project]\nname = "demo"\n')
    assert any(expected in p for p in found), found


def test_live_update_settings_have_their_defaults_and_can_be_set(tmp_path):
    default = config.load(write(tmp_path, '[project]\nname = "demo"\n'), {}).gateway
    assert (default.subscriptions.max_per_session, default.subscriptions.send_queue,
            default.subscriptions.debounce_ms, default.subscriptions.keepalive_secs) == \
        (100, 256, 50, 15)
    cfg = config.load(write(tmp_path, '[project]\nname = "demo"\n[gateway.subscriptions]\n'
                                      "debounce_ms = 5\nmax_per_session = 7\n"), {})
    assert (cfg.gateway.subscriptions.debounce_ms, cfg.gateway.subscriptions.max_per_session,
            cfg.gateway.port) == (5, 7, 8080)


def test_the_app_must_be_an_importable_module_name(tmp_path):
    found = problems(tmp_path, '[project]\nname = "demo"\napp = "my-app"\n')
    assert any('project.app must be an importable module name like "app", got "my-app"' in p
               for p in found)


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, '''
        [project]
        name = "demo"
        [gateway]
        port = "x"
        prot = 1
        [node]
        roles = ["nope"]
        [cluster]
        heartbeat_interval_secs = 10
        dead_threshold_secs = 10
        [database]
        url = "${MISSING_URL}"
    ''')
    assert len(found) == 5, found
    assert all(p.startswith(str(tmp_path / "forge.toml")) for p in found)


def test_a_missing_project_section_is_an_error(tmp_path):
    assert any("[project] is missing" in p for p in problems(tmp_path, "[node]\n"))
    assert any("project.name is required" in p
               for p in problems(tmp_path, '[project]\napp = "x"\n'))


def test_invalid_toml_and_missing_files_are_config_errors(tmp_path):
    assert "not valid TOML" in problems(tmp_path, "[project\nname=")[0]
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml", {})


def test_function_without_gateway_is_a_warning_not_an_error(tmp_path):
    cfg = config.load(write(tmp_path, '[project]\nname = "d"\n[node]\nroles = ["function"]\n'),
                      {})
    assert any('"function" without "gateway"' in w for w in cfg.warnings)


def test_capability_pools_override_the_slot_count(tmp_path):
    cfg = config.load(write(tmp_path, '''
        [project]
        name = "demo"
        [worker]
        max_concurrent_jobs = 8
        retention_secs = 3600
        [worker.pools.gpu]
        max_concurrent_jobs = 2
    '''), {})
    assert (cfg.worker.slots_for("gpu"), cfg.worker.slots_for("general")) == (2, 8)
    assert cfg.worker.retention_secs == 3600


def test_pool_problems_name_the_pool(tmp_path):
    found = problems(tmp_path, '''
        [project]
        name = "demo"
        [worker.pools.gpu]
        max_concurent_jobs = 2
        [worker.pools.cpu]
        max_concurrent_jobs = 0
    ''')
    assert any("unknown key worker.pools.gpu.max_concurent_jobs (did you mean "
               "worker.pools.gpu.max_concurrent_jobs?)" in p for p in found)
    assert any("worker.pools.gpu.max_concurrent_jobs is required" in p for p in found)
    assert any("worker.pools.cpu.max_concurrent_jobs must be at least 1, got 0" in p
               for p in found)
    assert any("worker.pools must hold tables" in p
               for p in problems(tmp_path, '[project]\nname = "d"\n[worker]\npools = 3\n'))


def test_enabled_observability_needs_a_collector(tmp_path):
    text = '[project]\nname = "d"\n[observability]\nenabled = true\n'
    assert any("there is no collector to export to" in p for p in problems(tmp_path, text))
    cfg = config.load(write(tmp_path, text), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert cfg.observability.exports("traces")
    disabled = config.load(write(tmp_path, '[project]\nname = "d"\n'), {})
    assert not disabled.observability.exports("metrics")
    assert any("otlp_endpoint must be an http(s) URL" in p for p in problems(
        tmp_path, '[project]\nname = "d"\n[observability]\notlp_endpoint = "collector:4318"\n'))


AUTH_FROM_ENV = '''
    [project]
    name = "demo"
    [auth]
    jwt_secret = "${JWT_SECRET}"
    [node]
    roles = "${FORGE_NODE_ROLES}"
'''


@pytest.mark.parametrize("roles", ["worker", "scheduler", "worker,scheduler", "gateway"])
def test_a_node_that_serves_no_functions_does_not_resolve_auth(tmp_path, roles):
    cfg = config.load(write(tmp_path, AUTH_FROM_ENV), {"FORGE_NODE_ROLES": roles})
    assert not cfg.auth.configured


@pytest.mark.parametrize("roles", ["gateway,function", "gateway,function,worker"])
def test_a_node_that_serves_functions_resolves_auth(tmp_path, roles):
    found = problems(tmp_path, AUTH_FROM_ENV, {"FORGE_NODE_ROLES": roles})
    assert found == [f'{tmp_path / "forge.toml"}: auth.jwt_secret is "${{JWT_SECRET}}": the '
                     f"environment variable JWT_SECRET is not set"]
    cfg = config.load(write(tmp_path, AUTH_FROM_ENV),
                      {"FORGE_NODE_ROLES": roles, "JWT_SECRET": "s" * 32})
    assert cfg.auth.jwt_secret == "s" * 32


def test_auth_is_resolved_when_the_roles_cannot_be_told(tmp_path):
    found = problems(tmp_path, AUTH_FROM_ENV)
    assert any("FORGE_NODE_ROLES is not set" in p for p in found)
    assert any("JWT_SECRET is not set" in p for p in found)
