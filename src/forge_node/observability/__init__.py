"""Logs, traces and metrics; each process sets its own up after it is forked."""
