"""Installing NixOS onto the server's disk: the layout first (disko's file, the app's script)."""
