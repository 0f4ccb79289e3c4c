-- The guard's percentage base (the tenant's active users plus the users counted in the window),
-- as last counted and when. Counting a large tenant's active users on every destructive converge
-- past `percent_applies_above` walked the users index each time (a million rows at a million
-- users); the base hardly moves during a mass deactivation (a user leaving the active count
-- enters the window's), so it is recounted at most once a minute.
ALTER TABLE guard_state ADD COLUMN base_users BIGINT;
ALTER TABLE guard_state ADD COLUMN base_at TEXT;
