"""`forge-node new NAME`: the app it writes is complete, in step with the project's own files,
and refused where it would overwrite or shadow something."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from tests.acceptance.test_deploy import documented_keys, unit_settings
from tests.plugins.nodes import forge_cli, node_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    parent = tmp_path_factory.mktemp("new")
    result = forge_cli("new", "shop_app", env=node_env(None), cwd=parent)
    assert result.returncode == 0, result.stderr
    assert "forge-node run" in result.stdout and "pytest" in result.stdout
    return parent / "shop_app"


def test_the_app_has_every_part_and_no_placeholder_left(shop):
    for part in ("forge.toml", "migrations/0001_tasks.sql", "shop_app/__init__.py",
                 "shop_app/api.py", "shop_app/background.py", "frontend/build/index.html",
                 "tests/test_app.py", "Containerfile", ".dockerignore", ".env.example",
                 ".gitignore", "README.md", "requirements.txt", "deploy/compose.yaml",
                 "deploy/fly/fly.toml", "deploy/systemd/shop_app.service",
                 "deploy/kubernetes/kustomization.yaml"):
        assert (shop / part).is_file(), part
    for path in (p for p in shop.rglob("*") if p.is_file()):
        text = path.read_text()
        assert "{{" not in text and "forge-notes" not in text, path
        if path.suffix == ".py":
            compile(text, str(path), "exec")
    config = tomllib.loads((shop / "forge.toml").read_text())
    assert config["project"] == {"name": "shop_app", "app": "shop_app"}
    assert (shop / config["gateway"]["static_dir"] / "index.html").is_file()


def test_its_forge_toml_documents_the_same_keys_as_the_reference():
    reference = documented_keys((REPO / "forge.toml").read_text())
    template = REPO / "src" / "forge_node" / "templates" / "app" / "forge.toml"
    assert documented_keys(template.read_text()) == reference


def test_each_app_gets_its_own_development_secret(tmp_path):
    secrets = []
    for name in ("one", "two"):
        assert forge_cli("new", f"app_{name}", env=node_env(None), cwd=tmp_path).returncode == 0
        config = tomllib.loads((tmp_path / f"app_{name}" / "forge.toml").read_text())
        secrets.append(config["auth"]["jwt_secret"])
    assert secrets[0] != secrets[1] and all(len(s) > 40 for s in secrets)


def test_its_containerfile_is_the_projects(shop):
    assert (shop / "Containerfile").read_text() == (REPO / "Containerfile").read_text()


def test_its_deploy_files_keep_the_shape_of_the_projects(shop):
    ours = REPO / "deploy"
    theirs = shop / "deploy"
    assert sorted(p.name for p in (theirs / "kubernetes").iterdir()) == \
        sorted(p.name for p in (ours / "kubernetes").iterdir())
    for name in (p.name for p in (ours / "kubernetes").iterdir()):
        kinds = [[d["kind"] for d in yaml.safe_load_all((folder / "kubernetes" / name)
                                                          .read_text()) if d]
                 for folder in (ours, theirs)]
        assert kinds[0] == kinds[1], name
    gateway = list(yaml.safe_load_all((theirs / "kubernetes" / "gateway.yaml").read_text()))
    assert gateway[0]["metadata"]["name"] == "shop-app-gateway"
    fly = [tomllib.loads((folder / "fly" / "fly.toml").read_text()) for folder in (ours, theirs)]
    assert set(fly[0]) == set(fly[1]) and fly[0]["processes"] == fly[1]["processes"]
    compose = [yaml.safe_load((folder / "compose.yaml").read_text()) for folder in (ours, theirs)]
    assert set(compose[0]["services"]) == set(compose[1]["services"])
    assert compose[1]["services"]["web"]["environment"]["JWT_SECRET"].startswith("${JWT_SECRET:?")
    unit = (theirs / "systemd" / "shop_app.service").read_text()
    assert set(unit_settings()) == {line.split("=", 1)[0].strip() for line in unit.splitlines()
                                    if "=" in line and not line.startswith("#")}


@pytest.mark.parametrize("name", ["Shop", "my-shop", "1shop", "class", "", "a" * 41])
def test_an_invalid_name_is_refused(name, tmp_path):
    result = forge_cli("new", name, env=node_env(None), cwd=tmp_path)
    assert result.returncode == 2
    assert "NAME must be a Python package name" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["json", "psycopg", "forge_node"])
def test_a_name_that_would_shadow_a_module_is_refused(name, tmp_path):
    result = forge_cli("new", name, env=node_env(None), cwd=tmp_path)
    assert result.returncode == 2
    assert f"NAME {name!r} is already the name of a Python module" in result.stderr


def test_an_existing_folder_with_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "notes.txt").write_text("mine")
    result = forge_cli("new", "shop", env=node_env(None), cwd=tmp_path)
    assert result.returncode == 2
    assert "shop already exists and is not empty" in result.stderr
    assert [p.name for p in (tmp_path / "shop").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    result = forge_cli("new", "shop", "--dir", str(tmp_path / "empty"), env=node_env(None))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "empty" / "shop" / "api.py").is_file()
