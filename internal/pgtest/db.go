package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/testdb"
)

// applicationName is set on every test connection, so that pg_stat_activity (and lock diagnostics) show
// which sessions are the tests'.
const applicationName = "pgcc-test"

// DB is one test's own database, cloned from the migrated template.
type DB struct {
	// Name is the database name.
	Name string
	// DSN connects to it, with every other setting of the server's connection string.
	DSN string
}

// NewDB creates a database for t from the migrated template and drops it when t ends, after the pools and
// connections opened through it have been closed.
func NewDB(t testing.TB) *DB {
	t.Helper()
	watchTest(t)
	h := get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name, err := h.createDatabase(ctx)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { h.dropDatabase(name) })
	dsn, err := withDatabase(h.baseDSN, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return &DB{Name: name, DSN: dsn}
}

// Pool opens a pool on the database. configure, when given, adjusts the configuration first (pool size,
// AfterConnect hooks). When t ends the pool must have no acquired connection: one still acquired is a leak,
// reported as a test failure, and the pool is closed.
func (d *DB) Pool(t testing.TB, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	w := watchTest(t)
	cfg, err := pgxpool.ParseConfig(d.DSN)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = applicationName
	cfg.MaxConns = 20
	for _, f := range configure {
		f(cfg)
	}
	traced(cfg.ConnConfig, w)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(func() {
		if n := awaitReleased(pool, leakGrace); n != 0 {
			t.Errorf("pgtest: %d connection(s) still acquired from the pool when the test ended: a leak", n)
		}
		pool.Close()
	})
	return pool
}

const leakGrace = testdb.LeakGrace

func awaitReleased(pool *pgxpool.Pool, grace time.Duration) int32 {
	return testdb.AwaitReleased(pool, grace)
}

// Conn opens a single connection on the database, closed when t ends.
func (d *DB) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	w := watchTest(t)
	cfg, err := pgx.ParseConfig(d.DSN)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg.RuntimeParams["application_name"] = applicationName
	traced(cfg, w)
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// Pool is NewDB(t).Pool(t, configure...): a pool on a fresh database of t's own.
func Pool(t testing.TB, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	return NewDB(t).Pool(t, configure...)
}
