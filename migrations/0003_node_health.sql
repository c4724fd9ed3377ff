-- Each storage node's reachability as last probed by the leader. Written only
-- through a statement fenced by the leader lease's generation, and stamped
-- with it: a deposed leader cannot overwrite what its successor recorded.
CREATE TABLE node_health (
    node_id     text        PRIMARY KEY REFERENCES storage_nodes (id) ON DELETE CASCADE,
    up          boolean     NOT NULL,
    checked_at  timestamptz NOT NULL,
    generation  bigint      NOT NULL
);
