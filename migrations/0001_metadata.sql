-- Cluster metadata. Applied inside one transaction, with search_path set to
-- the coordinator's schema (setting `postgres_schema`, default "cohort").

-- Tenants: replication settings, with a version for optimistic locking.
CREATE TABLE tenants (
    id            text        PRIMARY KEY,
    replication   integer     NOT NULL CHECK (replication BETWEEN 1 AND 7),
    read_quorum   integer     NOT NULL CHECK (read_quorum BETWEEN 1 AND replication),
    write_quorum  integer     NOT NULL CHECK (write_quorum BETWEEN 1 AND replication),
    version       bigint      NOT NULL CHECK (version >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Storage nodes and where they listen. The ring is built from id, zone and
-- vnodes of the active nodes.
CREATE TABLE storage_nodes (
    id          text        PRIMARY KEY,
    address     text        NOT NULL,
    zone        text,
    vnodes      integer     NOT NULL CHECK (vnodes BETWEEN 1 AND 4096),
    state       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row: bumped whenever the node set changes, so coordinators know to
-- rebuild their ring.
CREATE TABLE ring_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint  NOT NULL
);
INSERT INTO ring_state (singleton, version) VALUES (true, 0);

-- Membership changes (a node joining or leaving) and their phases.
CREATE TABLE membership_migrations (
    id          bigserial   PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('join', 'leave')),
    node_id     text        NOT NULL,
    phase       text        NOT NULL CHECK (phase IN ('dual_write', 'data_copy', 'cutover', 'cleanup', 'done')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per token-range progress of a migration's data copy, so a restarted
-- leader resumes where the last one stopped.
CREATE TABLE migration_checkpoints (
    migration_id  bigint      NOT NULL REFERENCES membership_migrations (id) ON DELETE CASCADE,
    range_start   numeric(20) NOT NULL,
    range_end     numeric(20) NOT NULL,
    keys_copied   bigint      NOT NULL DEFAULT 0,
    done          boolean     NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration_id, range_start)
);

-- One row: the leader lease. The generation increases every time leadership
-- changes hands (or lapses) and is the fencing token of leader-only work.
CREATE TABLE leader_lease (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    holder      text,
    generation  bigint      NOT NULL,
    expires_at  timestamptz NOT NULL
);
INSERT INTO leader_lease (singleton, holder, generation, expires_at) VALUES (true, NULL, 0, now());
