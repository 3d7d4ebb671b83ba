"""The gateway's resources: one module per route family."""
