-- HR offboardings: "deactivate this user at this time", scheduled through the CLI or the admin
-- API. Each row has a due `offboard` job (jobs.id = job_id) that deactivates the user through the
-- directory, which then converges like any deactivation.

CREATE TABLE offboardings (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    user_name   TEXT NOT NULL,
    at          TEXT NOT NULL,           -- when to deactivate
    reason      TEXT,
    ticket      TEXT,
    state       TEXT NOT NULL CHECK (state IN ('scheduled', 'done', 'cancelled', 'failed')),
    job_id      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created     TEXT NOT NULL,
    done_at     TEXT,
    outcome     TEXT                     -- what happened: deactivated | already_inactive | error text
);
CREATE INDEX offboardings_tenant ON offboardings(tenant_id, created);
CREATE INDEX offboardings_user ON offboardings(tenant_id, user_id);
