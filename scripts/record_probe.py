"""Record the probe's raw output from a server into tests/data/, through your own ssh."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.plan import DEFAULT_STAGING  # noqa: E402
from app.core.probe import own_output, parse_probe, probe_script  # noqa: E402

USAGE = """usage: python scripts/record_probe.py OUT.txt SSH-ARGS...
Runs the probe the app runs (the same script, over `ssh SSH-ARGS sh -s`, your ssh checking the
host key as it always does), keeps only the output that proves to be the probe's own, and
writes it to OUT.txt for the parser tests. Example:
  python scripts/record_probe.py tests/data/probe-debian13-deploy.txt -p 2222 deploy@127.0.0.1"""


def main(argv: list[str]) -> int:
    """Record one probe; 2 on a usage error, 1 when the output is not the probe's own."""
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    out, ssh_args = Path(argv[0]), argv[1:]
    token = secrets.token_hex(8)
    script = probe_script(DEFAULT_STAGING, "", token)
    res = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", *ssh_args, "sh -s"],
        input=script.encode(), capture_output=True, timeout=120,
    )  # fmt: skip
    own = own_output(res.stdout.decode(errors="replace"), token)
    if own is None:
        print(f"not the probe's own output (ssh exit {res.returncode}):", file=sys.stderr)
        print(res.stdout.decode(errors="replace")[-2000:], res.stderr.decode()[-2000:])
        return 1
    out.write_text(own)
    facts = parse_probe(own)
    print(f"{out}: {facts.os_name} {facts.kernel} {facts.arch}, user {facts.user}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
