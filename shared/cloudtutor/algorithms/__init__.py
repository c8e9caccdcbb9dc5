"""Pure algorithm code (no I/O): the services are thin loops around these."""
