"""Progress a person can follow: live lines in a terminal, timestamped lines in a log, and
``<storage>/<name>/progress.json`` for ``jobs/status.py``.

Four modules, joined by plain dicts; import from the one you need (this package imports none of
them, so reading a run's status pulls in no Ray):

- ``state``: ``ProgressState``, the units of one plan and where each stands, with the plan's
  GPU-hour estimate; ``write_progress``/``read_progress``. Pure: no Ray, the time passed in.
- ``display``: the line texts, ``PlainDisplay`` (timestamped log lines) and ``TtyDisplay`` (live
  tqdm lines).
- ``monitor``: over Ray, the Train workers' per-epoch reports (``worker_reporter``) to the
  driver's ``Inbox``, and the driver's ``Monitor`` thread that shows them and writes
  progress.json; ``quiet_tune``.
- ``run_status``: ``status_lines``, where a run folder stands (recorded units checked against
  the checkpoints in storage now, or the plan rebuilt from its config.yaml).
"""
