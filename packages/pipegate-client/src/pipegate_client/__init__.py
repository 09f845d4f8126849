"""PipeGate client: the end of a tunnel next to a local app."""
