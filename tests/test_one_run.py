"""One run per server in every face: what the three copies of the flow used to do differently."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.profiles import Profile, ProfileStore
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.secret_checks import PASSPHRASE
from tests.support.sources import tree
from tests.support.sshd import SSHEnv, free_port
from tests.support.tarballs import machine_bundle
from tests.test_cli import ROOT, Run, cli
from tests.test_fleet import _run_in_terminal, more_machines

FACES = [*sorted((ROOT / "app" / "cli").glob("*.py")), *sorted((ROOT / "app" / "ui").rglob("*.py"))]


def _trust(known_hosts: Path, *machines: Machine) -> None:
    """The app's known_hosts trusting these machines' host keys (nothing is asked)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with known_hosts.open("a") as f:
        for m in machines:
            for k in m.host_keys:
                kind, b64 = k.with_suffix(".pub").read_text().split()[:2]
                f.write(f"[127.0.0.1]:{m.port} {kind} {b64}\n")


def _read_only_config(tmp_path: Path, *args: str, env: dict[str, str]) -> Run:
    """The command line with the app's config folder mounted read-only (as a full disk or a
    read-only home would make it): profiles.json cannot be written, the rest can be read."""
    config = tmp_path / "app" / "config"
    config.mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(config), sys.executable, "-m", "app", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return Run(p.returncode, p.stdout, p.stderr)


# -- 1. a profile that cannot be written is a warning beside the install's own outcome ----------


@pytest.mark.fault
@pytest.mark.parametrize("why", ["read-only", "name refused"])
def test_a_profile_that_cannot_be_saved_never_replaces_the_install_outcome(
    why: str, ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], tmp_path: Path
) -> None:
    _trust(tmp_path / "app" / "config" / "known_hosts", machine)
    args = ["install", "--json", "--yes", f"root@127.0.0.1:{machine.port}", "-i",
            str(ssh_env.key), "--transfer", "upload", "--down-timeout", "20", "--timeout", "20"]  # fmt: skip
    if why == "read-only":
        r = _read_only_config(tmp_path, *args, "--save-profile", "web-1", env=urls)
    else:
        r = cli(*args, "--save-profile", "web 1/../x", env=urls)
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert r.result["ok"] and r.result["outcome"] == "installer-ready"
    assert machine.state == "installer"
    warnings = [e["message"] for e in r.events if e.get("level") == "warn"]
    assert any("was not saved" in w and "the result below is the install's own" in w
               for w in warnings), warnings  # fmt: skip


@pytest.mark.fault
def test_a_batch_whose_profiles_cannot_be_saved_still_ends_each_server_and_the_summary(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], tmp_path: Path
) -> None:
    with more_machines(ssh_env, "ok") as (second,):
        _trust(tmp_path / "app" / "config" / "known_hosts", machine, second)
        store = ProfileStore(tmp_path / "app" / "config" / "profiles.json")
        for name, m in (("web-1", machine), ("web-2", second)):
            store.put(
                Profile(name, "127.0.0.1", port=m.port, auth="key", key_path=str(ssh_env.key))
            )
        r = _read_only_config(
            tmp_path, "install", "--json", "--yes", "--from-profiles", "web-1", "web-2",
            "--transfer", "upload", "--down-timeout", "20", "--timeout", "20", env=urls,
        )  # fmt: skip
        assert machine.state == second.state == "installer", r.stdout[-3000:] + r.stderr[-2000:]
    summary = r.events[-1]
    assert summary["event"] == "summary" and summary["ok"] and r.code == 0, r.stdout[-3000:]
    assert [h["outcome"] for h in summary["hosts"]] == ["installer-ready", "installer-ready"]


# -- 2. a batch of kexec-bundles asks about each new host key, as one server does ---------------


def test_a_batch_of_kexec_bundles_asks_about_their_new_host_keys_and_waits_again(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], tmp_path: Path
) -> None:
    bundle = machine_bundle(
        tmp_path / "kexec-bundle-x86_64", ssh_env.key.with_suffix(".pub").read_bytes()
    )
    with more_machines(ssh_env, "ok") as (second,):
        _trust(tmp_path / "app" / "config" / "known_hosts", machine, second)
        a, b = (f"root@127.0.0.1:{m.port}" for m in (machine, second))
        code, shown = _run_in_terminal(
            ["install", a, b, "-i", str(ssh_env.key), "--image", str(bundle),
             "--down-timeout", "20", "--timeout", "20"],
            urls,
            [("Type the number of servers (2) to boot the installer:", "2"),
             ("Trust these 2 key(s) and go on? [y/N]", "y")],
        )  # fmt: skip
        assert machine.state == second.state == "installer", shown[-3000:]
    assert code == 0, shown[-3000:]
    assert "NOT verified" in shown or "new" in shown
    assert "The NixOS installer runs on 2 of 2 servers." in shown


# -- 3. a passphrase and a sudo password are asked in a batch, as for one server ----------------


def test_a_batch_asks_for_a_key_passphrase_once_and_for_each_sudo_password(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], tmp_path: Path
) -> None:
    with more_machines(ssh_env, "ok") as (second,):
        _trust(tmp_path / "app" / "config" / "known_hosts", machine, second)
        a, b = (f"{ssh_env.pw.name}@127.0.0.1:{m.port}" for m in (machine, second))
        code, shown = _run_in_terminal(
            ["install", a, b, "-i", str(ssh_env.enc_key), "--transfer", "upload"],
            urls,
            [(f"Passphrase for {ssh_env.enc_key}:", PASSPHRASE),
             (f"sudo password for {ssh_env.pw.name} on ", ssh_env.pw.password),
             (f"sudo password for {ssh_env.pw.name} on ", ssh_env.pw.password),
             ("Type the number of servers (2) to boot the installer:", "no")],
        )  # fmt: skip
        assert machine.state == second.state == "original"
    # Both got as far as the confirmation, which was declined: nothing changed on either.
    assert shown.count("Passphrase for") == 1, shown[-3000:]
    assert shown.count("sudo password for") == 2, shown[-3000:]
    assert "Not confirmed; nothing was changed on the servers." in shown, shown[-3000:]
    assert "passphrase-required" not in shown and "privilege" not in shown
    assert code == 130


# -- 4. one server, one app key name, whichever face installs it --------------------------------


def test_an_ssh_config_alias_names_the_app_key_as_the_wizard_does(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], isolated_env: Path, tmp_path: Path
) -> None:
    (isolated_env / ".ssh" / "config").write_text(
        f"Host web\n  HostName 127.0.0.1\n  Port {machine.port}\n  User root\n"
    )
    _trust(tmp_path / "app" / "config" / "known_hosts", machine)
    r = cli("install", "--json", "web", "-i", str(ssh_env.key), "--transfer", "upload", env=urls)
    assert r.code == 2 and "needs a confirmation" in r.stdout, r.stdout[-2000:]
    (plan,) = [e["plan"] for e in r.events if e["event"] == "plan"]
    # The wizard's profile name for an alias is the alias: the key is named after it there too.
    assert plan["key_name"] == "web"


# -- 5. the faces never write into the engine's live objects ------------------------------------

ENGINE_OBJECTS = {"fleet", "env", "installer", "inst", "run", "session", "plan"}


def test_no_face_assigns_to_an_attribute_of_a_live_engine_object() -> None:
    """``fleet.emit = ...``, ``env.catalog = ...``, ``inst.cancel = ...``: a face that swaps
    the engine's callbacks or choices from outside races the engine's own threads."""
    offenders = []
    for f in FACES:
        for node in ast.walk(tree(f)):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])  # fmt: skip
            for t in targets:
                chain, cur = [], t.value if isinstance(t, ast.Attribute) else None
                while isinstance(cur, ast.Attribute):
                    chain.append(cur.attr)
                    cur = cur.value
                if isinstance(cur, ast.Name):
                    chain.append(cur.id)
                if set(chain) & ENGINE_OBJECTS:
                    offenders.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# -- 6. a batch names each server once, by what it is ----------------------------------------


@pytest.mark.parametrize("how", ["same label", "same address"])
def test_a_batch_that_names_one_server_twice_is_refused_before_anything_connects(
    how: str, tmp_path: Path
) -> None:
    port_a, port_b = free_port(), free_port()
    if how == "same label":  # a profile named like another entry's target text
        a = f"root@127.0.0.1:{port_a}"
        store = ProfileStore(tmp_path / "app" / "config" / "profiles.json")
        store.put(Profile(a, "127.0.0.1", port=port_b))
        r = cli("install", "--json", "--yes", a, "--from-profiles", a)
        says = "both called"
    else:
        r = cli("install", "--json", "--yes", f"root@localhost:{port_a}",
                f"root@127.0.0.1:{port_a}", f"root@127.0.0.1:{port_b}")  # fmt: skip
        says = "are the same server"
    assert r.code == 2, r.stdout[-2000:]
    assert says in r.result["error"]["what"], r.result
    assert not [e for e in r.events if e["event"] == "stage"]  # nothing connected


# -- 7. cancelling one server of a batch leaves the others' shared download alone ---------------


def test_cancelling_one_run_keeps_the_download_another_run_waits_for(
    ssh_env: SSHEnv, machine: Machine, releases: ReleasesServer, settings: object,
    tmp_path: Path,
) -> None:  # fmt: skip
    import threading
    import time

    from app.core.catalog import CatalogClient
    from app.core.download import ImageCache
    from app.core.events import CancelToken, Event
    from app.core.fleet import SharedImages
    from app.core.flow import choose_image
    from app.core.plan import ImageRequest
    from app.core.settings import Settings
    from tests.support.releases import ASSET, Fault

    assert isinstance(settings, Settings)
    releases.faults[f"nixos-26.05/{ASSET}"] = Fault(stall=2.0)
    catalog = CatalogClient(settings, tmp_path / "catalog.json").load()
    choice = choose_image(ImageRequest(channel="nixos-26.05", arch="x86_64"), None, settings,
                          catalog)  # fmt: skip
    shared = SharedImages(ImageCache(tmp_path / "images"), settings)
    first, second = CancelToken(), CancelToken()
    got: dict[str, object] = {}
    seen: list[Event] = []

    def wait(name: str, token: CancelToken) -> None:
        try:
            got[name] = shared.get(choice, seen.append, token)
        except Exception as exc:
            got[name] = exc

    threads = [threading.Thread(target=wait, args=("a", first)),
               threading.Thread(target=wait, args=("b", second))]  # fmt: skip
    threads[0].start()  # the first row starts the download...
    deadline = time.monotonic() + 10
    while not releases.downloads(ASSET) and time.monotonic() < deadline:
        time.sleep(0.05)
    threads[1].start()  # ...the second waits for the same one
    time.sleep(0.3)
    first.cancel()  # the first row's Cancel, mid-download
    for t in threads:
        t.join(60)
    assert type(got["a"]).__name__ == "Cancelled"
    image = got["b"]
    assert getattr(image, "path", None) is not None and Path(image.path).exists(), got  # type: ignore[attr-defined]
    assert len(releases.downloads(ASSET)) == 1
