"""The Qt-free engine: catalog, download, SSH, probe, preflight, install, profiles."""
