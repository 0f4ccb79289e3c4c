-- The blast-radius guard's percentage base is the tenant's active users, counted inside every
-- converge that would act destructively once past `percent_applies_above`. Without this index
-- that count reads every user row (resource JSON included); with it, a covering index range.
CREATE INDEX users_tenant_active ON users(tenant_id, active);
