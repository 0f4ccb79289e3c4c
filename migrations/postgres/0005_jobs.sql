-- The durable job queue. A trigger (a SCIM write, an offboarding, a policy change, a release)
-- inserts a row in its own transaction; workers lease rows (state running, lease_until), run
-- them and mark them done, or back them off (pending, later due) or dead-letter them. A lease
-- that runs out makes the job leasable again, so a crashed worker's job runs again.

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,             -- converge | offboard | …
    user_id      TEXT,
    payload      TEXT NOT NULL,             -- JSON
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts     BIGINT NOT NULL,           -- leases taken so far
    due          TEXT NOT NULL,             -- not before
    lease_until  TEXT,
    leased_by    TEXT,
    last_error   TEXT,
    created      TEXT NOT NULL,
    updated      TEXT NOT NULL
);
CREATE INDEX jobs_due ON jobs(state, due);
CREATE INDEX jobs_lease ON jobs(state, lease_until);
CREATE INDEX jobs_user ON jobs(tenant_id, user_id, kind, state);
CREATE INDEX jobs_tenant_state ON jobs(tenant_id, state, updated);
