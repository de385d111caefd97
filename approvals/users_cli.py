"""``steward users …``: the people who decide approvals and their roles (local administration, on the
database itself like ``steward tokens``). Mounted by ``runtime.cli`` as a command group.

    steward users add maria --role pricing_manager --email maria@example.com
    steward users password maria       # asks twice; --stdin reads one line (scripts)
    steward users list
    steward users disable maria        # and every token of hers, at once (any new one too)
    steward users enable maria
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from runtime.cli import Output, OutputOption, admin, emit_json, local

app = typer.Typer(name="users", help="People who decide approvals, and their roles (local).", no_args_is_help=True)


@app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The name their tokens are created for (`tokens create --user`)")],
    role: Annotated[list[str], typer.Option(help=(
        "A role they hold, repeated: pricing_manager sales_ops compliance operator admin, or one a policy of "
        "yours escalates to"))] = [],  # noqa: B006
    email: Annotated[str, typer.Option(help="Where reminders and escalations reach them")] = "",
) -> None:
    """Add a person with their roles."""
    from approvals import users

    def add(session: Any) -> list[str]:
        return users.add_user(session=session, name=name, roles=role, email=email, actor=admin()).roles

    roles = local(add)  # a bad name or role, or a taken name: exit 2 with the reason
    typer.echo(f"added {name.strip()} ({', '.join(roles) or 'no role'})")


@app.command("list")
def users_list(output: OutputOption = Output.text) -> None:
    """Everyone, with their roles and whether they are disabled."""
    from approvals import users

    rows = local(lambda s: [{**u.model_dump(mode="json", exclude={"password_hash"}),
                             "can_sign_in": u.password_hash is not None} for u in users.list_users(session=s)],
                 read_only=True)
    if output is Output.json:
        emit_json(rows)
        return
    for row in rows:
        state = f"disabled {row['disabled_at'][:19]}" if row["disabled_at"] else "active"
        sign_in = "" if row["can_sign_in"] else "  (no password: cannot sign in)"
        typer.echo(f"{row['name']:<24} {', '.join(row['roles']) or '-':<32} {state}"
                   f"{'  (demo)' if row['demo'] else ''}{sign_in}")


@app.command("disable")
def users_disable(name: Annotated[str, typer.Argument(help="Whom to disable")]) -> None:
    """Disable a person: their tokens are revoked at once (a server refuses them within a second)."""
    from approvals import users

    revoked = local(lambda s: users.disable_user(session=s, name=name, actor=admin()))
    typer.echo(f"disabled {name}; {revoked} token(s) revoked")


@app.command("enable")
def users_enable(name: Annotated[str, typer.Argument(help="Whom to bring back")]) -> None:
    """Bring a disabled person back; their old tokens stay revoked (create new ones)."""
    from approvals import users

    local(lambda s: users.enable_user(session=s, name=name, actor=admin()))
    typer.echo(f"enabled {name.strip()}; create new tokens with `steward tokens create --user {name.strip()}`")


@app.command("password")
def users_password(
    name: Annotated[str, typer.Argument(help="Whose password to set")],
    stdin: Annotated[bool, typer.Option("--stdin", help="Read the password from standard input (one line)")] = False,
) -> None:
    """Set a person's password for the web inbox (argon2id); their inbox sessions end."""
    import sys

    from approvals import users

    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    local(lambda s: users.set_password(session=s, name=name, password=password, actor=admin()))
    typer.echo(f"password set for {name.strip()}; they sign in at /inbox")
