"""PipeGate server: the public end of a tunnel."""
