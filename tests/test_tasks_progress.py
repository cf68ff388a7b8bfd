"""ksi tasks: the progress line on a terminal and in a batch output file, and the table of failed tasks."""

from __future__ import annotations

import io

from ksi.tasks.progress import Progress, summary_table


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counts(done: int, running: int, failed: int, pending: int, total: int = 10) -> dict[str, int]:
    return {"total": total, "done": done, "running": running, "failed": failed, "pending": pending}


def test_on_a_terminal_one_line_is_redrawn_in_place() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, "ksi[n1] tasks: ", terminal=True, clock=clock)
    progress.begin(counts(0, 0, 0, 10))
    clock.now += 0.1
    progress.update(counts(1, 4, 0, 5))  # within the redraw interval: nothing
    clock.now += 1.0
    progress.update(counts(2, 4, 0, 4))
    progress.note("task t-3 failed: Error (exit 1); log: /r/tasks/t-3/log.txt")
    clock.now += 1.0
    progress.finish(counts(9, 0, 1, 0))
    text = out.getvalue()
    assert text.count("\n") == 2  # the note, and the end of the final line
    assert text.startswith("\r\x1b[Kksi[n1] tasks: 0/10 done, 0 running, 0 failed, 10 pending; 0s elapsed")
    assert "\r\x1b[Kksi[n1] tasks: 2/10 done, 4 running, 0 failed, 4 pending; 1s elapsed, about 4s left" in text
    assert "\r\x1b[Kksi[n1] tasks: task t-3 failed: Error (exit 1); log: /r/tasks/t-3/log.txt\n" in text
    assert text.endswith("ksi[n1] tasks: 9/10 done, 0 running, 1 failed, 0 pending; 2s elapsed\n")


def test_in_a_file_plain_lines_at_the_interval() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, "p: ", terminal=False, clock=clock)
    progress.begin(counts(5, 0, 0, 5))  # five were done before this run: the estimate counts this run only
    for _ in range(59):
        clock.now += 1.0
        progress.update(counts(6, 2, 0, 2))
    progress.note("task t-9 failed: OOMKilled")
    progress.finish(counts(10, 0, 0, 0))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines == ["p: 5/10 done, 0 running, 0 failed, 5 pending; 0s elapsed",
                     "p: 6/10 done, 2 running, 0 failed, 2 pending; 30s elapsed, about 2m00s left",
                     "p: task t-9 failed: OOMKilled",
                     "p: 10/10 done, 0 running, 0 failed, 0 pending; 59s elapsed"]


def test_table_of_failed_tasks() -> None:
    rows = summary_table([{"task": "sweep-c", "reason": "Error", "exit_code": 1, "attempts": 1, "node": "n2",
                           "log": "/r/tasks/sweep-c/log.txt"},
                          {"task": "sweep-long-name", "reason": "NodeLost", "exit_code": None, "attempts": 3,
                           "node": None, "log": "/r/tasks/sweep-long-name/log.txt"}])
    assert rows == ["TASK             REASON    EXIT  ATTEMPTS  NODE  LOG",
                    "sweep-c          Error     1     1         n2    /r/tasks/sweep-c/log.txt",
                    "sweep-long-name  NodeLost  -     3         -     /r/tasks/sweep-long-name/log.txt"]


def test_a_log_line_clears_the_progress_line_first() -> None:
    import logging

    from ksi import log

    out, clock = io.StringIO(), Clock()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger(log.ROOT)
    logger.addHandler(handler)
    try:
        progress = Progress(out, "p: ", terminal=True, clock=clock)
        progress.begin(counts(0, 2, 0, 8))
        log.get("ksi.tasks.test").warning("node n2 is not Ready")
        progress.update(counts(1, 2, 0, 7))  # redrawn at once after the log line
        progress.finish(counts(10, 0, 0, 0))
        log.get("ksi.tasks.test").warning("after the run")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue() == ("\r\x1b[Kp: 0/10 done, 2 running, 0 failed, 8 pending; 0s elapsed"
                              "\r\x1b[Knode n2 is not Ready\n"
                              "\r\x1b[Kp: 1/10 done, 2 running, 0 failed, 7 pending; 0s elapsed"
                              "\r\x1b[Kp: 10/10 done, 0 running, 0 failed, 0 pending; 0s elapsed\n"
                              "after the run\n")
