-- Audit entries written but not yet linked into their tenant's chain. PostgreSQL only uses it
-- (see migrations/postgres/0012_audit_pending.sql): on SQLite the single writer links each
-- entry as it is appended, with no lock held across anyone else's commit. The table exists
-- here too so both engines have the same schema.

CREATE TABLE audit_pending (
    pending_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    id          TEXT NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_name  TEXT NOT NULL,
    client_ip   TEXT,
    request_id  TEXT,
    subject     TEXT,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_pending_tenant ON audit_pending(tenant_id, pending_id);
