"""`forge-node new NAME`: a new app folder that `forge-node run` serves at once.

The files come from the package's `templates/app/` (package data): `{{name}}` in their text
becomes the app's name, `{{slug}}` its DNS-safe form (Kubernetes and compose names),
`{{version}}` this forge-node's version and `{{dev_secret}}` a development JWT secret made
for this app. A path part `__app__` becomes the name; a file name `dot.x` becomes `.x`
(setuptools leaves dotfiles out of package data).
"""

from __future__ import annotations

import importlib.util
import json
import keyword
import re
import secrets
import shutil
import sys
import urllib.parse
import urllib.request
from importlib import metadata
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from .. import __version__
from ..errors import EXIT_USAGE
from .common import fail

NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def new(
    name: Annotated[str, typer.Argument(help="The app's name: its folder and Python package.")],
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Where to create it (default ./NAME).")] = None,
) -> None:
    """Create an app: forge.toml, migrations, a package with a query, a mutation, a job and a
    cron, a page, tests, a Containerfile and deploy files."""
    problem = name_problem(name)
    if problem:
        fail(problem, EXIT_USAGE)
    target = directory or Path(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        fail(f"{target} already exists and is not empty: give another NAME, or --dir",
             EXIT_USAGE)
    for path, text in render(name).items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(text)
    wheel = own_wheel()
    if wheel is not None:
        (target / "wheels").mkdir()
        shutil.copy2(wheel, target / "wheels" / wheel.name)
    print(next_steps(name, target, wheel))


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an app's package, or None."""
    if not NAME.fullmatch(name) or keyword.iskeyword(name):
        return (f"NAME must be a Python package name: a lowercase letter, then up to 39 "
                f"lowercase letters, digits or '_' (e.g. shop or my_shop), got {name!r}")
    # the app's folder goes first on sys.path: a package of the same name as a module that
    # is already importable would hide it from forge-node or the app
    if name in sys.stdlib_module_names or importlib.util.find_spec(name) is not None:
        return f"NAME {name!r} is already the name of a Python module: choose another"
    return None


def render(name: str) -> dict[PurePosixPath, str]:
    """{relative path: text} of the new app's files."""
    values = {"{{name}}": name, "{{slug}}": name.replace("_", "-"),
              "{{version}}": __version__, "{{dev_secret}}": secrets.token_urlsafe(32)}
    rendered = {}
    for relative, source in template_files(files("forge_node") / "templates" / "app",
                                           PurePosixPath()):
        parts = [name if part == "__app__" else part for part in relative.parts]
        parts[-1] = re.sub(r"^dot\.", ".", parts[-1]).replace("__app__", name)
        text = source.read_text()
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        rendered[PurePosixPath(*parts)] = text
    return rendered


def template_files(folder: Traversable,
                   relative: PurePosixPath) -> list[tuple[PurePosixPath, Traversable]]:
    found = []
    for entry in folder.iterdir():
        if entry.is_dir():
            if entry.name != "__pycache__":
                found += template_files(entry, relative / entry.name)
        else:
            found.append((relative / entry.name, entry))
    return found


def own_wheel() -> Path | None:
    """The wheel file this forge-node was installed from, when pip recorded one (PEP 610):
    the new app's image installs forge-node from it until forge-node is on the index."""
    try:
        recorded = metadata.distribution("forge-node").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    url = json.loads(recorded).get("url", "") if recorded else ""
    if not (url.startswith("file://") and url.endswith(".whl")):
        return None
    path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    return path if path.is_file() else None


def next_steps(name: str, target: Path, wheel: Path | None) -> str:
    lines = [f"created {target}/ (the app's package: {target / name}/)",
             f"  cd {target} && forge-node run     # serves http://127.0.0.1:8080",
             f"  cd {target} && pytest             # its tests"]
    if wheel is None:
        lines.append(f"before building its image, put a forge-node wheel in {target}/wheels/ "
                     f"(python -m build --wheel --outdir {target}/wheels, in forge-node's "
                     f"repository): forge-node is not on the package index yet")
    return "\n".join(lines)
