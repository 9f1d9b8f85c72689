"""roomba-agent: fleet."""
