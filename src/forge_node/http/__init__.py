"""The gateway's falcon WSGI app."""
