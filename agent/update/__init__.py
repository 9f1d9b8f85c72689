"""Over-the-air updates on the robot: the pure cores (preflight, what to do after a restart, the self-test),
the download, and the installer that puts a verified release beside the running one (``docs/updates.md``)."""
