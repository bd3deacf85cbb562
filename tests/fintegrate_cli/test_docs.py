"""docs/cli.md is generated from the commands' help, and every command and option has help."""

from __future__ import annotations

import typer.main
from typer._click.core import Command, Context

from fintegrate_cli._docs import CLI_DOC, render, root_context, walk
from fintegrate_cli.main import app

SPEC_COMMANDS = {
    "serve", "relay", "consume", "doctor", "demo",
    "migrate apply", "migrate status", "migrate new", "migrate verify",
    "consumer create", "consumer list", "consumer show", "consumer disable", "consumer enable",
    "keys rotate", "keys list", "keys revoke",
    "customers list", "customers show", "customers create",
    "events list", "events show", "events resend", "events redeliver", "events stats",
    "queues provision", "queues status", "queues purge", "queues replay-dlq",
    "config show",
}  # fmt: skip


def all_commands() -> dict[str, tuple[Command, Context]]:
    root, ctx = root_context(app)
    return {
        sub_ctx.command_path.removeprefix("fintegrate").strip(): (command, sub_ctx)
        for command, sub_ctx in walk(root, ctx)
    }


def test_cli_doc_is_up_to_date() -> None:
    expected = render(app)
    assert CLI_DOC.read_text(encoding="utf-8") == expected, (
        "docs/cli.md is stale: run `.venv/bin/python scripts/gen_cli_docs.py`"
    )


def test_render_is_deterministic() -> None:
    assert render(app) == render(app)


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, (command, ctx) in all_commands().items():
        if not (command.help or "").strip():
            missing.append(f"command {path or 'fintegrate'}")
        for param in command.get_params(ctx):
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{path} {param.name}")
    assert missing == []


def test_the_whole_spec_command_tree_exists_and_is_documented() -> None:
    assert sorted(SPEC_COMMANDS - set(all_commands())) == []
    text = CLI_DOC.read_text(encoding="utf-8")
    for path in SPEC_COMMANDS:
        assert f"### `fintegrate {path}`" in text


def test_completion_options_exist_on_the_root() -> None:
    root = typer.main.get_command(app)
    names = {opt for param in root.params for opt in param.opts}
    assert {"--install-completion", "--show-completion"} <= names
