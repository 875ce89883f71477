-- The audit trail: one row per change made to a key (or refused), written in the same
-- transaction as the change. `id` numbers the entries: AUTOINCREMENT never hands out a number
-- again, even after pruning deleted the highest, so a page's `before` stays meaningful.
-- `at_us` is microseconds since the Unix epoch, like the keys' times. `key_id` and `prefix`
-- name the key (its prefix after the change; a deleted key's last one), both NULL for a
-- refused create; `changes` is the policy set, a JSON object in compact form.
--
-- No foreign key to tower_api_keys: entries outlive the keys they name, until they are
-- pruned by time.
CREATE TABLE tower_api_keys_audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us      INTEGER NOT NULL,
    account_id TEXT    NOT NULL CHECK (length(account_id) BETWEEN 1 AND 64),
    key_id     TEXT,   -- UUID, hyphenated
    prefix     TEXT,
    action     TEXT    NOT NULL
               CHECK (action IN ('create', 'update', 'rotate', 'revoke', 'reactivate', 'delete')),
    actor      TEXT    NOT NULL,
    outcome    TEXT    NOT NULL CHECK (outcome IN ('done', 'refused')),
    changes    TEXT    NOT NULL,
    CHECK ((key_id IS NULL) = (prefix IS NULL))
) STRICT;

-- An account's trail, newest first, a page at a time.
CREATE INDEX tower_api_keys_audit_account_idx ON tower_api_keys_audit (account_id, id DESC);
-- Pruning deletes the oldest entries.
CREATE INDEX tower_api_keys_audit_at_idx ON tower_api_keys_audit (at_us);
