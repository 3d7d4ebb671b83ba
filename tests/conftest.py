pytest_plugins = [
    "tests.plugins.postgres",
    "tests.plugins.apps",
    "tests.plugins.nodes",
    "tests.plugins.gateway",
    "tests.plugins.otlp",
    "tests.plugins.pgbouncer",
]
