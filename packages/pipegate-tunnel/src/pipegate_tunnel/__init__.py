"""PipeGate's asyncio tunnel shell, shared by the server and the client."""

__all__: list[str] = []
