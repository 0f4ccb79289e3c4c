-- The directory: tenants, their tokens, SCIM users and groups, and the lifecycle rows every SCIM
-- write leaves behind (the input of the lifecycle engine). Times are UTC RFC 3339 text with six
-- fractional digits, so text order is time order on both engines. Booleans are 0/1 integers.

CREATE TABLE tenants (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    created        TEXT NOT NULL,
    -- OAuth 2.0 bearer JWTs accepted in place of a SCIM token (all three set, or none)
    jwt_issuer     TEXT,
    jwt_audience   TEXT,
    jwt_jwks_url   TEXT
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    scope       TEXT NOT NULL CHECK (scope IN ('scim', 'admin', 'auditor')),
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,      -- hex SHA-256 of the whole token; the token is never stored
    created     TEXT NOT NULL,
    revoked     TEXT,
    last_used   TEXT
);
CREATE INDEX tokens_tenant ON tokens(tenant_id);

CREATE TABLE users (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: stable paging and cursors
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    id             TEXT NOT NULL,
    user_name      TEXT NOT NULL,
    user_name_ci   TEXT NOT NULL,                      -- lower-cased userName (caseExact = false)
    external_id    TEXT,
    display_name   TEXT,
    display_name_ci TEXT,                              -- lower-cased displayName (caseExact = false)
    active         INTEGER NOT NULL,
    resource       TEXT NOT NULL,                      -- the SCIM resource JSON without meta and groups
    version        INTEGER NOT NULL,
    created        TEXT NOT NULL,
    last_modified  TEXT NOT NULL,
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, user_name_ci)
);
CREATE INDEX users_external_id ON users(tenant_id, external_id);
CREATE INDEX users_display_name ON users(tenant_id, display_name_ci);
CREATE INDEX users_tenant_seq ON users(tenant_id, seq);            -- default list order and cursors

CREATE TABLE groups (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    id               TEXT NOT NULL,
    display_name     TEXT NOT NULL,
    display_name_ci  TEXT NOT NULL,
    external_id      TEXT,
    resource         TEXT NOT NULL,                    -- without meta and members
    version          INTEGER NOT NULL,
    created          TEXT NOT NULL,
    last_modified    TEXT NOT NULL,
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, display_name_ci)
);
CREATE INDEX groups_external_id ON groups(tenant_id, external_id);
CREATE INDEX groups_tenant_seq ON groups(tenant_id, seq);

CREATE TABLE group_members (
    tenant_id    TEXT NOT NULL,
    group_id     TEXT NOT NULL,
    member_id    TEXT NOT NULL,
    member_type  TEXT NOT NULL CHECK (member_type IN ('User', 'Group')),
    PRIMARY KEY (tenant_id, group_id, member_id)
);
CREATE INDEX group_members_member ON group_members(tenant_id, member_id);

CREATE TABLE lifecycle_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,   -- created | deactivated | reactivated | deleted | groups_joined | groups_left | attributes_changed
    detail       TEXT NOT NULL,   -- JSON: {"before": …, "after": …} or {"groups": [...]} or {"attributes": [...]}
    actor_kind   TEXT NOT NULL,   -- scim_token | jwt | admin_token | cli | system
    actor_id     TEXT NOT NULL,
    actor_name   TEXT NOT NULL,
    client_ip    TEXT,
    request_id   TEXT,
    created      TEXT NOT NULL
);
CREATE INDEX lifecycle_events_user ON lifecycle_events(tenant_id, user_id, seq);
