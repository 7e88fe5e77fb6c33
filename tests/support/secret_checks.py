"""The secrets the tests use, and the check that none of them reaches a file, log or output."""

from __future__ import annotations

PASSPHRASE = "correct horse battery staple"  # of the sshd fixture's encrypted client key
# Every password and passphrase the tests use; they must never reach a file, a log or an output.
TEST_SECRETS = ["Nopw-pass-4711", "Pw-secret-0815!", "Plain-pass-42", PASSPHRASE]
# Secrets a test handed to the app (cli() adds the password variables it passes); per test.
GIVEN_SECRETS: list[str] = []


def assert_no_secret(data: str | bytes, where: str) -> None:
    """Fail if any known test secret appears in ``data``."""
    raw = data.encode(errors="replace") if isinstance(data, str) else data
    for secret in (*TEST_SECRETS, *GIVEN_SECRETS):
        assert secret.encode() not in raw, f"a test secret appears in {where}"
