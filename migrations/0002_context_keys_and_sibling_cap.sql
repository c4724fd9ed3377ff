-- Secrets that seal the causal contexts handed to clients. Tokens name the
-- key id that sealed them, so a new key can be added (rotation) while
-- tokens sealed with older ones still open. The newest key seals.
CREATE TABLE context_keys (
    id          integer     PRIMARY KEY CHECK (id >= 1),
    secret      bytea       NOT NULL CHECK (octet_length(secret) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Most siblings a key of the tenant may have: a write that would add one
-- more is refused until the key is resolved.
ALTER TABLE tenants
    ADD COLUMN max_siblings integer NOT NULL DEFAULT 100 CHECK (max_siblings BETWEEN 1 AND 10000);
