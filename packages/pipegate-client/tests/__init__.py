"""Tests of pipegate-client (a package so that mypy names its conftest apart)."""
