"""docs/orchestrators.md's Ansible task and Terraform command, run exactly as written there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.machine import Machine
from tests.support.sshd import SSHEnv, free_port
from tests.test_cli import ROOT

DOC = (ROOT / "docs" / "orchestrators.md").read_text()


def _shim(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has `nixos-kexec-wizard`, as an installed copy would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "nixos-kexec-wizard"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m app "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def _last_result(stdout: str) -> dict[str, Any]:
    """What Ansible's `stdout_lines | last | from_json` reads."""
    result: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    return result


def test_the_ansible_task_runs_one_server_per_fork_without_a_prompt(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], tmp_path: Path
) -> None:
    (argv_line,) = re.findall(r"^\s*argv: (\[.*\])$", DOC, re.M)
    argv: list[str] = json.loads(argv_line)  # a YAML flow list of quoted strings is JSON
    env = {**_shim(tmp_path), **urls}
    inventory = {  # one that installs, one whose address answers nothing
        "web-1": {"ansible_host": "127.0.0.1", "ansible_port": str(machine.port)},
        "web-2": {"ansible_host": "127.0.0.1", "ansible_port": str(free_port())},
    }

    def task(host: str) -> subprocess.CompletedProcess[str]:
        hostvars = {**inventory[host], "kexec_key": str(ssh_env.key)}
        args = [re.sub(r"\{\{ (\w+) \}\}", lambda m: hostvars[m.group(1)], a) for a in argv]
        return subprocess.run(
            args, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip

    with ThreadPoolExecutor(2) as forks:  # Ansible's forks: both servers at once
        ok, down = forks.map(task, ["web-1", "web-2"])
    # failed_when: rc != 0; changed_when: the last line's outcome.
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert _last_result(ok.stdout)["outcome"] == "installer-ready"
    assert _last_result(ok.stdout)["ssh_command"][0] == "ssh"
    assert machine.state == "installer"
    failed = _last_result(down.stdout)
    assert down.returncode == 20 == failed["exit_code"] and failed["ok"] is False
    assert failed["error"]["fix"] and not down.stderr.strip()  # nothing was asked


def test_the_terraform_command_leaves_each_servers_events_in_its_file(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], tmp_path: Path
) -> None:
    (command,) = re.findall(r'^\s*command = "(.*)"$', DOC, re.M)
    key = f"127.0.0.1:{machine.port}"
    shell = (
        command.replace('${replace(each.key, ":", "-")}', key.replace(":", "-"))
        .replace("${each.key}", key)
        .replace("${var.kexec_key}", str(ssh_env.key))
    )
    assert "${" not in shell
    run = subprocess.run(
        ["sh", "-c", shell], env={**_shim(tmp_path), **urls}, cwd=tmp_path,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]  # Terraform marks the resource created
    events = (tmp_path / f"kexec-127.0.0.1-{machine.port}.jsonl").read_text()
    assert _last_result(events)["outcome"] == "installer-ready"
    assert machine.state == "installer"
