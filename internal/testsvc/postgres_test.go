package testsvc

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func query(t *testing.T, dsn, sql string, out ...any) error {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if out == nil {
		_, err = conn.Exec(t.Context(), sql)
		return err
	}
	return conn.QueryRow(t.Context(), sql).Scan(out...)
}

func TestPostgresDatabasesAreSeparate(t *testing.T) {
	a, b := Postgres(t), Postgres(t)
	if a.DSN == b.DSN || a.Database == b.Database || a.Server != b.Server {
		t.Fatalf("two calls gave %+v and %+v: want two databases of one server", a, b)
	}
	if err := query(t, a.DSN, "CREATE TABLE x (v int)"); err != nil {
		t.Fatal(err)
	}
	if err := query(t, b.DSN, "CREATE TABLE x (v int)"); err != nil {
		t.Fatalf("table of database a seen in b: %v", err)
	}
	var db string
	if err := query(t, a.DSN, "SELECT current_database()", &db); err != nil || db != a.Database {
		t.Fatalf("current_database() = %q, %v; want %q", db, err, a.Database)
	}
}

func TestPostgresServerRestart(t *testing.T) {
	srv := PostgresServer(t)
	db := srv.NewDatabase(t)
	if err := query(t, db.DSN, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	if err := query(t, db.DSN, "SELECT 1"); err == nil {
		t.Fatal("a stopped server answered")
	}
	srv.Start(t)
	var v int
	if err := query(t, db.DSN, "SELECT v FROM kept", &v); err != nil || v != 42 {
		t.Fatalf("after a restart: %d, %v; want the row kept", v, err)
	}
	port := srv.Port()
	srv.Restart(t)
	if srv.Port() != port {
		t.Errorf("port %d after Restart, was %d", srv.Port(), port)
	}
	if err := query(t, db.DSN, "SELECT v FROM kept", &v); err != nil {
		t.Fatal(err)
	}
}

func TestDBName(t *testing.T) {
	for _, tc := range []struct {
		test string
		want string
	}{
		{"TestX", "t_testx_1"},
		{"TestX/sub-test name", "t_testx_sub_test_name_1"},
		{"Test/ünïcode", "t_test_n_code_1"},
	} {
		if got := dbName(tc.test, 1); got != tc.want {
			t.Errorf("dbName(%q) = %q, want %q", tc.test, got, tc.want)
		}
	}
	long := dbName("TestAVeryLongNameOfATestThatGoesOnAndOnAndOnForeverAndEver/AndAnotherSubtest", 12345)
	if len(long) > 63 {
		t.Errorf("dbName of a long test name is %d bytes (PostgreSQL's limit is 63): %s", len(long), long)
	}
}
