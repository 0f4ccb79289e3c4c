-- Audit entries written but not yet linked into their tenant's chain (PostgreSQL).
--
-- A write appends its entries here, inside its own transaction, without touching the chain
-- head: holding the head's row lock from the append to the commit made every write of a tenant
-- wait for the previous one's WAL flush (one flush after another; measured: deactivations at
-- 500/s fell behind). The chainer (src/audit/chainer.rs) moves committed entries into
-- `audit_log` in `pending_id` order, under the head's lock, a batch per transaction. Audit
-- reads (list, verify, export) link what is pending first, so they never miss an entry.
-- `pending_id` comes from a sequence: an entry whose transaction began after another's commit
-- gets a larger one, so causally ordered entries are chained in order.

CREATE TABLE audit_pending (
    pending_id  BIGSERIAL PRIMARY KEY,
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
