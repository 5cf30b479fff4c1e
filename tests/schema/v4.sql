-- The schema of version 4 as shipped (bot.db.MIGRATIONS[:4]), recorded once.

CREATE TABLE approvals (
            request_id INTEGER NOT NULL REFERENCES requests (id),
            approver TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (request_id, approver)
        );

CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    request_id TEXT,
    targets TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
) STRICT;

CREATE TABLE deadlines (
            request_id INTEGER PRIMARY KEY REFERENCES requests (id),
            received TEXT NOT NULL,           -- the day the person's request was received
            first_due TEXT NOT NULL,          -- one month later, on a working day
            due TEXT NOT NULL,                -- the due date in force (later once extended)
            months INTEGER NOT NULL DEFAULT 1,  -- the period in force, from receipt: 1 to 3
            completed TEXT                    -- the day it was done, else NULL
        );

CREATE TABLE deletion_items (
            request_id INTEGER NOT NULL REFERENCES requests (id),
            seq INTEGER NOT NULL,             -- execution order
            kind TEXT NOT NULL,  -- unpublish | image | prediction | tag | iteration | project
            project_id TEXT NOT NULL,
            target_id TEXT NOT NULL,
            parent_id TEXT,                   -- the iteration of an unpublish, else NULL
            batch INTEGER NOT NULL,
            status TEXT NOT NULL,             -- pending | sending | deleted | gone | failed
            http_status INTEGER,
            operation TEXT,
            at TEXT,
            verified TEXT,                    -- NULL | gone | survived
            PRIMARY KEY (request_id, seq)
        );

CREATE TABLE digests (
            day TEXT PRIMARY KEY,             -- YYYY-MM-DD (UTC)
            at TEXT NOT NULL,                 -- when it was queued
            channels INTEGER NOT NULL         -- how many channels got one (0: nothing due)
        );

CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id INTEGER NOT NULL REFERENCES requests (id),
            kind TEXT NOT NULL,               -- preview | export | delete
            status TEXT NOT NULL,             -- queued | running | done | failed | cancelled
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until TEXT,
            checkpoint TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );

CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id INTEGER,
            key TEXT UNIQUE,                  -- coalescing key: one pending item per key
            kind TEXT NOT NULL,               -- announce | post | progress | upload | mirror
            channel TEXT NOT NULL,
            payload TEXT NOT NULL,            -- JSON
            status TEXT NOT NULL,             -- pending | sent | held | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before TEXT NOT NULL,
            result TEXT,
            created_at TEXT NOT NULL
        , revision INTEGER NOT NULL DEFAULT 0, held_error TEXT);

CREATE TABLE requests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,               -- export | delete | manual
            command TEXT NOT NULL,            -- the parsed request, JSON
            text TEXT NOT NULL,               -- what the user typed
            requester TEXT NOT NULL,
            channel TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            expires_at TEXT,                  -- deletions: end of the approval window
            message_ts TEXT,                  -- the announcement in the channel
            preview TEXT,                     -- deletions: JSON impact preview
            progress TEXT,                    -- JSON {done, total, phase}
            result TEXT,                      -- JSON summary of the outcome
            error TEXT,                       -- user-facing failure message
            decided_by TEXT,                  -- who rejected / cancelled
            decision_reason TEXT
        );

CREATE INDEX audit_events_request_id ON audit_events (request_id);

CREATE INDEX deadlines_open ON deadlines (due) WHERE completed IS NULL;

CREATE INDEX deletion_items_batch ON deletion_items (request_id, batch);

CREATE INDEX jobs_status ON jobs (status);

CREATE INDEX outbox_lane ON outbox (status, kind, id);

CREATE INDEX outbox_pending ON outbox (status, not_before);

CREATE INDEX requests_requester ON requests (requester, status);

CREATE INDEX requests_status ON requests (status);

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events
WHEN EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER deadlines_completed AFTER UPDATE OF status ON requests
        WHEN NEW.status IN ('done', 'answered')
        BEGIN
            UPDATE deadlines SET completed = substr(NEW.updated_at, 1, 10)
            WHERE request_id = NEW.id AND completed IS NULL;
        END;
