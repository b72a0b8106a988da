"""The ``fairtune-cli`` directive: every command and flag of the ``fairtune`` CLI, from the code.

The typer app is turned into its command object (typer's click-style ``Group``) and walked:
each command's help, its arguments, and each option's names, type, default and help. The page
therefore always lists the flags that the installed code accepts.
"""

from __future__ import annotations

from typing import Any

import typer
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_rows(command: Any, ctx: Any) -> list[tuple[str, str, str]]:
    """(names, type, help with default) of each parameter but ``--help``."""
    rows = []
    for param in command.get_params(ctx):
        if param.name == "help":
            continue
        # typer >= 0.2x has its own parameter types (display_type); older typer uses click's.
        kind = _cell(param.display_type(ctx) if hasattr(param, "display_type") else param.type.name).strip("<>")
        if param.param_type_name == "argument":
            rows.append((f"``{param.name.upper()}``", kind, _cell(param.help or "") + " (argument)"))
            continue
        names = ", ".join(f"``{name}``" for name in (*param.opts, *param.secondary_opts))
        default = param.default
        shown = "" if default in (None, False, (), "") or param.is_flag else f" Default: ``{default}``."
        rows.append((names, "flag" if param.is_flag else kind, _cell(param.help or "") + shown))
    return rows


def command_rst(name: str, command: Any, parent: Any) -> list[str]:
    """reST for one command: a section, its help, and a table of its parameters."""
    ctx = command.context_class(command, info_name=name, parent=parent)
    title = f"``{ctx.command_path}``"
    lines = [title, "-" * len(title), "", _cell(command.help or ""), "", ".. list-table::", "   :header-rows: 1",
             "   :widths: 25 10 65", "", "   * - flag", "     - type", "     - meaning"]
    for names, kind, meaning in _option_rows(command, ctx):
        lines += [f"   * - {names}", f"     - {kind}", f"     - {meaning}"]
    return lines + [""]


class FairtuneCli(SphinxDirective):
    """Document every command of ``fairtune.cli.app``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from fairtune.cli import app

        group = typer.main.get_command(app)
        root = group.context_class(group, info_name="fairtune")
        lines = [_cell(group.help or ""), ""]
        lines += [f"Global options: {', '.join(row[0] for row in _option_rows(group, root))}.", ""]
        for name in group.commands:
            lines += command_rst(name, group.commands[name], root)
        container = nodes.section()
        self.state.nested_parse(StringList(lines, source="fairtune.cli"), self.content_offset, container, match_titles=True)
        return container.children


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("fairtune-cli", FairtuneCli)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
