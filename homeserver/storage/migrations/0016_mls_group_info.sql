-- The signed GroupInfo of each group's current epoch, which its last committer uploaded with
-- its commit: a device joins the group by itself (an external commit) from it and the ratchet
-- tree. Public MLS material, base64-encoded; NULL when the last commit came without one.
ALTER TABLE mls_groups ADD COLUMN group_info TEXT;
