"""Hardware abstraction layer over the iRobot Roomba / Create 2 Open Interface (OI)."""
