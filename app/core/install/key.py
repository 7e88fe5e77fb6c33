"""The key stage: make sure the installer accepts a key we hold; check a fresh login with it."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from app.core import keys as keymod
from app.core import remote_sh as sh
from app.core.errors import AuthError, RemoteCommandError
from app.core.install.state import Step
from app.core.kinds import AuthMethod
from app.core.lazy import LazyModule
from app.core.ssh import ConnectOptions, Credentials, connect

if TYPE_CHECKING:
    import paramiko
else:
    paramiko = LazyModule("paramiko")

KEY_RE = re.compile(r"(?:ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+\s+([A-Za-z0-9+/=]+)")


def ensure_key(step: Step) -> None:
    """Make sure the installer will accept a key we hold; install our own if needed."""
    setup, state = step.setup, step.state
    plan = setup.plan
    if plan.bundle:
        # A bundle boots with the keys it was built with; nothing on the server is carried.
        step.log(
            "key",
            "A kexec-bundle carries only the SSH keys it was built with; after the reboot "
            "the wizard logs in with your keys and agent.",
        )
        # Keys only: no password is ever sent to a host whose key cannot be checked first.
        state.installer_creds = replace(setup.creds, method=AuthMethod.AUTO, password=None)
        return
    files, own_file = _carried_files(step)
    blobs = _carried_blobs(step, files)
    auth_key = setup.session.auth_key
    if auth_key is not None and auth_key.get_base64() in blobs:
        step.log("key", "Your login key is in a file the installer keeps; it will work there.")
        state.installer_creds = replace(setup.creds, method=AuthMethod.AUTO, password=None)
        state.identity_file = plan.target.identity_files[0] if plan.target.identity_files else None
        return
    reason = (
        "you logged in with a password" if auth_key is None else "your key would not be carried"
    )
    path = keymod.key_path(setup.keys_dir, plan.key_name)
    key, line = keymod.load_or_create(path, f"nixos-kexec-wizard:{keymod.slug(plan.key_name)}")
    step.log("key", f"Installing the app's own key ({reason}): {path}")
    if key.get_base64() not in blobs:
        res = step.run(sh.append_line(own_file, line), what="adding the key")
        if not res.ok:
            raise RemoteCommandError(
                f"Could not add the app's key to {own_file}: {res.stderr.strip()[:200]}",
                "Without a key the installer cannot be reached (root has no password there).",
                "Check the permissions of ~/.ssh on the server.",
            )
        state.added_key = (own_file, line)
    state.installer_creds = Credentials(method=AuthMethod.KEY, extra_keys=(key,), use_agent=False)
    state.identity_file = str(path)
    _check_key_login(step, key)


def _carried_files(step: Step) -> tuple[list[str], str]:
    """authorized_keys files `run` copies for this login, and the login user's own file."""
    facts, session = step.setup.facts, step.setup.session
    files = [
        "/root/.ssh/authorized_keys",
        "/root/.ssh/authorized_keys2",
        "/etc/ssh/authorized_keys.d/root",
    ]
    home = facts.home or "/root"
    if session.privilege and session.privilege.kind != "root":
        user = facts.user
        files += [
            f"{home}/.ssh/authorized_keys",
            f"{home}/.ssh/authorized_keys2",
            f"/etc/ssh/authorized_keys.d/{user}",
        ]
    return files, f"{home}/.ssh/authorized_keys"


def _carried_blobs(step: Step, files: list[str]) -> set[str]:
    """The keys (their base64 blobs) in those files."""
    res = step.run(sh.read_files(files), privileged=True, what="reading authorized_keys")
    return {m.group(1) for m in KEY_RE.finditer(res.stdout)}


def _check_key_login(step: Step, key: paramiko.PKey) -> None:
    """A fresh login with the app's key, as the installer will be reached (a refusal only warns)."""
    setup = step.setup
    opts = ConnectOptions(
        timeout=setup.settings.connect_timeout, expect_key=setup.session.host_key_line
    )
    creds = Credentials(method=AuthMethod.KEY, extra_keys=(key,), use_agent=False)
    try:
        with connect(setup.session.target, creds, setup.known_hosts, opts, cancel=step.cancel):
            pass
        step.log("key", "Checked: a fresh login with the app's key works.")
    except AuthError:
        # sshd may read another AuthorizedKeysFile; `run` still copies the file we wrote.
        step.log(
            "key",
            "A fresh login with the app's key was refused by this sshd (it may read keys "
            "from elsewhere); the key is in the file the installer keeps, so continuing.",
            level="warn",
        )
