"""PipeGate conformance suite."""
