-- Webhooks: per-tenant subscriptions, the durable outbox of events, and one delivery row per
-- (subscription, event). Events are written into the outbox inside the transaction of the change
-- that caused them (see src/notify/mod.rs), so an event exists exactly when its change committed.
-- Deliveries are retried until they succeed; per (subscription, user) they go out in outbox order.

CREATE TABLE webhook_subscriptions (
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    id           TEXT NOT NULL,
    url          TEXT NOT NULL,
    secret_enc   TEXT NOT NULL,            -- the signing secret, AES-256-GCM under the master key
    event_types  TEXT NOT NULL,            -- JSON array of event types; ["*"] = every event
    description  TEXT,
    created      TEXT NOT NULL,
    disabled     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- delivery order within a (subscription, user); an event whose
                                                     -- transaction began after another committed has a higher seq
    tenant_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL UNIQUE,               -- uuid, sent as the event's id for idempotency
    event_type   TEXT NOT NULL,
    user_id      TEXT,
    body         TEXT NOT NULL,                      -- the exact JSON sent (envelope with the payload)
    created      TEXT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id        TEXT NOT NULL,
    subscription_id  TEXT NOT NULL,
    event_seq        INTEGER NOT NULL REFERENCES outbox(seq),
    user_key         TEXT NOT NULL,                  -- the event's user id, '' for events about no user
    state            TEXT NOT NULL CHECK (state IN ('pending', 'failed', 'done')),  -- failed: still retried
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt     TEXT NOT NULL,
    lease_until      TEXT,                           -- a worker is sending it until then
    last_attempt     TEXT,
    last_status      INTEGER,
    last_error       TEXT,
    delivered        TEXT,
    UNIQUE (subscription_id, event_seq)
);
-- what is due, and the per-(subscription, user) order check, both only over undelivered rows
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt) WHERE state <> 'done';
CREATE INDEX webhook_deliveries_lane ON webhook_deliveries(subscription_id, user_key, event_seq) WHERE state <> 'done';
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries(tenant_id, subscription_id, state);
-- pruning and the outbox foreign key look deliveries up by event
CREATE INDEX webhook_deliveries_event ON webhook_deliveries(event_seq);
