-- Dehydrated devices (MSC3814): at most one a user, holding the client's encrypted device data.
CREATE TABLE dehydrated_devices (
    user_id TEXT PRIMARY KEY NOT NULL,
    device_id TEXT NOT NULL,
    device_data TEXT NOT NULL
);
