-- The built-in factor store: factors (secrets encrypted with the master key, AES-256-GCM, bound
-- to tenant_id + id), recovery codes (SHA-256 hashes only), sessions, enrollment requirements,
-- and the key_check row that proves at start-up that the configured master key is the right one.
-- user_key is the factor-store user: the directory attribute named by the policy's [link] by.
-- Times are UTC RFC 3339 text with six fractional digits. Booleans are 0/1 integers.

CREATE TABLE factors (
    tenant_id       TEXT NOT NULL,
    id              TEXT NOT NULL,
    user_key        TEXT NOT NULL,
    type            TEXT NOT NULL,      -- totp | hotp | webauthn | sms | voice | email | push | recovery_codes | hardware_otp | certificate
    label           TEXT,
    status          TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    secret_enc      TEXT,               -- base64(nonce ‖ AES-256-GCM ciphertext); NULL once revoked
    otp_counter     INTEGER,            -- TOTP: last accepted time step (replay guard); HOTP: next counter
    credential_id   TEXT,               -- WebAuthn credential id, certificate id, phone/email/device
    public_key      TEXT,
    created         TEXT NOT NULL,
    last_used       TEXT,
    status_changed  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX factors_user ON factors(tenant_id, user_key);

CREATE TABLE recovery_codes (
    tenant_id   TEXT NOT NULL,
    factor_id   TEXT NOT NULL,
    code_hash   TEXT NOT NULL,          -- hex SHA-256 of (tenant, factor id, code); never the code
    used        TEXT,                   -- when it was used (a code works once)
    PRIMARY KEY (tenant_id, factor_id, code_hash)
);

CREATE TABLE factor_sessions (
    tenant_id   TEXT NOT NULL,
    id          TEXT NOT NULL,
    user_key    TEXT NOT NULL,
    created     TEXT NOT NULL,
    last_seen   TEXT,
    revoked     INTEGER NOT NULL DEFAULT 0,
    revoked_at  TEXT,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX factor_sessions_user ON factor_sessions(tenant_id, user_key);

CREATE TABLE enrollment_requirements (
    tenant_id     TEXT NOT NULL,
    user_key      TEXT NOT NULL,
    types         TEXT NOT NULL,        -- sorted, comma-separated factor types: one of them will do
    deadline      TEXT NOT NULL,
    created       TEXT NOT NULL,
    satisfied     INTEGER NOT NULL DEFAULT 0,
    satisfied_at  TEXT,
    PRIMARY KEY (tenant_id, user_key, types)
);

CREATE TABLE key_check (
    id          INTEGER PRIMARY KEY,    -- always 1
    ciphertext  TEXT NOT NULL,
    created     TEXT NOT NULL
);
