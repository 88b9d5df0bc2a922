"""Tarantool-backed push-notification dispatcher."""

__version__ = "0.1.0"
