"""The pytest plugin as a user meets it: the wheel installed into a fresh venv, a test file of
theirs (docs/how-to/testing.md's example and a few more) in an empty folder with no conftest,
and pytest run there in a subprocess, under anyio's plugin and under pytest-asyncio's (strict
and auto).

The venv gets the wheel alone (``--no-deps``); its dependencies, pytest included, are this venv's,
through a folder of links to everything in its site-packages but this project's editable
install, so the plugin can only come from the wheel's entry point. It all runs offline: the wheel
is built with ``--no-isolation``, and pytest-asyncio (for its two tests) comes from the package
index pip is set up with. About 15 s in all, most of it the build and four pytest start-ups.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests._tree import SOURCE

GUIDE_BLOCK = next(block for block in re.findall(
    r"```python\n(.*?)```", (SOURCE / "docs" / "how-to" / "testing.md").read_text(encoding="utf-8"),
    re.S)
    if "instantly_manager" in block)

# The user's tests besides the guide's. MARK is the async plugin's marker.
USER_TESTS = '''
import sys

import aiohttp
import pytest

import instantly_oauth_async
from instantly_oauth_async.testing import SimulatorLimits

seen = {}


@MARK
async def test_the_fixtures_come_started_and_compressed_from_the_wheel(
        instantly_manager, instantly_simulator, instantly_workspace, request):
    assert instantly_oauth_async.__file__.startswith(sys.prefix)  # the venv's, not a checkout
    plugin = request.config.pluginmanager.get_plugin("instantly_oauth_async")
    assert plugin.__name__ == "instantly_oauth_async.testing._pytest_plugin"
    assert instantly_simulator.url.startswith("http://127.0.0.1:")
    assert instantly_simulator.limits == SimulatorLimits().compressed(60)
    assert list(instantly_simulator.workspaces) == [instantly_workspace.api_key]
    assert "state=open" in repr(instantly_manager)
    pending = await instantly_manager.start("microsoft")
    (session,) = instantly_simulator.pending_sessions()
    assert instantly_simulator.session_for(pending.session.auth_url) is session
    instantly_simulator.expire(session.session_id)
    assert (await pending).status.value == "expired"
    seen.update(url=instantly_simulator.url, manager=instantly_manager)


@MARK
async def test_after_a_test_its_manager_and_simulator_are_closed():
    assert "state=closed" in repr(seen["manager"])
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(seen["url"] + "/api/v2/oauth/session/status/x")


class TestLimitsOfTheirOwn:
    @pytest.fixture
    def instantly_simulator_limits(self):
        return SimulatorLimits(init_per_workspace=1).compressed(600)

    @MARK
    async def test_an_overridden_limits_fixture_sets_the_simulator_and_the_manager(
            self, instantly_manager, instantly_simulator):
        assert instantly_simulator.limits.init_per_workspace == 1
        pending = await instantly_manager.start("google")
        instantly_simulator.deny(pending.session.session_id)
        assert (await pending).error == "access_denied"


def test_a_sync_test_is_told_what_the_manager_needs(instantly_manager):
    pass
'''
TRIO_TEST = '''

@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused(instantly_simulator):
    pass
'''
PASSED = {
    "test_a_person_connects_a_mailbox",
    "test_the_fixtures_come_started_and_compressed_from_the_wheel",
    "test_after_a_test_its_manager_and_simulator_are_closed",
    "TestLimitsOfTheirOwn::test_an_overridden_limits_fixture_sets_the_simulator_and_the_manager",
}
SYNC_ERROR = ("test_a_sync_test_is_told_what_the_manager_needs",
              "instantly_manager needs an async test on asyncio: mark it @pytest.mark.anyio")


def user_tests(mark: str) -> str:
    """The guide's example and the tests above, for ``mark`` ("" for pytest-asyncio's auto)."""
    text = "import pytest\n\n" + GUIDE_BLOCK + USER_TESTS
    text = text.replace("@pytest.mark.anyio", "@MARK")
    return re.sub(r"(?m)^(\s*)@MARK\b.*\n", (rf"\1{mark}\n" if mark else ""), text)


def run(python: Path, folder: Path, *args: str) -> tuple[str, dict[str, str]]:
    """pytest in ``folder``; its output and each test's outcome (``-rA``'s summary lines)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(  # noqa: S603 - our own argv
        [str(python), "-m", "pytest", "-rA", "-p", "no:cacheprovider", *args],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    outcomes = {name.split("::", 1)[-1].removesuffix("[asyncio]"): outcome
                for outcome, name in re.findall(r"(?m)^(PASSED|FAILED|ERROR) (\S+)", output)}
    return output, outcomes


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel, its dependencies this venv's; its python."""
    top = tmp_path_factory.mktemp("plugin")
    built = subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir",
         str(top / "dist"), str(SOURCE)], capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (top / "dist").glob("*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(top / "venv")],  # noqa: S603
                   check=True, timeout=60)
    python = top / "venv" / "bin" / "python"
    installed = pip(python, "install", "--no-deps", "--no-index", str(wheel))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # this venv's packages, but for this project (its editable install, its metadata)
    deps = top / "deps"
    deps.mkdir()
    ours = re.compile(r"(?i)^_*(editable_impl_)?instantly_oauth_async|\.pth$")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not ours.search(entry.name):
            (deps / entry.name).symlink_to(entry)
    site = subprocess.run(  # noqa: S603 - our own argv
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(f"{deps}\n", encoding="utf-8")
    return python


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check",
         "-q", *args], capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The user's project: a test file, and a pytest.ini that makes any warning an error."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n", encoding="utf-8")
    return tmp_path


def test_the_wheels_plugin_gives_anyio_tests_a_simulator_and_a_manager(
    venv: Path, folder: Path,
) -> None:
    (folder / "test_user.py").write_text(user_tests("@pytest.mark.anyio") + TRIO_TEST,
                                         encoding="utf-8")
    output, outcomes = run(venv, folder, "--trace-config", "-p", "no:asyncio")
    assert not list(folder.glob("**/conftest.py"))
    site = re.escape(str(venv.parent.parent))
    assert re.search(rf"(?m)^\s+instantly-oauth-async-\S+ at {site}\S+/instantly_oauth_async/"
                     r"testing/_pytest_plugin\.py$", output), output[-4000:]  # its entry point
    assert {name for name, outcome in outcomes.items() if outcome == "PASSED"} == PASSED, output
    name, message = SYNC_ERROR
    assert outcomes[name] == "ERROR" and message in output
    assert outcomes["test_trio_is_refused[trio]"] == "ERROR"
    assert ("instantly_simulator runs on asyncio only (aiohttp does), not on anyio's 'trio'"
            in output)
    assert "Traceback" not in output  # each refusal is its one line


def test_without_its_entry_point_pytest_knows_no_such_fixtures(venv: Path, folder: Path) -> None:
    (folder / "test_user.py").write_text(user_tests("@pytest.mark.anyio"), encoding="utf-8")
    output, outcomes = run(venv, folder, "-p", "no:instantly_oauth_async", "-p", "no:asyncio",
                           "-k", "connects_a_mailbox")
    assert outcomes == {"test_a_person_connects_a_mailbox": "ERROR"}
    assert "fixture 'instantly_manager' not found" in output


@pytest.fixture(scope="module")
def with_pytest_asyncio(venv: Path) -> Path:
    # its one dependency that this venv may lack: the backport of asyncio.Runner, below 3.11
    installed = pip(venv, "install", "--no-deps", "pytest-asyncio>=0.23",
                    "backports.asyncio.runner>=1.1; python_version < '3.11'")
    if installed.returncode != 0:
        pytest.skip(f"pytest-asyncio could not be installed here: {installed.stderr[-500:]}")
    return venv


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_the_wheels_plugin_works_under_pytest_asyncio(
    with_pytest_asyncio: Path, folder: Path, mode: str,
) -> None:
    (folder / "test_user.py").write_text(
        user_tests("@pytest.mark.asyncio" if mode == "strict" else ""), encoding="utf-8")
    if mode == "strict":  # anyio's tests beside them, each on its own plugin's loop
        (folder / "test_anyio.py").write_text(user_tests("@pytest.mark.anyio"), encoding="utf-8")
    output, outcomes = run(with_pytest_asyncio, folder, "-o", f"asyncio_mode={mode}",
                           "-o", "asyncio_default_fixture_loop_scope=function")
    assert re.search(rf"(?i)asyncio: mode=(Mode\.)?{mode}\b", output), output[:2000]
    passed = {name for name, outcome in outcomes.items() if outcome == "PASSED"}
    assert passed == PASSED, output
    files = 2 if mode == "strict" else 1
    assert output.count("PASSED") == files * len(PASSED), output
    assert output.count(f"::{SYNC_ERROR[0]} - ") == files and SYNC_ERROR[1] in output


def test_importing_the_library_imports_no_pytest(venv: Path) -> None:
    done = subprocess.run(  # noqa: S603 - our own argv
        [str(venv), "-c", "import sys, instantly_oauth_async, instantly_oauth_async.testing; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest')))"],
        capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
