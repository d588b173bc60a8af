package pgcctest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/testdb"
)

// ApplicationName is set on every connection the kit opens, so that pg_stat_activity and lock diagnostics
// show which sessions are the tests'.
const ApplicationName = "pgcctest"

// DefaultMaxConns is the size of a pool opened by [DB.Pool] unless configure changes it: enough for tests
// that race a handful of goroutines, small enough that parallel tests do not exhaust max_connections.
const DefaultMaxConns = 8

// DB is one database copied from a [Server]'s template.
type DB struct {
	// Name is the database's name.
	Name string
	// DSN connects to it, with every other setting of the server's connection string.
	DSN string

	srv *Server
}

// Drop drops the database, terminating the sessions still connected to it. [Server.NewDB] calls it when the
// test ends.
func (d *DB) Drop(ctx context.Context) error {
	return testdb.Drop(ctx, d.srv.admin, d.Name)
}

// PoolConfig returns the configuration [DB.Pool] starts from: the database's DSN, [ApplicationName] and
// [DefaultMaxConns] connections.
func (d *DB) PoolConfig() (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(d.DSN)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = ApplicationName
	cfg.MaxConns = DefaultMaxConns
	return cfg, nil
}

// Pool opens a pool on the database. configure, when given, adjusts the configuration first (size,
// AfterConnect hooks, a tracer). When t ends, every connection must be back in the pool: one still acquired
// (rows not closed, a transaction neither committed nor rolled back, a Conn not released) is reported as a
// test failure, and the pool is closed.
func (d *DB) Pool(t testing.TB, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := d.PoolConfig()
	if err != nil {
		t.Fatalf("pgcctest: %v", err)
	}
	for _, f := range configure {
		f(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgcctest: open pool: %v", err)
	}
	t.Cleanup(func() { closeChecked(t, pool) })
	return pool
}

// closeChecked fails t when connections of pool are still acquired, then closes it.
func closeChecked(t testing.TB, pool *pgxpool.Pool) {
	if n := testdb.AwaitReleased(pool, testdb.LeakGrace); n != 0 {
		t.Errorf("pgcctest: %d connection(s) still acquired from the pool when the test ended: a leak", n)
	}
	pool.Close()
}

// Conn opens a single connection to the database, closed when t ends.
func (d *DB) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(d.DSN)
	if err != nil {
		t.Fatalf("pgcctest: %v", err)
	}
	cfg.RuntimeParams["application_name"] = ApplicationName
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgcctest: connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}
