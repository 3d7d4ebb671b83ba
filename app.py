"""The demo app: notes you can list and add over `POST /_api/rpc/{name}`, and a background
job that counts each note's words once it is added. `list_notes` is live: a page subscribed
to it (frontend/build/index.html) sees every note as it is added, on any node."""

import forge_node as forge


@forge.query(public=True, live=["notes"])
def list_notes(ctx, args):
    return ctx.db.execute(
        "SELECT id, body, words, created_at FROM notes ORDER BY id").fetchall()


@forge.mutation(public=True)
def add_note(ctx, args):
    body = args.get("body")
    if not isinstance(body, str) or not body.strip():
        raise forge.Error("INVALID_ARGUMENT", "body must be a non-empty string", 400)
    row = ctx.db.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id", [body]).fetchone()
    ctx.enqueue("count_words", {"id": row.id})  # in this transaction: no note, no job
    return {"id": row.id}


@forge.job(max_attempts=5)
def count_words(ctx, args):
    ctx.db.execute("UPDATE notes SET words = array_length(regexp_split_to_array("
                   "trim(body), '\\s+'), 1) WHERE id = %s", [args["id"]])
