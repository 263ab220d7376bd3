-- The id of the last event applied per aggregate, so a different event arriving at a version
-- already applied (two writers decided the same version) is told from a true duplicate
-- (the same event delivered again) and counted as a conflict.
ALTER TABLE projection_gate ADD COLUMN last_event_id uuid;
