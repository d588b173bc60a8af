package pgbouncer_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgbouncer"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup returns a fresh database with a table t (n int) and a pooler of the given mode and size in front of
// its server.
func setup(t *testing.T, mode pgbouncer.PoolMode, size int) (context.Context, *pgtest.DB, *pgbouncer.Bouncer) {
	t.Helper()
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	db := pgtest.NewDB(t)
	if _, err := db.Pool(t).Exec(ctx, "CREATE TABLE t (n int)"); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	b := pgbouncer.Start(t, pgbouncer.Config{ServerHost: cfg.Host, ServerPort: int(cfg.Port), PoolMode: mode, PoolSize: size})
	return ctx, db, b
}

func connect(t *testing.T, ctx context.Context, dsn string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// TestTransactionPoolingQueryModes runs concurrent queries and transactions through transaction pooling in
// each query mode that needs no named prepared statement.
func TestTransactionPoolingQueryModes(t *testing.T) {
	ctx, db, b := setup(t, pgbouncer.TransactionMode, 3)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheDescribe}
	for _, mode := range modes {
		pool := (&pgtest.DB{Name: db.Name, DSN: b.DSN(db.Name)}).Pool(t, func(c *pgxpool.Config) {
			c.MaxConns = 8
			c.ConnConfig.DefaultQueryExecMode = mode
		})
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					var got int
					if err := pool.QueryRow(ctx, "SELECT $1::int + 1", w*10+i).Scan(&got); err != nil {
						errs <- err
						return
					}
					err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
						_, err := tx.Exec(ctx, "INSERT INTO t VALUES ($1)", got)
						return err
					})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("%v: %v", mode, err)
		}
	}
	var n int
	if err := db.Pool(t).QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if want := len(modes) * 8 * 10; n != want {
		t.Errorf("%d rows, want %d", n, want)
	}
}

// TestServerConnectionChangesBetweenTransactions: in transaction mode one client's consecutive transactions
// may run on different server connections; in session mode they may not.
func TestServerConnectionChangesBetweenTransactions(t *testing.T) {
	ctx, db, b := setup(t, pgbouncer.TransactionMode, 2)
	a := connect(t, ctx, b.DSN(db.Name), pgx.QueryExecModeExec)
	pid := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) int {
		var p int
		if err := q.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	txPID := func(c *pgx.Conn) int {
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Commit(ctx) }()
		return pid(tx)
	}

	first := txPID(a)
	// Hold first's server connection in another client's transaction: A's next transaction must run on the
	// pool's other connection. With two server connections, at most two tries land on first's.
	var holder pgx.Tx
	for try := 0; holder == nil && try < 2; try++ {
		tx, err := connect(t, ctx, b.DSN(db.Name), pgx.QueryExecModeExec).Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pid(tx) == first {
			holder = tx
			continue
		}
		defer func() { _ = tx.Rollback(ctx) }() // keep the other connection busy too, until A starts
	}
	if holder == nil {
		t.Fatal("no transaction ran on the first server connection")
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if second := txPID(a); second == first {
		t.Errorf("both transactions of one client ran on backend %d while another client held it", first)
	}
}

func TestSessionPoolingKeepsTheServerConnection(t *testing.T) {
	ctx, db, b := setup(t, pgbouncer.SessionMode, 2)
	a := connect(t, ctx, b.DSN(db.Name), pgx.QueryExecModeCacheStatement) // prepared statements are fine here
	other := connect(t, ctx, b.DSN(db.Name), pgx.QueryExecModeCacheStatement)
	var p1, p2, q int
	for _, step := range []struct {
		c   *pgx.Conn
		dst *int
	}{{a, &p1}, {other, &q}, {a, &p2}} {
		if err := step.c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(step.dst); err != nil {
			t.Fatal(err)
		}
	}
	if p1 != p2 || p1 == q {
		t.Errorf("session pooling: client A on backends %d then %d, client B on %d", p1, p2, q)
	}
}

// TestAdminConsole: SHOW POOLS, PAUSE holds new transactions until RESUME, RECONNECT, and a restart on the
// same port.
func TestAdminConsole(t *testing.T) {
	ctx, db, b := setup(t, pgbouncer.TransactionMode, 2)
	conn := connect(t, ctx, b.DSN(db.Name), pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	pools, err := b.Admin(ctx, "SHOW POOLS")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range pools {
		if p["database"] == db.Name && p["user"] == "postgres" && p["pool_mode"] == "transaction" {
			found = true
		}
	}
	if !found {
		t.Errorf("SHOW POOLS has no transaction pool for %s: %v", db.Name, pools)
	}

	if _, err := b.Admin(ctx, "PAUSE "+db.Name); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "INSERT INTO t VALUES (1)")
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a statement ran (%v) while the database was paused", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := b.Admin(ctx, "RESUME "+db.Name); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("after RESUME: %v", err)
	}
	if _, err := b.Admin(ctx, "RECONNECT "+db.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after RECONNECT: %v", err)
	}

	port := b.Port()
	b.Restart()
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Error("a client connection survived the pooler's restart")
	}
	if b.Port() != port {
		t.Errorf("restarted on port %d, want %d", b.Port(), port)
	}
	if _, err := connect(t, ctx, b.DSN(db.Name), pgx.QueryExecModeExec).Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}
