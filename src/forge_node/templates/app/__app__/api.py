"""The functions clients call: `POST /_api/rpc/{name}` with `{"args": {...}}`."""

import forge_node as forge


@forge.query(public=True, live=["tasks"])
def list_tasks(ctx, args):
    """Every task, oldest first. Public: the page lists them without a token."""
    return ctx.db.execute(
        "SELECT id, title, words, created_at FROM tasks ORDER BY id").fetchall()


@forge.mutation(roles=["editor"])
def add_task(ctx, args):
    """Add a task; the caller's token must hold the role "editor" in its `roles` claim."""
    title = args.get("title")
    if not isinstance(title, str) or not title.strip():
        raise forge.Error("INVALID_ARGUMENT", "title must be a non-empty string", 400)
    row = ctx.db.execute("INSERT INTO tasks (title) VALUES (%s) RETURNING id",
                         [title.strip()]).fetchone()
    ctx.enqueue("count_words", {"id": row.id})  # in this transaction: no task, no job
    return {"id": row.id}


@forge.query(public=True)
def task_counts(ctx, args):
    """The cron's latest records of how many tasks there were, newest first."""
    return ctx.db.execute(
        "SELECT counted_at, tasks FROM task_counts ORDER BY counted_at DESC LIMIT 10").fetchall()
