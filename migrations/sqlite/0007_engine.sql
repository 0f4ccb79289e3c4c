-- The lifecycle engine's own state: the blast-radius guard (per-tenant trip state, the
-- destructive converges of the sliding window, the quarantine of held-back actions) and the
-- enforcement requirements it has marked (when a `[[require]]` rule started to apply to a user,
-- so its grace deadline stays put across converges).

CREATE TABLE guard_state (
    tenant_id     TEXT PRIMARY KEY,
    tripped       INTEGER NOT NULL,      -- 0/1
    tripped_at    TEXT,
    trip_reason   TEXT,
    window_start  TEXT                   -- releases and discards restart the sliding window here
);

-- One row per user whose destructive actions were executed: when last, so the guard counts
-- distinct users in the window with an index range count. `bypass` = 1 for converges an admin
-- released from quarantine: they do not count.
CREATE TABLE guard_actions (
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    at         TEXT NOT NULL,
    actions    INTEGER NOT NULL,
    bypass     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX guard_actions_window ON guard_actions(tenant_id, at, bypass);

CREATE TABLE quarantine (
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    actions    TEXT NOT NULL,            -- JSON array of the held-back actions
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    released   TEXT,                     -- set by a release: the user's next converge bypasses the guard
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, user_id)
);

CREATE TABLE enforcement (
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    rule_key   TEXT NOT NULL,            -- hash of the rule's who and factors (stable across edits elsewhere)
    types      TEXT NOT NULL,            -- JSON array of factor types
    since      TEXT NOT NULL,
    deadline   TEXT NOT NULL,
    marked     INTEGER NOT NULL,         -- 0/1: the factor store was told
    overdue    INTEGER NOT NULL,         -- 0/1: the deadline passed and that was recorded
    PRIMARY KEY (tenant_id, user_id, rule_key)
);
