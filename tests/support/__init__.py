"""Real servers for the tests: OpenSSH sshd, an HTTP releases server, stand-in tarballs."""
