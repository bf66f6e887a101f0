"""The package's version (read by setup.cfg, the CLI's ``--version`` and saved checkpoints)."""

__version__ = "0.1.0"
