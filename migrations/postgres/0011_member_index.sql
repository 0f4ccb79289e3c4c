-- A user's groups are read on every SCIM read and write of the user and on every converge,
-- starting from the member side. The old (tenant_id, member_id) index made SQLite prefer the
-- primary key's covering (tenant_id, …) range, i.e. every membership of the tenant; covering
-- the columns the walk reads keeps it on the member's own rows.
DROP INDEX group_members_member;
CREATE INDEX group_members_member ON group_members(tenant_id, member_id, member_type, group_id);
