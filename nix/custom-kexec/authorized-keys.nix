# Your SSH public keys, one string each (the contents of ~/.ssh/id_ed25519.pub and the like).
[
  # "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... you@laptop"
]
