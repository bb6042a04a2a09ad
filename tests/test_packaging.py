"""The distributions as PyPI gets them: ``python -m build`` makes the sdist, then the wheel from
that sdist (offline: ``--no-isolation`` uses the build backend of the ``test`` extra).

PyPI shows the wheel's long description with no repository around it, so a relative link there
(``docs/LIMITS.md``, ``examples/x.py``) leads nowhere: links to the repository's files become
plain text naming the file, and those files ship in the sdist.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

from instantly_oauth_async.redis import _lua as _redis_lua
from tests._tree import LIBRARY, SOURCE, SOURCE_PACKAGE

LICENSE_LINES = ("MIT License", "Copyright (c) 2026 instantly-oauth-async developers")
# inline links and images [text](target), reference definitions [name]: target, HTML attributes
LINK_TARGETS = (r"\]\(\s*<?([^)\s>]+)", r"(?m)^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)",
                r"""(?i)\b(?:href|src)\s*=\s*["']?([^"'\s>]+)""")
ABSOLUTE = re.compile(r"(?i)(?:https?|mailto):")


def link_targets(markdown: str) -> list[str]:
    return [target for pattern in LINK_TARGETS for target in re.findall(pattern, markdown)]


def metadata(text: str) -> Message:
    return Parser().parsestr(text)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[tarfile.TarFile, zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(SOURCE)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return tarfile.open(sdist), zipfile.ZipFile(wheel)


def sdist_file(sdist: tarfile.TarFile, path: str) -> str | None:
    top = sdist.getnames()[0].split("/")[0]
    try:
        member = sdist.extractfile(f"{top}/{path}")
    except KeyError:
        return None
    return member.read().decode() if member is not None else None


def wheel_metadata(wheel: zipfile.ZipFile) -> Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return metadata(wheel.read(name).decode())


def test_the_license_ships_in_the_sdist_and_the_wheel(
    dists: tuple[tarfile.TarFile, zipfile.ZipFile],
) -> None:
    sdist, wheel = dists
    in_sdist = sdist_file(sdist, "LICENSE")
    licenses = [n for n in wheel.namelist() if re.search(r"\.dist-info/licenses/LICENSE$", n)]
    assert in_sdist is not None and len(licenses) == 1
    in_wheel = wheel.read(licenses[0]).decode()
    assert in_sdist == in_wheel == (SOURCE / "LICENSE").read_text(encoding="utf-8")
    assert all(line in in_wheel for line in LICENSE_LINES)
    meta = wheel_metadata(wheel)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]


def test_the_metadata_caps_no_python_and_claims_no_anyio_backend(
    dists: tuple[tarfile.TarFile, zipfile.ZipFile],
) -> None:
    sdist, wheel = dists
    pkg_info = sdist_file(sdist, "PKG-INFO")
    assert pkg_info is not None
    for meta in (wheel_metadata(wheel), metadata(pkg_info)):
        assert meta["Requires-Python"] == ">=3.10"  # no upper cap
        classifiers = meta.get_all("Classifier") or []
        assert "Framework :: AsyncIO" in classifiers  # aiohttp ties it to asyncio
        assert not [c for c in classifiers if "AnyIO" in c]


def test_the_long_description_has_no_link_that_breaks_on_pypi(
    dists: tuple[tarfile.TarFile, zipfile.ZipFile],
) -> None:
    sdist, wheel = dists
    meta = wheel_metadata(wheel)
    assert meta["Description-Content-Type"] == "text/markdown"
    description = str(meta.get_payload())
    assert "## The manager: limits, polling, results" in description  # the README, whole
    targets = link_targets(description)
    assert "https://instantly.ai" in targets
    assert [t for t in targets if not ABSOLUTE.match(t)] == []
    # the repository's README links to files: PyPI's page names each, and each is in the sdist
    readme = (SOURCE / "README.md").read_text(encoding="utf-8")
    files = [t for t in link_targets(readme) if not ABSOLUTE.match(t)]
    assert "docs/LIMITS.md" in files and "examples/fastapi_app.py" in files
    for path in files:
        assert f"`{path}`" in description, path
        assert sdist_file(sdist, path) is not None, path
    for path in ("scripts/check", "tests/test_browser.py", "examples/quickstart.py"):  # named
        assert path in description and sdist_file(sdist, path) is not None, path
    pkg_info = sdist_file(sdist, "PKG-INFO")
    assert pkg_info is not None and metadata(pkg_info).get_payload() == description


def package_data(package: Path) -> list[str]:
    """Every file of the package but its Python sources and their caches (the Lua scripts,
    py.typed), by its path in the wheel."""
    return sorted(f"instantly_oauth_async/{p.relative_to(package).as_posix()}"
                  for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
                  and "__pycache__" not in p.parts)


def test_the_wheel_carries_every_lua_script_and_loads_them_from_itself(
    dists: tuple[tarfile.TarFile, zipfile.ZipFile], tmp_path: Path,
) -> None:
    _, wheel = dists
    data = package_data(SOURCE_PACKAGE)
    scripts = [name for name in data if name.endswith(".lua")]
    assert "instantly_oauth_async/redis/lua/take.lua" in scripts
    assert "instantly_oauth_async/redis/lua/batch.lua" in scripts
    assert "instantly_oauth_async/py.typed" in data
    assert data == sorted([*scripts, "instantly_oauth_async/py.typed"])  # a new kind: look here
    shipped = sorted(n for n in wheel.namelist()
                     if n.startswith("instantly_oauth_async/") and not n.endswith(".py"))
    assert shipped == data
    # and the library these tests import (the installed wheel in .ci/run's wheel step) has them
    assert package_data(LIBRARY) == data
    # Unpacked alone (no checkout on the path), the wheel builds the same batch script.
    wheel.extractall(tmp_path)  # noqa: S202 - the wheel we just built
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pathlib; "
            "import instantly_oauth_async.redis._lua as m; "
            "assert pathlib.Path(m.__file__).is_relative_to(sys.argv[1]), m.__file__; "
            "print(m.BATCH)")
    done = subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == _redis_lua.BATCH + "\n"
