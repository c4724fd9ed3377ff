-- A tenant may let writes count acknowledgements of fallback nodes that
-- hold them for replicas believed down (a sloppy quorum). Off by default:
-- W counts only the key's own replicas.
ALTER TABLE tenants ADD COLUMN sloppy_quorum boolean NOT NULL DEFAULT false;
