-- The guard's running count of the users in its window, kept on the tenant's guard row.
--
-- Counting `guard_actions` rows in the window on every destructive converge walked the whole
-- window: with thresholds set high (a planned mass offboarding), each check got slower as the
-- window filled. The row now keeps `counted` = the rows with bypass = 0 and at >= `counted_since`,
-- changed by every write of `guard_actions` (under the row lock), so a check only counts the rows
-- that left the window since the last one. NULL until the first check tallies the window.
ALTER TABLE guard_state ADD COLUMN counted BIGINT;
ALTER TABLE guard_state ADD COLUMN counted_since TEXT;
