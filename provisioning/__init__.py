"""roomba-agent: provisioning."""
