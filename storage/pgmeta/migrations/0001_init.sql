-- The tables of every MetaStore namespace: one row per key. bytea compares
-- bytewise (memcmp), the key order storage.MetaStore requires.
CREATE TABLE gatehouse_kv (
	ns  text COLLATE "C" NOT NULL,
	tbl text COLLATE "C" NOT NULL,
	k   bytea NOT NULL,
	v   bytea NOT NULL,
	PRIMARY KEY (ns, tbl, k)
);

-- The sequence of each table (Tx.NextSequence): n is the last number given.
CREATE TABLE gatehouse_seq (
	ns  text COLLATE "C" NOT NULL,
	tbl text COLLATE "C" NOT NULL,
	n   bigint NOT NULL,
	PRIMARY KEY (ns, tbl)
);

-- Leases of the cluster (storage.Leaser), shared by every namespace. A row
-- is never deleted, so that generation keeps growing: a released lease has
-- an empty holder and expires <= now().
CREATE TABLE gatehouse_leases (
	name       text COLLATE "C" PRIMARY KEY,
	holder     text NOT NULL,
	addr       text NOT NULL,
	generation bigint NOT NULL,
	expires    timestamptz NOT NULL
);
