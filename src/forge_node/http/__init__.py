"""The gateway's falcon ASGI app."""
