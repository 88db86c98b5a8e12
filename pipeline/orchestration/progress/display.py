"""What a person sees while a run fine-tunes: live lines in a terminal (one tqdm line per
running unit plus an overall line), or timestamped lines in a log at most every
``PLAIN_EVERY_S``; and the line texts ``jobs/status.py`` prints too."""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from tqdm import tqdm

from pipeline.orchestration.progress.state import CACHED, DONE, FAILED, QUEUED, RUNNING, ProgressState, UnitProgress

# plain (non-TTY) output: one status block at most this often
PLAIN_EVERY_S = 30.0


def clock_text(seconds: float | None) -> str:
    """0:04:05 / 1d 2:03:04; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


def hours_text(h: float) -> str:
    """GPU-hours with two decimals, three under 1 h (a demo's whole run is ~0.01 h)."""
    return f"{h:.2f}" if h >= 1 else f"{h:.3f}"


def _bar(fraction: float, width: int = 10) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def unit_line(u: UnitProgress, now: float, named: bool = True) -> str:
    """One running unit: scenario, mode, task t/T, epoch e/E, images/s, ETA."""
    head = f"{u.scenario} {u.mode}" if named else ""
    r = u.report
    if not r:
        since = clock_text(now - u.started_at) if u.started_at is not None else "?"
        return f"{head}{': ' if named else ''}starting (waiting for its Train workers, {since})"
    task = f"all {r.get('T', '?')} tasks" if u.mode == "joint" else f"task {r.get('task', 0) + 1}/{r.get('T', '?')}"
    if r.get("phase") == "starting":
        return f"{head}{': ' if named else ''}{task} starting"
    eta = r.get("eta_s")
    if eta is not None:
        eta = max(0.0, float(eta) - (now - float(r.get("time", now))))
    return (f"{head}{': ' if named else ''}{task} epoch {r.get('epoch', '?')}/{r.get('epochs', '?')} {_bar(u.fraction)} "
            f"{float(r.get('images_per_s', 0.0)):.0f} img/s, ETA {clock_text(eta)}, loss {float(r.get('loss', math.nan)):.4g}")


def overall_line(s: ProgressState, now: float) -> str:
    """Units done/total and GPU-hours done/left from the plan's estimate."""
    total = len(s.units)
    done, cached = s.count(DONE), s.count(CACHED)
    parts = [f"{s.count(RUNNING)} running", f"{s.count(QUEUED)} queued"]
    if s.count(FAILED):
        parts.append(f"{s.count(FAILED)} failed")
    if cached:
        parts.append(f"{cached} cached before")
    h_done, h_left, _ = s.hours()
    return (f"units {done + cached}/{total} done ({', '.join(parts)}); fine-tuning GPU-h (est.) "
            f"{hours_text(h_done)} done, {hours_text(h_left)} left, +{hours_text(s.eval_gpu_h)} evaluation after; "
            f"elapsed {clock_text(now - s.started_at)}")


def status_block(s: ProgressState, now: float) -> list[str]:
    running = sorted((u for u in s.units if u.status == RUNNING), key=lambda u: u.started_at or 0.0)
    return [overall_line(s, now)] + [unit_line(u, now) for u in running]


def stamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


class PlainDisplay:
    """Timestamped lines for logs (``ray job logs -f``, a pipe): a status block at most every
    ``every_s``; notes (a unit ended) right away, one line each."""

    def __init__(self, out: TextIO, every_s: float = PLAIN_EVERY_S) -> None:
        self.out, self.every_s = out, every_s
        self.last: float | None = None

    def show(self, lines: list[str], now: float, force: bool = False) -> bool:
        if not force and self.last is not None and now - self.last < self.every_s:
            return False
        self.last = now
        for i, line in enumerate(lines):
            self.out.write(f"[{stamp(now)}] {'progress' if i == 0 else '  unit'}: {line}\n")
        self.out.flush()
        return True

    def note(self, text: str, now: float) -> None:
        self.out.write(f"[{stamp(now)}] {text}\n")
        self.out.flush()

    def wrap(self, log: Callable[[str], None]) -> Callable[[str], None]:
        return log

    def close(self) -> None:
        pass


class TtyDisplay:
    """Live lines in a terminal: line 0 the overall line, then one per running unit (tqdm keeps
    them in place; other output goes above them through ``wrap``/``note``)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[Any] = []

    def show(self, lines: list[str], now: float, force: bool = False) -> bool:
        # trimmed here: a wrapped line would break tqdm's cursor arithmetic
        size = shutil.get_terminal_size((120, 24))
        width = max(20, size.columns - 1)
        while len(self.lines) < len(lines):
            self.lines.append(tqdm(total=0, bar_format="{desc}", position=len(self.lines), file=self.out,
                                   ncols=width, nrows=max(size.lines, 4), leave=not self.lines))
        for i, bar in enumerate(self.lines):
            bar.ncols = width
            bar.set_description_str(lines[i][:width] if i < len(lines) else "", refresh=True)
        return True

    def note(self, text: str, now: float) -> None:
        tqdm.write(f"[{stamp(now)}] {text}", file=self.out)

    def wrap(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` that clears the live lines, writes, and lets them redraw below."""
        def quiet_log(text: str) -> None:
            with tqdm.external_write_mode(file=self.out):
                log(text)
        return quiet_log

    def close(self) -> None:
        for bar in reversed(self.lines):  # (line 0 stays: the final overall line)
            bar.close()
        self.lines = []
