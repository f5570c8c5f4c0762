"""The ``sleap-rtc`` command: a click group whose subcommands live with their runtimes.

Subcommands are imported only when used, so ``sleap-rtc worker`` on a headless GPU box
never imports Qt, and ``sleap-rtc --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging

import click

# name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "server": "sleap_rtc.server.cli:server_command",
    "turn-config": "sleap_rtc.server.cli:turn_config_command",
    "worker": "sleap_rtc.worker.cli:worker_command",
    "client-train": "sleap_rtc.client.cli:train_command",
    "client-track": "sleap_rtc.client.cli:track_command",
    "gui": "sleap_rtc.gui.cli:gui_command",
    "demo": "sleap_rtc.demo:demo_command",
}
ALIASES = {"train": "client-train", "track": "client-track"}
SHORT_HELP: dict[str, str] = {
    "server": "Run the signaling server (rooms, discovery, relay).",
    "turn-config": "Print a coturn config matching the server's TURN settings.",
    "worker": "Serve training/inference jobs from this GPU machine.",
    "client-train": "Train a SLEAP training package on a remote worker (alias: train).",
    "client-track": "Run inference on a remote worker (alias: track).",
    "gui": "Open SLEAP (or a standalone window) with the Remote Training dock.",
    "demo": "Run the whole product on this machine (local server + two workers).",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The subcommand names, known without importing any of them."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Import and return the subcommand ``name`` (aliases resolved), or None."""
        name = ALIASES.get(name, name)
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The ``--help`` command list, from ``SHORT_HELP``."""
        # Listing must not import every runtime (Qt, torch): use the static summaries.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SHORT_HELP[name]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="sleap-rtc")
def main(verbose: int) -> None:
    """Remote GPU training for SLEAP over WebRTC.

    \b
    Lab admin:  sleap-rtc server            (signaling server, one per lab)
                sleap-rtc worker            (on each GPU machine)
    User:       sleap-rtc gui               (SLEAP with the Remote Training dock)
                sleap-rtc train PKG.zip --room-id R --token T --auto-select
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
