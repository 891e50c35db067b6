"""Shared fixtures: the library's own pytest plugin, used as our users would."""

pytest_plugins = ["awx_connection.testing.pytest_plugin"]
