"""The transfer core: the compiled loop and its pure twin, chosen once by
``transport``, the socket checks they share and the same calls over TLS."""
