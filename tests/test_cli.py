"""The ``dispatcher`` command as a person runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_PASSWORD, free_port


def dispatcher(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_run_starts_the_node_prints_how_to_reach_it_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, api_port = free_port(), free_port()
    env = {"DISPATCHER_TARANTOOL__PORT": str(port), "DISPATCHER_TARANTOOL__PASSWORD": TEST_PASSWORD,
           "DISPATCHER_API__PORT": str(api_port), "DISPATCHER_DISPATCH__DEMO_DEVICES": "50"}
    proc = dispatcher("run", "--demo", cwd=tmp_path, env=env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(10)]
        assert lines[0].startswith("node node1 is up"), lines
        assert f"127.0.0.1:{port}" in lines[1]
        assert f"http://127.0.0.1:{api_port}" in lines[2]
        assert any("50 demo devices" in line for line in lines)
        curl = next(line for line in lines if "curl" in line)
        # The printed example works as printed.
        run = subprocess.run(curl.strip(), shell=True, capture_output=True, text=True, timeout=30)
        assert '"state"' in run.stdout and '"progress"' in run.stdout, run.stdout + run.stderr
        progress = proc.stdout.readline()
        assert progress.startswith("broadcast b_"), progress
        assert port_open(port)
        probe = subprocess.run([sys.executable, "-m", "dispatcher", "probe"], env={**os.environ, **env},
                               cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0 and "/readyz: 200" in probe.stdout, probe.stdout + probe.stderr
        assert (tmp_path / "data" / "tarantool.log").exists(), "data goes to ./data by default"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert not port_open(port), "Ctrl-C stops the node's Tarantool too"
    finally:
        proc.kill()
        proc.communicate()


def test_bad_config_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[tarantool]\nport = 'x'\n")
    proc = dispatcher("--config", "bad.toml", "run", cwd=tmp_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.startswith("dispatcher: invalid settings") and "tarantool.port" in err
    assert "Traceback" not in err


def test_check_config_hides_secrets(tmp_path: Path) -> None:
    proc = dispatcher("check-config", "--demo", cwd=tmp_path,
                      env={"DISPATCHER_TARANTOOL__PASSWORD": "hunter2hunter2"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert '"port": 3301' in out and "hunter2hunter2" not in out + err
    assert 'warning: node.gateways = "fake"' in err


def test_without_credentials_or_keys_the_node_refuses_to_start(tmp_path: Path) -> None:
    """No [apps.*] or api.keys and no --demo: no fake gateway, no demo
    device, no made-up key; a message naming each missing setting."""
    port = free_port()
    env = {"DISPATCHER_TARANTOOL__PORT": str(port), "DISPATCHER_TARANTOOL__PASSWORD": TEST_PASSWORD}
    proc = dispatcher("run", cwd=tmp_path, env=env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert err.startswith("dispatcher: cannot start this node: apps: no app is configured"), err
    assert "[apps.<name>.apns]" in err and "api.keys: no API key is configured" in err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "data").exists(), "nothing was started: no Tarantool, no fakes"
    check = dispatcher("check-config", cwd=tmp_path, env=env)
    out, err = check.communicate(timeout=30)
    assert check.returncode == 2 and "error: apps: no app is configured" in err and "error: api.keys" in err


def test_demo_beyond_loopback_makes_no_key(tmp_path: Path) -> None:
    proc = dispatcher("run", "--demo", cwd=tmp_path, env={"DISPATCHER_API__HOST": "0.0.0.0"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "api.keys: api.host 0.0.0.0 is beyond loopback, so demo mode makes no key" in err


def test_check_config_warns_about_unsafe_combinations(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\ngateways = "fake"\n[tarantool]\nhost = "10.0.0.5"\npassword = "a-long-enough-password"\n'
        '[api]\nhost = "0.0.0.0"\nkeys = [{key = "a-long-enough-password", scopes = ["admin", "backend"]}]\n')
    config.chmod(0o644)
    proc = dispatcher("--config", str(config), "check-config", cwd=tmp_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    for expected in ("api.host 0.0.0.0: the API listens beyond loopback",
                     "tarantool.host 10.0.0.5: Tarantool's port 3301 listens beyond loopback",
                     "api.keys[0]: the same as a Tarantool password",
                     "api.keys[0]: one key with both scopes",
                     f"config file {config} is readable by other users (mode 644)"):
        assert any(expected in line for line in warnings), (expected, warnings)
    assert "a-long-enough-password" not in out + err


def test_make_secrets_writes_private_files_a_node_reads_and_keeps_them(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    proc = dispatcher("make-secrets", str(secrets_dir), cwd=tmp_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    files = sorted(p.name for p in secrets_dir.iterdir())
    assert files == ["dispatcher_api__keys", "dispatcher_node__replicator_password",
                     "dispatcher_tarantool__password"], files
    assert all((secrets_dir / f).stat().st_mode & 0o777 == 0o600 for f in files)
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    values = {f: (secrets_dir / f).read_text() for f in files}
    assert not any(v in out + err for v in values.values()), "secrets are not printed"
    again = dispatcher("make-secrets", str(secrets_dir), cwd=tmp_path)
    again.communicate(timeout=30)
    assert {f: (secrets_dir / f).read_text() for f in files} == values, "a second run keeps them"

    env = {"DISPATCHER_SECRETS_DIR": str(secrets_dir), "DISPATCHER_NODE__GATEWAYS": "fake"}
    check = dispatcher("check-config", cwd=tmp_path, env=env)
    out, err = check.communicate(timeout=30)
    assert check.returncode == 0, err
    assert '"password": "**********"' in out and '"scopes": [\n' in out
    assert not any(v in out + err for v in values.values())
    assert "dispatcher-dev-password" not in out


def test_make_secrets_into_a_place_it_cannot_write_names_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    proc = dispatcher("make-secrets", str(tmp_path / "file" / "secrets"), cwd=tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "make-secrets: cannot write secrets into" in err, err
    assert "Traceback" not in err


def test_an_unreadable_secrets_dir_or_a_bad_secret_names_it(tmp_path: Path) -> None:
    proc = dispatcher("check-config", cwd=tmp_path, env={"DISPATCHER_SECRETS_DIR": str(tmp_path / "none")})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "DISPATCHER_SECRETS_DIR" in err and "Traceback" not in err, err
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "dispatcher_api__keys").write_text('[{"key": "short", "scopes": ["admin"]}]')
    proc = dispatcher("check-config", cwd=tmp_path, env={"DISPATCHER_SECRETS_DIR": str(tmp_path / "s")})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "api.keys.0.key" in err and "Traceback" not in err, err
    assert "short" not in err


def test_probe_of_a_node_not_listening_fails_saying_where_it_looked(tmp_path: Path) -> None:
    port = free_port()
    probe = subprocess.run([sys.executable, "-m", "dispatcher", "probe"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=30, env={**os.environ, "DISPATCHER_API__PORT": str(port)})
    assert probe.returncode == 1 and f"http://127.0.0.1:{port}/readyz" in probe.stderr, probe.stderr
    assert "Traceback" not in probe.stderr
