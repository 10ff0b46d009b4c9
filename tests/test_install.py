"""install.sh's pieces, sourced into bash: waiting for the package manager's
lock (held for real by this process), the model step as the service user
against the test Hub and without a network, and what it says to do next."""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_modelfetch import REPO, WEIGHTS, FakeHub

from voxd.tools.devmodel import TINY, make_model
from voxd.tools.modelfetch import MODEL_FILES, model_format

ROOT = Path(__file__).resolve().parent.parent


def sourced(script: str, *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """bash with install.sh's functions defined, running `script` after them."""
    return subprocess.Popen(
        ["bash", "-c", f"source {shlex.quote(str(ROOT / 'install.sh'))}\n{script}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, object]]:
    """A lock file with an fcntl lock on it, as apt and dpkg take theirs."""
    path = tmp_path / "lock-frontend"
    path.touch()
    f = path.open("r+")
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield path, f
    f.close()


def test_waits_for_the_package_manager_then_goes_on(held_lock: tuple[Path, object]) -> None:
    lock, f = held_lock
    p = sourced(f"DPKG_LOCKS=({lock} /nonexistent/lock); LOCK_POLL_S=1; wait_for_dpkg_lock")
    assert p.stdout is not None
    first = p.stdout.readline()  # blocks until the script has seen the lock
    assert "another package manager is running" in first and "at most 10 min" in first
    f.close()  # type: ignore[attr-defined]  # the other apt finishes
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "the package manager is free" in out


def test_gives_up_on_a_lock_held_too_long(held_lock: tuple[Path, object]) -> None:
    lock, _ = held_lock
    p = sourced(f"DPKG_LOCKS=({lock}); LOCK_POLL_S=1; LOCK_WAIT_S=2; wait_for_dpkg_lock")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "still busy after 2 s" in err and "run install.sh again" in err


def test_a_free_lock_costs_nothing(tmp_path: Path) -> None:
    (tmp_path / "lock").touch()
    p = sourced(f"DPKG_LOCKS=({tmp_path / 'lock'}); wait_for_dpkg_lock")
    out, err = p.communicate(timeout=60)
    assert (p.returncode, out, err) == (0, "", "")


# --- the model step ------------------------------------------------------------------


def service_user() -> str:
    """'nobody' where it can run this interpreter; else root (this interpreter
    lives under a 0700 /root on some machines), which still runs the step's
    runuser and chown, though without a change of user."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("the model step runs as root (runuser, chown)")
    probe = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-c", ""], capture_output=True
    )
    return "nobody" if probe.returncode == 0 else "root"


@pytest.fixture
def install_root() -> Iterator[Path]:
    # Not tmp_path: pytest's directory is 0700, closed to the service user.
    d = Path(tempfile.mkdtemp(prefix="voxd-install-"))
    d.chmod(0o755)
    (d / "venv" / "bin").mkdir(parents=True)
    voxd = d / "venv" / "bin" / "voxd"  # the venv's script, running this checkout
    voxd.write_text(f'#!/bin/sh\nexec {sys.executable} -m voxd.cli "$@"\n')
    voxd.chmod(0o755)
    (d / "etc").mkdir()
    (d / "etc" / "voxd.toml").write_text("")
    yield d
    shutil.rmtree(d)


def model_step(
    root: Path, user: str, endpoint: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_ENDPOINT=endpoint, PYTHONPATH=str(ROOT))
    env.pop("HF_TOKEN", None)
    group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    script = f"""
        SERVICE_USER={user} SERVICE_GROUP={group}
        STATE_DIR={root}/state CONF_DIR={root}/etc VENV={root}/venv
        {" ".join(extra)}
        install_model
        echo "MODEL_STATE=$MODEL_STATE"
        next_steps
    """
    p = sourced(script, env=env)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode or 0, out, err)


@pytest.fixture
def tiny_files(tmp_path: Path) -> dict[str, bytes]:
    make_model(tmp_path, TINY, seed=4)
    return {name: (tmp_path / name).read_bytes() for name in MODEL_FILES}


@pytest.fixture
def hub(tiny_files: dict[str, bytes]) -> Iterator[FakeHub]:
    h = FakeHub(tiny_files)
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


def test_model_step_downloads_as_the_service_user(install_root: Path, hub: FakeHub) -> None:
    user = service_user()
    r = model_step(install_root, user, hub.url, f"MODEL_REPO={REPO}", "MODEL_FORMAT=q4")
    assert r.returncode == 0, r.stderr
    assert "MODEL_STATE=ready" in r.stdout
    target = install_root / "state" / "model"
    assert model_format(target) == "q4"
    uid = pwd.getpwnam(user).pw_uid
    assert all(p.stat().st_uid == uid for p in [target, *target.rglob("*")])
    assert "Next, one of" not in r.stdout  # nothing left to do


def test_model_step_without_network_says_what_to_run(install_root: Path) -> None:
    user = service_user()
    r = model_step(install_root, user, "https://voxd-test.invalid")
    assert "MODEL_STATE=failed" in r.stdout
    assert "error: cannot resolve voxd-test.invalid" in r.stderr
    target = install_root / "state" / "model"
    assert target.stat().st_uid == pwd.getpwnam(user).pw_uid
    for command in (
        f"sudo -u {user} voxd model download --dir {target}",
        f"sudo -u {user} HF_TOKEN=hf_... voxd model download --dir {target}",
        f"sudo {ROOT}/install.sh --model-dir /path/to/model",
        f"sudo {ROOT}/install.sh --no-model",
        "then: sudo systemctl start voxd",
    ):
        assert command in r.stdout
    assert not (target / WEIGHTS).exists()


def test_a_stop_before_the_model_step_only_says_to_run_it_again(tmp_path: Path) -> None:
    # As when pip cannot build voxd: no voxd command exists yet, so the summary
    # must not send the user to `voxd model download` or `voxd config check`.
    script = f"""
        STATE_DIR={tmp_path}/state DONE=("created system user voxd (group audio)")
        summary 1
    """
    p = sourced(script)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "voxd install stopped by the error above (exit 1)" in out
    assert "fix it and run install.sh again" in out
    assert "  - created system user voxd (group audio)" in out
    assert "voxd model download" not in out and "config check" not in out
    # Once the model step ran, a later failure still gets the usual next steps.
    failed = sourced(f"STATE_DIR={tmp_path}/state MODEL_STATE=failed; summary 1")
    out, err = failed.communicate(timeout=60)
    assert "voxd install done, except the model" in out
    assert f"voxd model download --dir {tmp_path}/state/model" in out


def test_dry_run_shows_the_model_step_and_the_link(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    r = subprocess.run(
        ["bash", str(ROOT / "install.sh"), "--dry-run", "--prefix", str(prefix),
         "--model-format", "q8", "--model-repo", "org/other"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"+ ln -sfn -- {prefix}/venv/bin/voxd /usr/local/bin/voxd" in r.stdout
    assert (
        f"+ runuser -u voxd -- env HOME=/var/lib/voxd {prefix}/venv/bin/voxd model download "
        "--dir /var/lib/voxd/model --config /etc/voxd/voxd.toml --repo org/other --format q8"
    ) in r.stdout
    assert "+ chown -R voxd:voxd /var/lib/voxd/model" in r.stdout
    bad = subprocess.run(
        ["bash", str(ROOT / "install.sh"), "--dry-run", "--model-format", "q5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "--model-format must be auto, q8, q4 or bf16" in bad.stderr


def test_uninstall_removes_only_its_own_link(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "voxd").symlink_to(prefix / "venv" / "bin" / "voxd")
    script = f"""
        source {shlex.quote(str(ROOT / "uninstall.sh"))}
        BIN_DIR={bin_dir} PREFIX={prefix}
        remove_link
        printf '%s\\n' "${{DONE[@]}}"
    """
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (bin_dir / "voxd").is_symlink() and f"removed {bin_dir}/voxd" in r.stdout
    (bin_dir / "voxd").symlink_to("/usr/bin/true")  # someone else's voxd
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert (bin_dir / "voxd").is_symlink()


# --- the NVIDIA GPU drop-ins -------------------------------------------------------------

DROPINS = ROOT / "systemd" / "voxd.service.d"


def gpu_step(tmp_path: Path, nodes: list[str], *commands: str) -> subprocess.CompletedProcess[str]:
    """install.sh's functions with the device nodes it looks for under tmp_path/dev
    (only `nodes` there, as plain files) and the unit directory at tmp_path/unit."""
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    for name in nodes:
        (dev / name).touch()
    body = "\n".join(commands)
    script = f"""
        GPU_DEVICES=({dev}/nvidiactl {dev}/nvhost-ctrl {dev}/nvmap)
        JETSON_DEVICES=({dev}/nvhost-ctrl {dev}/nvmap)
        UNIT_DIR={tmp_path / "unit"}
        {body}
    """
    p = sourced(script)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode or 0, out, err)


@pytest.mark.parametrize(
    ("nodes", "flag", "wanted", "why"),
    [
        ([], "", False, "no NVIDIA GPU found: none of "),
        (["nvidiactl"], "", True, "found {dev}/nvidiactl"),
        (["nvhost-ctrl"], "", True, "found {dev}/nvhost-ctrl"),
        (["nvmap"], "", True, "found {dev}/nvmap"),
        ([], "--with-gpu", True, "--with-gpu"),
        (["nvidiactl", "nvmap"], "--without-gpu", False, "--without-gpu"),
    ],
)
def test_gpu_decision(tmp_path: Path, nodes: list[str], flag: str, wanted: bool, why: str) -> None:
    r = gpu_step(
        tmp_path,
        nodes,
        f"parse_args {flag}",
        'if gpu_wanted; then echo "WANTED $GPU_WHY"; else echo "NOT $GPU_WHY"; fi',
    )
    assert r.returncode == 0, r.stderr
    expected = ("WANTED " if wanted else "NOT ") + why.format(dev=tmp_path / "dev")
    assert r.stdout.startswith(expected), r.stdout


def installed_dropins(tmp_path: Path) -> list[str]:
    d = tmp_path / "unit" / "voxd.service.d"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_gpu_dropins_follow_the_hardware(tmp_path: Path) -> None:
    # The files for real (into tmp_path); the group and user step would change
    # this host's accounts, so it is left out here (its own test runs it dry).
    step = ("add_gpu_group() { :; }", "install_gpu")
    desktop = gpu_step(tmp_path, ["nvidiactl"], *step)
    assert desktop.returncode == 0, desktop.stderr
    assert installed_dropins(tmp_path) == ["gpu.conf"]
    unit_dir = tmp_path / "unit" / "voxd.service.d"
    assert (unit_dir / "gpu.conf").read_bytes() == (DROPINS / "gpu.conf").read_bytes()
    assert f"GPU: letting the service reach the NVIDIA GPU (found {tmp_path}/dev/nvidiactl)" in (
        desktop.stdout
    )

    jetson = gpu_step(tmp_path, ["nvmap"], *step)
    assert installed_dropins(tmp_path) == ["gpu.conf", "jetson.conf"]
    assert (unit_dir / "jetson.conf").read_bytes() == (DROPINS / "jetson.conf").read_bytes()
    assert f"{unit_dir}/gpu.conf is up to date" in jetson.stdout

    (unit_dir / "override.conf").write_text("[Service]\n")  # systemctl edit's, not ours
    off = gpu_step(
        tmp_path, ["nvmap"], "parse_args --without-gpu", *step, 'printf "%s\\n" "${DONE[@]}"'
    )
    assert off.returncode == 0, off.stderr
    assert installed_dropins(tmp_path) == ["override.conf"]
    assert f"removed {unit_dir}/jetson.conf (--without-gpu)" in off.stdout


def test_gpu_group_and_user_dry_run(tmp_path: Path) -> None:
    # nobody is normally in no group, so the step adds it (or says it is in already).
    user = "nobody"
    in_video = (
        "video"
        in subprocess.run(["id", "-nG", user], capture_output=True, text=True).stdout.split()
    )
    r = gpu_step(tmp_path, [], f"DRY_RUN=1 SERVICE_USER={user}", "add_gpu_group")
    assert r.returncode == 0, r.stderr
    if in_video:
        assert f"user {user} is in group video" in r.stdout
    else:
        assert f"+ usermod -a -G video {user}" in r.stdout
    has_group = subprocess.run(["getent", "group", "video"], capture_output=True).returncode == 0
    assert ("+ groupadd --system video" in r.stdout) == (not has_group)


def test_dry_run_with_gpu_shows_the_dropin(tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", str(ROOT / "install.sh"), "--dry-run", "--no-model", "--with-gpu",
         "--prefix", str(tmp_path / "prefix")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (
        f"+ install -D -m 0644 {DROPINS}/gpu.conf /etc/systemd/system/voxd.service.d/gpu.conf"
        in r.stdout
    )
    assert "GPU: letting the service reach the NVIDIA GPU (--with-gpu)" in r.stdout
    assert "journalctl -u voxd | grep -i cuda" in r.stdout


def test_uninstall_removes_only_the_gpu_dropins(tmp_path: Path) -> None:
    unit_dir = tmp_path / "voxd.service.d"
    unit_dir.mkdir()
    for name in ("gpu.conf", "jetson.conf", "override.conf"):
        (unit_dir / name).write_text("[Service]\n")
    script = f"""
        source {shlex.quote(str(ROOT / "uninstall.sh"))}
        UNIT_DIR={tmp_path}
        remove_gpu_dropins
        printf '%s\\n' "${{DONE[@]}}"
    """
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in unit_dir.iterdir()) == ["override.conf"]
    assert f"removed {unit_dir}/gpu.conf" in r.stdout
    (unit_dir / "override.conf").unlink()
    (unit_dir / "gpu.conf").write_text("[Service]\n")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not unit_dir.exists()  # nothing else was in it
