"""The demo app: notes you can list and add over `POST /_api/rpc/{name}`."""

import forge_node as forge


@forge.query(public=True)
def list_notes(ctx, args):
    return ctx.db.execute("SELECT id, body, created_at FROM notes ORDER BY id").fetchall()


@forge.mutation(public=True)
def add_note(ctx, args):
    body = args.get("body")
    if not isinstance(body, str) or not body.strip():
        raise forge.Error("INVALID_ARGUMENT", "body must be a non-empty string", 400)
    row = ctx.db.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id", [body]).fetchone()
    return {"id": row[0]}
