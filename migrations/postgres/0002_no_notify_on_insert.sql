-- A key that was just inserted can't be in any cache (its digest was never looked up with a
-- matching record), so inserts need not wake every listening process. Deletes and
-- authentication-relevant updates keep notifying, as does TRUNCATE.
DROP TRIGGER tower_api_keys_notify_insert_delete ON tower_api_keys;

CREATE TRIGGER tower_api_keys_notify_delete
    AFTER DELETE ON tower_api_keys
    FOR EACH ROW EXECUTE FUNCTION tower_api_keys_notify();
