-- A change of device list seen by one user only: the user signed another user's master key
-- (verified them), so that user's devices must fetch the other's keys again; nobody else
-- learns of it. NULL: a change everyone sharing a room with `user_id` hears of.
ALTER TABLE device_list_changes ADD COLUMN visible_to TEXT;
