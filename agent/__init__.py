"""The robot agent: shadow sync, commands, outbox, health, run by systemd."""

from base import __version__

__all__ = ["__version__"]
