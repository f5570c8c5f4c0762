"""``sleap-rtc gui``: open SLEAP with the Remote Training dock (or the standalone window)."""

from __future__ import annotations

import sys

import click


@click.command("gui")
@click.option("--server", default=None, help="Signaling server URL (default: SLEAP_RTC_SERVER, config file, ws://127.0.0.1:8765).")
@click.option("--room-id", default=None, help="Room to join at start (with --token).")
@click.option("--token", default=None, help="The room's token.")
@click.option("--standalone", is_flag=True, help="Open the standalone window even when SLEAP is installed.")
@click.argument("labels", required=False, type=click.Path(dir_okay=False))
def gui_command(server: str | None, room_id: str | None, token: str | None, standalone: bool, labels: str | None) -> None:
    """Open SLEAP with the Remote Training dock, joined to a room when given.

    \b
    sleap-rtc gui                               # SLEAP + dock; join from Remote > Join room…
    sleap-rtc gui --room-id R --token T fly.slp # open a project, already in the room
    """
    if bool(room_id) != bool(token):
        raise click.UsageError("--room-id and --token go together (both are in the worker's banner).")
    from sleap_rtc.core.config import resolve_server
    from sleap_rtc.gui.launcher import launch

    sys.exit(launch(resolve_server(server), room_id, token, labels, standalone=standalone))
