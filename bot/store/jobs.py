"""The job queue: a request's work, claimed under a lease, resumed from its checkpoint.

UPDATEs are written by hand: each is a compare-and-set on the job's status or lease owner, or
an expression (attempts + 1, json_set) sqlite-utils' update cannot state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any

from bot.clock import iso
from bot.lifecycle import Job, JobKind, JobStatus
from bot.store.base import StoreBase, dumps, time_of


class Jobs(StoreBase):
    """Jobs: queue, claim (with a lease), checkpoint, finish, release."""

    def enqueue_job(self, conn: sqlite3.Connection, number: int, kind: JobKind) -> int:
        """Queue a job for a request inside the caller's transaction; return its id.

        A request's second job of the same kind (a deletion approved again on a new plan)
        continues the rounds of the first, so its receipt does not replace the earlier one.
        """
        now = iso(self.clock.now())
        jobs = self.table("jobs")
        (earlier,) = jobs.rows_where(
            "request_id = ? AND kind = ?",
            [number, kind],
            select="MAX(COALESCE(json_extract(checkpoint, '$.round'), 1)) AS rounds",
        )
        rounds = earlier["rounds"]
        checkpoint = {} if rounds is None else {"round": int(rounds) + 1}
        row = {
            "request_id": number,
            "kind": str(kind),
            "status": str(JobStatus.QUEUED),
            "created_at": now,
            "updated_at": now,
            "checkpoint": dumps(checkpoint),
        }
        job_id = jobs.insert(row).last_pk
        assert isinstance(job_id, int)
        return job_id

    def claim_job(self, owner: str, lease: timedelta, *, skip: Collection[int] = ()) -> Job | None:
        """Claim the oldest runnable job (queued, or running with an expired lease).

        `skip`: the jobs this process is running (their lease may run out while the database
        is locked, which must not let a second worker of this process take them over).
        """
        now = self.clock.now()
        marks = ",".join("?" * len(skip))
        # Only "?" marks are formatted into the statement.
        sql = (
            "SELECT id FROM jobs WHERE (status = 'queued'"  # noqa: S608
            " OR (status = 'running' AND lease_until < ?))"
            f" AND id NOT IN ({marks}) ORDER BY id LIMIT 1"
        )
        # Idle workers ask every poll interval: a read (beside the writer, in WAL) finds
        # nothing without queueing on the write lock the acknowledgements wait for.
        if self.db.conn.execute(sql, (iso(now), *skip)).fetchone() is None:
            return None
        with self.write() as conn:
            row = conn.execute(sql, (iso(now), *skip)).fetchone()
            if row is None:
                return None  # another worker took it between the read and the lock
            taken_over = self.job(int(row[0]))
            conn.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (owner, iso(now + lease), iso(now), row[0]),
            )
            if taken_over.status == JobStatus.RUNNING:
                # Its worker stopped renewing the lease: a crashed process.
                self.audit(
                    conn,
                    "bot",
                    "job.resumed",
                    request=taken_over.request_number,
                    details={
                        "job": taken_over.kind,
                        "attempts": taken_over.attempts,
                        "after": "lease expired",
                    },
                )
            return self.job(int(row[0]))

    def oldest_wait(self) -> timedelta | None:
        """Return how long the longest-waiting runnable job has waited (None: none waits).

        A queued job waits since it was queued; a running job whose lease ran out (its worker
        is gone) since the lease ended.
        """
        # By hand: the oldest of two times, by the job's state.
        row = self.db.conn.execute(
            "SELECT MIN(CASE WHEN status = 'queued' THEN updated_at ELSE lease_until END)"
            " FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ?)",
            (iso(self.clock.now()),),
        ).fetchone()
        since = time_of(row[0]) if row else None
        return None if since is None else max(timedelta(0), self.clock.now() - since)

    def job(self, job_id: int) -> Job:
        """Return a job as stored now (raise LookupError when there is none)."""
        # rows_where, not get(): get() reads the table's schema on every call.
        rows = self.table("jobs").rows_where("id = ?", [job_id])
        row = next(iter(rows), None)
        if row is None:
            raise LookupError(f"no job {job_id}")
        return Job(
            id=row["id"],
            request_number=row["request_id"],
            kind=JobKind(row["kind"]),
            status=JobStatus(row["status"]),
            attempts=row["attempts"],
            checkpoint=json.loads(row["checkpoint"]),
        )

    def renew_lease(self, job_id: int, owner: str, lease: timedelta) -> bool:
        """Extend a job's lease; return False when another owner took it."""
        with self.write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ?"
                " AND status = 'running'",
                (iso(self.clock.now() + lease), job_id, owner),
            )
            return cursor.rowcount == 1

    def save_checkpoint(
        self, conn: sqlite3.Connection, job_id: int, checkpoint: Mapping[str, Any]
    ) -> None:
        """Store a job's progress checkpoint inside the caller's transaction."""
        changes = {"checkpoint": dumps(checkpoint), "updated_at": iso(self.clock.now())}
        self.table("jobs").update(job_id, changes)

    def requeue_running_job(self, conn: sqlite3.Connection, job_id: int) -> bool:
        """Put one running job back in the queue; return False when it was not running."""
        cursor = conn.execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL,"
            " updated_at = ? WHERE id = ? AND status = 'running'",
            (iso(self.clock.now()), job_id),
        )
        return cursor.rowcount == 1

    def finish_job(self, conn: sqlite3.Connection, job_id: int, status: JobStatus) -> None:
        """Mark a job done, failed or cancelled inside the caller's transaction."""
        changes = {
            "status": str(status),
            "lease_owner": None,
            "lease_until": None,
            "updated_at": iso(self.clock.now()),
        }
        self.table("jobs").update(job_id, changes)

    def release_jobs(
        self,
        owner: str | None = None,
        *,
        expired_only: bool = False,
        audit_action: str | None = None,
        audit_details: Mapping[str, Any] | None = None,
    ) -> list[Job]:
        """Put running jobs back in the queue (all, one owner's, or those whose lease ran out).

        Start-up releases only expired leases: a lease that is still valid belongs to a process
        that may be alive (on another host, or through a path the process guard did not see).

        With `audit_action`, each released job gets that audit event in the same transaction,
        so a crash cannot release a job without the record saying so.
        """
        with self.write() as conn:
            sql = "SELECT id FROM jobs WHERE status = 'running'"
            args: tuple[Any, ...] = ()
            if owner is not None:
                sql += " AND lease_owner = ?"
                args = (owner,)
            if expired_only:
                sql += " AND (lease_until IS NULL OR lease_until < ?)"
                args = (*args, iso(self.clock.now()))
            ids = [int(r[0]) for r in conn.execute(sql, args)]
            for job_id in ids:
                self.requeue_running_job(conn, job_id)
            jobs = [self.job(job_id) for job_id in ids]
            if audit_action is not None:
                for job in jobs:
                    self.audit(
                        conn,
                        "bot",
                        audit_action,
                        request=job.request_number,
                        details={
                            "job": job.kind,
                            "attempts": job.attempts,
                            **dict(audit_details or {}),
                        },
                    )
            return jobs

    def job_for(self, number: int, kind: JobKind) -> Job | None:
        """Return the latest job of `kind` for a request."""
        rows = self.table("jobs").rows_where(
            "request_id = ? AND kind = ?", [number, kind], select="id", order_by="id DESC", limit=1
        )
        return next((self.job(int(row["id"])) for row in rows), None)

    def requeue_job(self, conn: sqlite3.Connection, job_id: int) -> None:
        """Queue a failed job again, keeping its checkpoint (retry continues where it stopped).

        The checkpoint's `round` goes up by one: a retry starts a new round, a restart does not.
        """
        conn.execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL,"
            " checkpoint = json_set(checkpoint, '$.round',"
            "  COALESCE(json_extract(checkpoint, '$.round'), 1) + 1),"
            " updated_at = ? WHERE id = ?",
            (iso(self.clock.now()), job_id),
        )

    def unfinished_jobs(self) -> int:
        """Return how many jobs are queued or running."""
        return self.table("jobs").count_where(
            "status IN (?, ?)", [JobStatus.QUEUED, JobStatus.RUNNING]
        )
