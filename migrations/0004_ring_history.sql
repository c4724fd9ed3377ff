-- Ring history and membership migrations. Applied inside one transaction,
-- with search_path set to the coordinator's schema.
--
-- Until now `ring_state.version` was bumped on every node upsert and the ring
-- was built from the active nodes. From now on the ring is a list of
-- numbered versions, each holding its nodes; `ring_state.version` is the
-- newest one's number, `ring_state.oldest_live` the oldest still in use
-- (versions oldest_live..=version are live), and `ring_state.stamp` a
-- counter that moves on every change to ring versions, the live range or
-- node records.

-- Every ring version, numbered from 1. `nodes` is a JSON array of
-- {"id": text, "zone": text or null, "vnodes": integer}, ordered by id.
CREATE TABLE ring_versions (
    version     bigint      PRIMARY KEY CHECK (version >= 1),
    nodes       jsonb       NOT NULL CHECK (jsonb_typeof(nodes) = 'array'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE ring_state
    ADD COLUMN oldest_live bigint NOT NULL DEFAULT 0 CHECK (oldest_live >= 0),
    ADD COLUMN stamp       bigint NOT NULL DEFAULT 0 CHECK (stamp >= 0);

-- An existing cluster: its active nodes become the one live ring version,
-- numbered as the old version counter (at least 1).
INSERT INTO ring_versions (version, nodes)
SELECT greatest(1, (SELECT version FROM ring_state WHERE singleton)),
       jsonb_agg(jsonb_build_object('id', id, 'zone', zone, 'vnodes', vnodes) ORDER BY id)
FROM storage_nodes
WHERE state = 'active'
HAVING count(*) > 0;

-- The newest version and ring_state.version agree (0 when there is none);
-- the stamp carries on from the old counter, so it never moves backwards.
UPDATE ring_state SET
    stamp       = version,
    version     = coalesce((SELECT max(version) FROM ring_versions), 0),
    oldest_live = coalesce((SELECT max(version) FROM ring_versions), 0)
WHERE singleton;

ALTER TABLE storage_nodes
    ADD CONSTRAINT storage_nodes_state_check CHECK (state IN ('joining', 'active', 'leaving', 'removed'));

-- The tables 0001 created for migrations were never written: replace them.
DROP TABLE migration_checkpoints;
DROP TABLE membership_migrations;

-- Membership changes. Ids are allocated as max + 1 under the ring_state row
-- lock, so they are gapless from 1. Counters are u64 values, stored as
-- bigint (they never approach 2^63).
CREATE TABLE membership_migrations (
    id                bigint      PRIMARY KEY CHECK (id >= 1),
    kind              text        NOT NULL CHECK (kind IN ('join', 'leave', 'remove_dead')),
    node_id           text        NOT NULL,
    state             text        NOT NULL
                                  CHECK (state IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')),
    phase             text        NOT NULL CHECK (phase IN ('dual_write', 'data_copy', 'cutover', 'cleanup', 'done')),
    from_version      bigint      NOT NULL CHECK (from_version >= 0),
    to_version        bigint      NOT NULL CHECK (to_version >= 1),
    ranges_total      bigint      NOT NULL DEFAULT 0 CHECK (ranges_total >= 0),
    ranges_done       bigint      NOT NULL DEFAULT 0 CHECK (ranges_done >= 0),
    keys_total        bigint      NOT NULL DEFAULT 0 CHECK (keys_total >= 0),
    keys_copied       bigint      NOT NULL DEFAULT 0 CHECK (keys_copied >= 0),
    bytes_copied      bigint      NOT NULL DEFAULT 0 CHECK (bytes_copied >= 0),
    error             text,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- One membership change runs at a time.
CREATE UNIQUE INDEX membership_migrations_one_running ON membership_migrations ((true))
    WHERE state IN ('pending', 'in_progress');

-- Per token-range progress of a migration's data copy, so a restarted
-- leader resumes where the last one stopped. Tokens are u64 values stored
-- as numeric(20) holding the unsigned value itself (not the bit pattern of
-- a bigint), so ranges order by token.
CREATE TABLE migration_checkpoints (
    migration_id  bigint      NOT NULL REFERENCES membership_migrations (id) ON DELETE CASCADE,
    range_start   numeric(20) NOT NULL CHECK (range_start BETWEEN 0 AND 18446744073709551615),
    range_end     numeric(20) NOT NULL CHECK (range_end BETWEEN 0 AND 18446744073709551615),
    keys_copied   bigint      NOT NULL DEFAULT 0 CHECK (keys_copied >= 0),
    done          boolean     NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration_id, range_start)
);
