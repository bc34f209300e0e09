"""What a person at a terminal sees while the lab runs: the progress bar with one line per finished cell."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lab.matrix import Cell
from lab.store import LOST, SKIPPED

console = Console(stderr=True, soft_wrap=True)


class RichReporter:
    """Progress bar in seconds of estimated work, with cell, phase and ETA; one line per finished cell."""

    def __init__(self, progress: Progress, total_s: float, cells: int) -> None:
        self.progress = progress
        self.cells = cells
        self.done = 0
        self.task = progress.add_task("starting", total=total_s, cells=f"0/{cells}")

    def phase(self, cell: Cell | None, text: str) -> None:
        label = f"{cell.cell_id}: {text}" if cell else text
        self.progress.update(self.task, description=label)

    def cell_done(self, cell: Cell, row: dict[str, Any], estimate_s: float) -> None:
        self.done += 1
        self.progress.update(self.task, advance=estimate_s, cells=f"{self.done}/{self.cells}")
        self.progress.console.print(one_line(row))


def one_line(row: dict[str, Any]) -> str:
    if row["status"] == SKIPPED:
        return f"[yellow]-[/yellow] {row['cell_id']}: skipped: {row['failure_detail']}"
    if row["status"] == LOST:
        return f"[yellow]?[/yellow] {row['cell_id']}: lost to the infrastructure: {row['failure_detail']}"
    if row["status"] != "ok":
        return f"[red]✗[/red] {row['cell_id']}: failed: {row['failure_reason']}"
    frac = row.get("hiwater_frac")
    return (
        f"[green]✓[/green] {row['cell_id']}: nslabs {row['nslabs']}, hiwater {row['hiwater']}"
        f" ({(frac or 0) * 100:.0f}%), map failures {row['map_failures']}, {row['fio_iops']:.0f} IOPS,"
        f" p99 {row['fio_clat_p99_us']:.0f} µs, fio errors {row['fio_errors']}"
    )


def cells_progress(eta: bool) -> Progress:
    """The bar a run of cells shows: phase, bar, cells done, time taken, and with ``eta`` the time left."""
    columns: list[ProgressColumn] = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[cells]} cells"),
        TimeElapsedColumn(),
    ]
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=False)
