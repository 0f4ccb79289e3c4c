-- Tenant policies (the TOML of DESIGN.md). Every version is kept with its hash, who set it and
-- when; the highest version is the current one.

CREATE TABLE policies (
    tenant_id  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    hash       TEXT NOT NULL,           -- hex SHA-256 of text
    set_by     TEXT NOT NULL,
    created    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
