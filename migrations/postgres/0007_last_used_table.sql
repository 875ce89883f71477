-- `last_used_at` moves out of `tower_api_keys` into a narrow table of its own, one row per key
-- holding the key's current prefix, and both written tables leave room on their pages.
--
-- Why: a flush writes every used key's `last_used_at` and every used key's count row of the
-- hour. In `tower_api_keys` each such write was a new version of the whole row, and on full
-- pages none was HOT, so each also went into the table's four indexes. Here a write is a
-- new version of a 60-byte row whose only index (the key id) doesn't change: with half of
-- each page free, it stays on its page (HOT) and writes no index entry.
--
-- The row's `prefix` is the key's current one, kept so by the triggers below inside the
-- transaction that changes the key: a flush updates `last_used_at` only where the prefix
-- matches the use's, so it needs no lock on, and no read of, `tower_api_keys`. A rotation
-- (new prefix) resets the row's time to NULL; a deleted key's row goes with it.
CREATE TABLE tower_api_keys_last_used (
    key_id       uuid        PRIMARY KEY,
    prefix       text        NOT NULL,
    last_used_at timestamptz
) WITH (fillfactor = 50);

-- Existing keys keep their time (rotations cleared it, so it belongs to the current prefix).
INSERT INTO tower_api_keys_last_used (key_id, prefix, last_used_at)
SELECT id, prefix, last_used_at FROM tower_api_keys ORDER BY id;

ALTER TABLE tower_api_keys DROP COLUMN last_used_at;

-- The functions run with the search_path of this migration, so that they find the table
-- whatever the search_path of the session that changes a key.
CREATE FUNCTION tower_api_keys_last_used_insert() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO tower_api_keys_last_used (key_id, prefix)
    SELECT id, prefix FROM inserted_keys;
    RETURN NULL;
END
$$;

CREATE TRIGGER tower_api_keys_last_used_insert
    AFTER INSERT ON tower_api_keys
    REFERENCING NEW TABLE AS inserted_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tower_api_keys_last_used_insert();

CREATE FUNCTION tower_api_keys_last_used_delete() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- Waits for flushes under way, rather than locking rows they may hold.
        TRUNCATE tower_api_keys_last_used;
    ELSE
        DELETE FROM tower_api_keys_last_used
        WHERE key_id IN (SELECT id FROM deleted_keys);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tower_api_keys_last_used_delete
    AFTER DELETE ON tower_api_keys
    REFERENCING OLD TABLE AS deleted_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tower_api_keys_last_used_delete();

CREATE TRIGGER tower_api_keys_last_used_truncate
    AFTER TRUNCATE ON tower_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tower_api_keys_last_used_delete();

-- A new prefix (a rotation) or, by hand, a new id: the key's row starts over, unused.
CREATE FUNCTION tower_api_keys_last_used_rekey() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF OLD.id <> NEW.id THEN
        DELETE FROM tower_api_keys_last_used WHERE key_id = OLD.id;
    END IF;
    INSERT INTO tower_api_keys_last_used (key_id, prefix) VALUES (NEW.id, NEW.prefix)
    ON CONFLICT (key_id) DO UPDATE SET prefix = EXCLUDED.prefix, last_used_at = NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER tower_api_keys_last_used_rekey
    AFTER UPDATE ON tower_api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.prefix) IS DISTINCT FROM (NEW.id, NEW.prefix))
    EXECUTE FUNCTION tower_api_keys_last_used_rekey();

-- `a + b` held to bigint's range, so that a sum edited by hand to its edge stays there
-- instead of failing every flush ("bigint out of range"). In bigint arithmetic alone (no
-- `numeric`), and a plain SQL expression that the planner inlines into the flush.
CREATE FUNCTION tower_api_keys_usage_add(a bigint, b bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN b >= 0 THEN
            CASE WHEN a > 9223372036854775807 - b THEN 9223372036854775807 ELSE a + b END
        ELSE
            CASE WHEN a < -9223372036854775808 - b THEN -9223372036854775808 ELSE a + b END
    END
$$;

-- Count rows of the current hour are added to at every flush: room for a new version of each
-- on its page keeps those updates HOT (no index entries). The price is disk: pages of this
-- table are filled to half, for the hours no longer written too, about twice the space of a
-- full table. Pages written before this migration keep their fill.
ALTER TABLE tower_api_keys_usage SET (fillfactor = 50);
