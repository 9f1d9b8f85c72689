"""AWS IoT Device Management Commands, the local cloud's stand-in (see ``docs/commands.md``)."""
