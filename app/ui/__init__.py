"""The Qt face of the app; the only package allowed to import PySide6."""
