"""A cohort run's bookkeeping: what is done, this process's share of the rest, and a status a script reads.

``infer`` and ``function`` over thousands of patients are cohort runs: started again after a crash or
``kill -9`` they finish what is missing, and under ``torchrun`` every process takes a disjoint share.
A *case* is one unit of work (an image file for ``infer``, a patient for ``function``) with its input
files and its output files. Its outputs are

- **done** when every one exists and none is older than any of its inputs: it is skipped;
- **missing**, **partial** (some outputs only) or **stale** (an output older than an input): it is
  (re)done. Outputs are written atomically, so a killed process leaves no half-written file.

Outputs made with another model or other settings are never mixed into a folder silently: the run's
``fingerprint`` (the model file's checksum and the settings that change outputs) is kept in the plan,
and a later run with a different one is refused unless it redoes everything (``overwrite``); the cases
an interrupted ``overwrite`` run did not redo are carried to the next run (``redo`` in the plan), since
their old outputs look done.

Files, under ``status_dir`` (``<output folder>/status``)::

    plan.json           the cohort: run id, fingerprint, every case id in order, which were done at the start,
                        which must be redone whatever their files' times say
    rank<R>.jsonl       one line per case process R finished: done, or failed with its one-line reason
    status.json         merged: counts (done / failed / left of total) and the failures; rewritten atomically
    status.csv          one row per case: case_id, status, reason, seconds

:func:`read_status` merges the lines of the current run with the plan: ``ideal-monai status <folder>``
prints it while the run goes on (from any machine that sees the folder). Processes share the folder,
so under several nodes the output folder must be on a file system they all mount.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from .errors import IdealInputError, OutputError
from .utils.atomic import atomic_write_text, remove_stale_temporaries
from .utils.checksums import file_sha256

__all__ = ["COHORT_TIMEOUT", "Cohort", "input_mtime", "outputs_state", "read_status", "status_line",
           "write_status"]

logger = logging.getLogger(__name__)

def input_mtime(paths: Sequence[str | os.PathLike]) -> float:
    """The newest modification time of the existing ``paths`` (a folder: of the files in it, e.g. a DICOM series)."""
    newest = 0.0
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in p.rglob("*"):
                if f.is_file():
                    newest = max(newest, f.stat().st_mtime)
        elif p.exists():
            newest = max(newest, p.stat().st_mtime)
    return newest


def outputs_state(inputs: Sequence[str | os.PathLike], outputs: Sequence[str | os.PathLike]) -> str:
    """``"done"``, ``"missing"`` (no output), ``"partial"`` (some outputs only) or ``"stale"`` (an output older
    than an input)."""
    present = [Path(o) for o in outputs if Path(o).is_file()]
    if not present:
        return "missing"
    if len(present) < len(outputs):
        return "partial"
    oldest_output = min(p.stat().st_mtime for p in present)
    return "stale" if oldest_output < input_mtime(inputs) else "done"


def _rank_and_world(distributed: bool) -> tuple[int, int]:
    """This process's rank and the number of processes sharing the cohort: the process group's when
    ``distributed`` (and one is started), else ``(0, 1)``."""
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _log_rank() -> int:
    """The global rank of this process (``RANK``, set by torchrun; 0 otherwise): the name of its status log."""
    return int(os.environ.get("RANK", "0"))


#: How long a process waits at the end of a cohort for the others (a rank with the longer cases finishes
#: hours later on a large cohort); the default process-group timeout (10 min for NCCL) would abort it.
#: A process that dies is not waited for: torchrun stops the others.
COHORT_TIMEOUT = timedelta(days=7)


class Cohort:
    """The cases of one run, this process's share of the work, and its status records.

    Args:
        cases: every case of the cohort in the same order on every process:
            ``{"case_id": str, "inputs": [paths], "outputs": [paths], ...}`` (other keys are kept).
        status_dir: where the status files go; ``""`` keeps no status, checks no fingerprint and carries
            nothing over (for a run another one has already planned, e.g. ``function``'s inference).
        overwrite: redo every case (and accept a different fingerprint).
        fingerprint: what makes the outputs (model checksum, settings), JSON-serialisable.
        distributed: share the cases out over the ranks of the started process group (``torchrun``).
        cleanup_dirs: more folders the cases write into (intermediate files): cleared of the temporaries of
            an interrupted run at the start, and a run of another fingerprint is refused while they hold files.

    With several processes, rank 0 decides (scans the outputs, checks the fingerprint, writes the plan) and
    sends the decision to the others, so every process works from one view of a shared file system; the few
    collective calls go through a gloo group of their own with :data:`COHORT_TIMEOUT`.
    """

    def __init__(self, cases: Sequence[Mapping], status_dir: str | os.PathLike = "", overwrite: bool = False,
                 fingerprint: Mapping | None = None, distributed: bool = False,
                 cleanup_dirs: Sequence[str | os.PathLike] = ()) -> None:
        ids = [str(c["case_id"]) for c in cases]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[0]
            raise IdealInputError(dup, "two inputs share this case id, so their outputs would collide: rename one")
        self.cases = [dict(c) for c in cases]
        self.status_dir = Path(status_dir) if status_dir else None
        self.overwrite = bool(overwrite)
        self.fingerprint = json.loads(json.dumps(dict(fingerprint or {}), default=str))
        self.distributed = distributed
        self.cleanup_dirs = [Path(d) for d in cleanup_dirs]
        self.rank, self.world_size = _rank_and_world(distributed)
        self.run_id = ""
        self.done_at_start: list[str] = []
        self.share: list[dict] = []
        self._group = None
        if self.world_size > 1:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo", timeout=COHORT_TIMEOUT)

    # --- collective calls (no-ops in one process) -----------------------------------------------------------
    def barrier(self) -> None:
        """Wait for every process of the cohort."""
        if self._group is not None:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    def _from_rank0(self, obj):
        """Rank 0's ``obj`` on every process."""
        if self._group is None:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    # --- planning -------------------------------------------------------------------------------------
    def plan(self) -> list[dict]:
        """Decide what is left, record the plan, and return this process's share of it.

        Rank 0 decides (see the class docstring) before any process writes; the share is every
        ``world_size``-th case of the work list from ``rank`` on.

        Raises:
            IdealInputError: the folder holds outputs made with another fingerprint (and not ``overwrite``), on
                every process.
        """
        decision = None
        if self.rank == 0:
            try:
                decision = self._decide()
            except IdealInputError as e:
                decision = e
        decision = self._from_rank0(decision)
        if isinstance(decision, IdealInputError):
            raise decision
        self.run_id, self.done_at_start = decision["run_id"], decision["done_at_start"]
        todo_ids = set(decision["todo"])
        todo = [c for c in self.cases if c["case_id"] in todo_ids]
        self.share = todo[self.rank::self.world_size]
        if self.cases:
            logger.info("cohort of %d: %d done before, %d to do; this process (%d of %d) takes %d",
                        len(self.cases), len(self.done_at_start), len(todo), self.rank + 1, self.world_size,
                        len(self.share))
        return self.share

    def _decide(self) -> dict:
        """Rank 0: ``{"run_id", "todo", "done_at_start"}`` from the outputs on disk and the previous plan; writes
        the new plan and removes an interrupted run's temporaries."""
        states = {c["case_id"]: ("missing" if self.overwrite else outputs_state(c["inputs"], c["outputs"]))
                  for c in self.cases}
        earlier = self._earlier_plan() if self.status_dir is not None else {}
        if self.status_dir is not None and not self.overwrite:
            self._check_fingerprint(earlier, any(s != "missing" for s in states.values()))
        # Cases an interrupted overwrite (or a failed case of it) left to redo: their outputs may be newer than
        # their inputs and still come from before it.
        carried = set(earlier.get("redo", [])) - self._done_in(earlier) if earlier else set()
        todo = [cid for cid, state in states.items() if state != "done" or cid in carried]
        todo_ids = set(todo)
        done_at_start = [cid for cid in states if cid not in todo_ids]
        run_id = ""
        if self.status_dir is not None:
            for folder in sorted({Path(o).parent for c in self.cases for o in c["outputs"]} | set(self.cleanup_dirs)):
                for stale in remove_stale_temporaries(folder):  # left by a killed run; nobody writes yet
                    logger.info("removed %s (left by an interrupted run)", stale)
            run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
            redo = sorted(todo_ids if self.overwrite else carried & todo_ids)
            plan = {"run_id": run_id, "fingerprint": self.fingerprint, "world_size": self.world_size,
                    "started": time.time(), "cases": [c["case_id"] for c in self.cases],
                    "done_at_start": done_at_start, "redo": redo}
            atomic_write_text(json.dumps(plan) + "\n", self.status_dir / "plan.json")
        return {"run_id": run_id, "todo": todo, "done_at_start": done_at_start}

    def _earlier_plan(self) -> dict:
        plan_file = self.status_dir / "plan.json"
        if not plan_file.is_file():
            return {}
        try:
            return json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise IdealInputError(plan_file, f"cannot be read ({e}): pass --overwrite to redo the cohort") from None

    def _done_in(self, plan: Mapping) -> set[str]:
        """The cases recorded done in the run of ``plan``."""
        return {cid for cid, rec in _records(self.status_dir, plan.get("run_id", "")).items() if rec["status"] == "done"}

    def _check_fingerprint(self, earlier: Mapping, outputs_exist: bool) -> None:
        intermediate = any(f.is_file() for d in self.cleanup_dirs if d.is_dir() for f in d.iterdir())
        if not earlier or not (outputs_exist or intermediate):
            return
        before = earlier.get("fingerprint")
        if before is not None and before != self.fingerprint:
            changed = sorted(k for k in set(before) | set(self.fingerprint) if before.get(k) != self.fingerprint.get(k))
            raise IdealInputError(self.status_dir.parent, "holds outputs made with another model or settings "
                                  f"({', '.join(changed)} differ from plan.json): pass --overwrite to redo "
                                  "them, or write to another folder")

    # --- records --------------------------------------------------------------------------------------
    def record(self, case_id: str, status: str, reason: str = "", seconds: float | None = None) -> None:
        """Append one finished case (``"done"`` or ``"failed"`` with its one-line reason) to this process's log.

        One line per write, flushed and synced: a process killed at any moment leaves whole lines (a cut
        last line is skipped when read).
        """
        if self.status_dir is None:
            return
        line = json.dumps({"run_id": self.run_id, "case_id": case_id, "status": status, "reason": reason,
                           "seconds": None if seconds is None else round(float(seconds), 3), "rank": _log_rank(),
                           "time": round(time.time(), 3)})
        path = self.status_dir / f"rank{_log_rank()}.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(path, f"cannot write the status: {e.strerror or e}") from e

    def finish(self) -> dict:
        """Wait for every process; rank 0 merges and writes the status, every process gets it (``{}`` without a
        status). Rank 0 then writes what it merges (a report) and every process calls :meth:`barrier` before it
        exits: torchrun stops all processes as soon as one exits with an error."""
        self.barrier()
        status = {}
        if self.status_dir is not None and self.rank == 0:
            status = read_status(self.status_dir.parent)
            write_status(self.status_dir, status)
        return self._from_rank0(status)


def _records(status_dir: Path, run_id: str) -> dict[str, dict]:
    """The last record of each case in the run ``run_id``, over every process's log."""
    latest: dict[str, dict] = {}
    for log in sorted(status_dir.glob("rank*.jsonl")):
        with open(log, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # the last line of a process killed mid-write
                if rec.get("run_id") == run_id and (rec["case_id"] not in latest
                                                    or rec["time"] >= latest[rec["case_id"]]["time"]):
                    latest[rec["case_id"]] = rec
    return latest


def read_status(output_dir: str | os.PathLike) -> dict:
    """The status of the cohort run writing into ``output_dir`` (its latest plan and the records since).

    Returns ``{"output_dir", "run_id", "total", "done", "failed", "left", "complete", "processes",
    "seconds_per_case", "eta_s", "failures": [{"case_id", "reason"}], "cases": [{"case_id", "status", "reason",
    "seconds"}]}``: ``seconds_per_case`` is the wall time per finished case and process since the run started
    (model loading and batched work included), ``eta_s`` the time the cases left take at that pace.

    Raises:
        IdealInputError: ``output_dir`` holds no cohort run.
    """
    status_dir = Path(output_dir) / "status"
    plan_file = status_dir / "plan.json"
    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdealInputError(output_dir, "holds no cohort run (no status/plan.json): run infer or function into it "
                                          "first") from None
    except (OSError, ValueError) as e:
        raise IdealInputError(plan_file, f"cannot be read: {e}") from None
    records = _records(status_dir, plan["run_id"])
    done_before = set(plan["done_at_start"])
    cases = []
    for cid in plan["cases"]:
        rec = records.get(cid)
        if rec is not None:
            cases.append({"case_id": cid, "status": rec["status"], "reason": rec.get("reason", ""),
                          "seconds": rec.get("seconds")})
        else:
            cases.append({"case_id": cid, "status": "done" if cid in done_before else "left", "reason": "",
                          "seconds": None})
    count = {s: sum(c["status"] == s for c in cases) for s in ("done", "failed", "left")}
    # The pace from the run's wall clock, not the per-case seconds: a case's share of work done for several
    # at once (function segments its patients before measuring them; loading the model) counts too.
    elapsed = max((r["time"] for r in records.values()), default=0.0) - float(plan.get("started", 0.0))
    finished_per_s = len(records) / elapsed if records and elapsed > 0 else None
    return {"output_dir": str(output_dir), "run_id": plan["run_id"], "total": len(cases), **count,
            "complete": count["left"] == 0 and count["failed"] == 0, "processes": int(plan.get("world_size", 1)),
            "seconds_per_case": round(int(plan.get("world_size", 1)) / finished_per_s, 3) if finished_per_s else None,
            "eta_s": round(count["left"] / finished_per_s) if finished_per_s and count["left"] else None,
            "failures": [{"case_id": c["case_id"], "reason": c["reason"]} for c in cases if c["status"] == "failed"],
            "cases": cases}


def write_status(status_dir: str | os.PathLike, status: Mapping) -> None:
    """``status.json`` (counts and failures) and ``status.csv`` (one row per case), each atomically."""
    status_dir = Path(status_dir)
    summary = {k: v for k, v in status.items() if k != "cases"}
    atomic_write_text(json.dumps(summary, indent=1) + "\n", status_dir / "status.json")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["case_id", "status", "reason", "seconds"])
    writer.writeheader()
    writer.writerows(status["cases"])
    atomic_write_text(buf.getvalue(), status_dir / "status.csv")


def status_line(status: Mapping) -> str:
    """``<folder>: 10000 case(s): 5230 done, 12 failed, 4758 left, 31.2 s per case per process, about 2.1 h left``."""
    pace = ""
    if status.get("seconds_per_case"):
        pace = f", {status['seconds_per_case']:.1f} s per case per process"
    if status.get("eta_s"):
        eta = status["eta_s"]
        pace += f", about {eta / 3600:.1f} h left" if eta >= 5400 else f", about {max(1, round(eta / 60))} min left"
    return (f"{status['output_dir']}: {status['total']} case(s): {status['done']} done, {status['failed']} failed, "
            f"{status['left']} left{pace}")
