-- The audit log: one append-only hash chain per tenant. Each entry's `hash` is the SHA-256 of a
-- canonical encoding of its fields and the previous entry's hash (see src/audit/mod.rs), so an
-- edited, removed or reordered row breaks the chain. `audit_heads` holds each chain's last seq and
-- hash: it serialises appends per tenant and detects rows cut off the end.

CREATE TABLE audit_log (
    tenant_id   TEXT NOT NULL,
    seq         BIGINT NOT NULL,          -- 1, 2, 3 … per tenant, no gaps
    id          TEXT NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,             -- scim.user.deactivated, policy.decision, action.executed, …
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_name  TEXT NOT NULL,
    client_ip   TEXT,
    request_id  TEXT,
    subject     TEXT,                      -- usually the SCIM user id
    detail      TEXT NOT NULL,             -- JSON text, hashed exactly as stored
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_log_subject ON audit_log(tenant_id, subject, seq);
CREATE INDEX audit_log_at ON audit_log(tenant_id, at);

CREATE TABLE audit_heads (
    tenant_id  TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL
);
