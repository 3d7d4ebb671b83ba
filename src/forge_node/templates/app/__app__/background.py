"""Work done away from requests: a job per new task and a cron."""

import forge_node as forge


@forge.job(max_attempts=5)
def count_words(ctx, args):
    """Store how many words a task's title has. Run at least once per task: it may run twice
    after a crash, and gives the same answer."""
    ctx.db.execute("UPDATE tasks SET words = array_length(regexp_split_to_array("
                   "trim(title), '\\s+'), 1) WHERE id = %s", [args["id"]])


# Every 5 seconds (the leading field is seconds), so that a new app shows it working at once;
# a real schedule reads like "*/15 * * * *" or "@daily".
@forge.cron("*/5 * * * * *")
def count_tasks(ctx):
    """Record how many tasks there are at this tick, and forget records older than a day.
    Keyed by the tick: a retried tick overwrites its own record."""
    ctx.db.execute("INSERT INTO task_counts (counted_at, tasks) SELECT %s, count(*) FROM tasks "
                   "ON CONFLICT (counted_at) DO UPDATE SET tasks = excluded.tasks",
                   [ctx.scheduled_for])
    ctx.db.execute("DELETE FROM task_counts WHERE counted_at < now() - interval '1 day'")
