package pgtest

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

func TestNewDBIsMigratedAndIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := Pool(t), Pool(t)

	var n int
	if err := a.QueryRow(ctx, "SELECT count(*) FROM pgcc.leases").Scan(&n); err != nil {
		t.Fatalf("lease table missing from the test database: %v", err)
	}
	if _, err := a.Exec(ctx, "CREATE TABLE only_in_a (id int)"); err != nil {
		t.Fatal(err)
	}
	var exists bool
	if err := b.QueryRow(ctx, "SELECT to_regclass('only_in_a') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatal("a table created in one test database is visible in another")
	}
}

func TestDatabaseDroppedAfterTest(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("inner", func(t *testing.T) {
		db := NewDB(t)
		name = db.Name
		_ = db.Pool(t)
		_ = db.Conn(t)
	})
	h := get(t)
	var exists bool
	err := h.admin.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatalf("database %s still exists after its test ended", name)
	}
}

func TestExampleDatabaseSet(t *testing.T) {
	if os.Getenv(EnvExampleDatabaseURL) == "" {
		t.Fatalf("%s not set by Main", EnvExampleDatabaseURL)
	}
}

func TestParseName(t *testing.T) {
	t.Parallel()
	created, run, ok := parseName("pgcc_t_1700000000_ab12cd34_4242_7")
	if !ok || run != "ab12cd34" || !created.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("parseName = %v, %q, %v", created, run, ok)
	}
	for _, bad := range []string{"pgcc_t_x_ab_1_2", "pgcc_t_1_2_3", "other"} {
		if _, _, ok := parseName(bad); ok {
			t.Errorf("parseName(%q) accepted a foreign name", bad)
		}
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://u@h:5432/postgres?sslmode=disable", "postgres://u@h:5432/x?sslmode=disable"},
		{"postgresql://u:p@h/db", "postgresql://u:p@h/x"},
		{"host=h user=u dbname=postgres", "host=h user=u dbname=postgres dbname=x"},
	}
	for _, tt := range tests {
		got, err := withDatabase(tt.in, "x")
		if err != nil || got != tt.want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
