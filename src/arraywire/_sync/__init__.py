"""The blocking driver: functions over a socket, Channel, listen, connect."""
