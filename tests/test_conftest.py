"""The test harness itself: the network guard of conftest.py and the session build that
pytest-xdist workers share (shared_session.build_once)."""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from network_guard import NetworkBlockedError, block_network

TESTS = Path(__file__).resolve().parent


def _pytest(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """A pytest session of its own in ``directory`` (which has its own conftest.py)."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    env.pop("PYTEST_XDIST_WORKER", None)  # when this test itself runs in an xdist worker
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=600)


def test_guard_refuses_remote_addresses_and_allows_local_ones(tmp_path):
    attempts = []
    restore = block_network(attempts)
    try:
        with pytest.raises(NetworkBlockedError, match="refused a connection to"):
            socket.create_connection(("192.0.2.1", 9), timeout=1)  # TEST-NET-1, never routed
        with socket.socket() as sock:  # a host name is refused before it is resolved
            with pytest.raises(NetworkBlockedError):
                sock.connect(("example.org", 80))
        with socket.create_server(("127.0.0.1", 0)) as server:
            with socket.create_connection(server.getsockname(), timeout=5):
                pass
        path = str(tmp_path / "sock")
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path)
            server.listen()
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
    finally:
        restore()
    assert attempts == [(socket.AF_INET, ("192.0.2.1", 9)), (socket.AF_INET, ("example.org", 80))]


def test_a_test_that_reaches_for_the_network_fails(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_net.py").write_text(textwrap.dedent("""
        import socket

        def test_connects():
            socket.create_connection(("192.0.2.1", 9), timeout=1)

        def test_swallows_the_error():
            try:
                socket.create_connection(("192.0.2.1", 9), timeout=1)
            except OSError:
                pass

        def test_local_only():
            with socket.create_server(("127.0.0.1", 0)) as server:
                socket.create_connection(server.getsockname(), timeout=5).close()
    """))
    out = _pytest(tmp_path)
    # test_connects fails (the error) and errors at teardown (the attempt); the swallowed one errors
    assert "1 failed, 2 passed, 2 errors" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert "FAILED test_net.py::test_connects" in out.stdout
    assert "ERROR test_net.py::test_swallows_the_error - Failed: the test tried to reach" in out.stdout


def test_an_import_that_reaches_for_the_network_fails_the_session(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_import.py").write_text(textwrap.dedent("""
        import socket

        try:  # as g2p_en's import did: a download attempt whose error is swallowed
            socket.create_connection(("192.0.2.1", 80), timeout=1)
        except OSError:
            pass

        def test_anything():
            pass
    """))
    out = _pytest(tmp_path)
    assert "1 error" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert "importing the test modules tried to reach the network" in out.stdout


def test_tiny_recipe_tests_are_collected_first(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_a.py").write_text("def test_a1():\n    pass\n")
    (tmp_path / "test_b.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture
        def uses_recipe(tiny_recipe):
            return tiny_recipe

        def test_b1():
            pass

        def test_b2(tiny_recipe):
            pass

        def test_b3(uses_recipe):
            pass
    """))
    out = _pytest(tmp_path, "--collect-only")
    order = [line for line in out.stdout.splitlines() if "::" in line]
    assert order == ["test_b.py::test_b2", "test_b.py::test_b3", "test_a.py::test_a1", "test_b.py::test_b1"], out.stdout


def test_xdist_workers_share_one_build(tmp_path):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (tools/install.sh installs it)")
    counter = tmp_path / "builds.txt"
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import time
        import pytest
        from shared_session import build_once

        def build(directory):
            with open({str(counter)!r}, "a") as f:
                f.write("built\\n")
            time.sleep(1)  # the other worker arrives while this one builds
            (directory / "made.txt").write_text("ok")
            return {{"answer": 42}}

        @pytest.fixture(scope="session")
        def shared(tmp_path_factory):
            return build_once(tmp_path_factory, "thing", build)

        @pytest.fixture(scope="session")
        def broken(tmp_path_factory):
            def fail(directory):
                with open({str(counter)!r}, "a") as f:
                    f.write("broken\\n")
                time.sleep(1)
                raise RuntimeError("no luck")
            return build_once(tmp_path_factory, "broken", fail)
    """))
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"test_{name}.py").write_text(textwrap.dedent(f"""
            import os, time

            def test_{name}(shared):
                directory, value = shared
                assert value == {{"answer": 42}} and (directory / "made.txt").read_text() == "ok"
                time.sleep(0.5)  # keep both workers busy
                print("WORKER", os.environ["PYTEST_XDIST_WORKER"], directory)

            def test_{name}_broken(broken):
                pass
        """))
    out = _pytest(tmp_path, "-n", "2", "--dist", "worksteal", "-rA")  # as make test; -rA: passed tests' output
    report = out.stdout + out.stderr
    assert "4 passed, 4 errors" in out.stdout, report[-3000:]
    assert sorted(counter.read_text().split()) == ["broken", "built"]  # once each, in all workers
    workers = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("WORKER")}
    directories = {line.split()[2] for line in out.stdout.splitlines() if line.startswith("WORKER")}
    assert workers == {"gw0", "gw1"} and len(directories) == 1
    assert "RuntimeError: no luck" in report
    assert "build failed in another worker: RuntimeError: no luck" in report


_TYPECHECKED = (
    "import typeguard\n"
    "@typeguard.typechecked\n"
    "def same(x: int) -> int:\n"
    "    return x\n"
    "try:\n"
    "    same('4')\n"
    "    print('unchecked')\n"
    "except typeguard.TypeCheckError:\n"
    "    print('checked')\n"
)


@pytest.mark.parametrize("typecheck, expected", [("", "unchecked"), ("1", "checked")])
def test_processes_that_tests_start_skip_typeguard_unless_asked(tmp_path, typecheck, expected):
    """tests/no_typecheck/sitecustomize.py: typeguard's decorator is a no-op in the
    processes that the tests start, and MAMBA_MI_TYPECHECK=1 keeps its checks."""
    from conftest import CHILD_PYTHONPATH

    script = tmp_path / "typechecked.py"  # typeguard instruments functions from their source file
    script.write_text(_TYPECHECKED)
    env = dict(os.environ, PYTHONPATH=CHILD_PYTHONPATH, MAMBA_MI_TYPECHECK=typecheck)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == expected, out.stderr[-2000:]
