"""{{name}}: tasks that anyone may list and editors may add, a job that counts each task's
words once it is added, and a cron that records how many tasks there are.

`forge-node run` imports this package (forge.toml, `[project] app`); importing its modules
is what registers their functions, jobs and crons.
"""

from . import api, background

__all__ = ["api", "background"]
