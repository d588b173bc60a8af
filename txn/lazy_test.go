package txn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/txn"
)

// proxiedOne returns a database with the accounts of setup and a pool of one connection to it through a proxy
// that counts round trips.
func proxiedOne(t *testing.T, configure ...func(*pgxpool.Config)) (*pgtest.DB, *pgxpool.Pool, *faultnet.Proxy) {
	t.Helper()
	db, _ := setup(t, 2)
	p, dsn := faultnet.ForDSN(t, db.DSN)
	pool := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t, append([]func(*pgxpool.Config){func(c *pgxpool.Config) {
		c.MaxConns = 1
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	}}, configure...)...)
	return db, pool, p
}

// flights runs Run twice (the first prepares the statements) and returns the round trips of the second.
func flights(t *testing.T, pool *pgxpool.Pool, p *faultnet.Proxy, fn func(context.Context, pgx.Tx) error, opts ...txn.Option) int64 {
	t.Helper()
	ctx := context.Background()
	if err := txn.Run(ctx, pool, fn, opts...); err != nil {
		t.Fatal(err)
	}
	p.ResetStats()
	if err := txn.Run(ctx, pool, fn, opts...); err != nil {
		t.Fatal(err)
	}
	return p.Stats().Flights
}

// TestLazyBeginRoundTrips counts the round trips of Run: BEGIN travels with fn's first statement, whatever
// method sends it, and a fn that sends nothing costs none.
func TestLazyBeginRoundTrips(t *testing.T) {
	t.Parallel()
	_, pool, p := proxiedOne(t)
	exec := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", 1)
		return err
	}
	for _, c := range []struct {
		name string
		fn   func(context.Context, pgx.Tx) error
		opts []txn.Option
		want int64
	}{
		{"nothing sent", func(context.Context, pgx.Tx) error { return nil }, nil, 0},
		{"exec", exec, nil, 2},
		{"exec without arguments", func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
			return err
		}, nil, 2},
		{"exec with isolation and timeouts", exec, []txn.Option{txn.WithIsolation(pgx.Serializable),
			txn.WithLockTimeout(time.Second), txn.WithStatementTimeout(time.Second)}, 2},
		{"query row then exec", func(ctx context.Context, tx pgx.Tx) error {
			var b int64
			if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE", 1).Scan(&b); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "UPDATE accounts SET balance = $2 WHERE id = $1", 1, b+1)
			return err
		}, nil, 3},
		{"query", func(ctx context.Context, tx pgx.Tx) error {
			rows, _ := tx.Query(ctx, "SELECT id FROM accounts ORDER BY id")
			ids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
			if err == nil && len(ids) != 2 {
				err = errors.New("wrong rows")
			}
			return err
		}, nil, 2},
		{"batch", func(ctx context.Context, tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue("UPDATE accounts SET balance = balance + 1 WHERE id = $1", 1)
			b.Queue("UPDATE accounts SET balance = balance - 1 WHERE id = $1", 2)
			return tx.SendBatch(ctx, b).Close()
		}, nil, 2},
	} {
		if got := flights(t, pool, p, c.fn, c.opts...); got != c.want {
			t.Errorf("%s: %d round trips, want %d", c.name, got, c.want)
		}
	}
}

// TestLazyBeginSettings: the transaction fn's first statement runs in has Run's isolation, access mode and
// timeouts.
func TestLazyBeginSettings(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	var iso, ro, lt, st string
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return tx.QueryRow(ctx, "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), "+
			"current_setting('lock_timeout'), current_setting('statement_timeout') WHERE $1::int = 1", 1).Scan(&iso, &ro, &lt, &st)
	}, txn.WithIsolation(pgx.RepeatableRead), txn.ReadOnly(), txn.WithLockTimeout(1500*time.Millisecond), txn.WithStatementTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if iso != "repeatable read" || ro != "on" || lt != "1500ms" || st != "3s" {
		t.Errorf("settings %q %q %q %q, want repeatable read, on, 1500ms, 3s", iso, ro, lt, st)
	}
	var after string
	if err := pool.QueryRow(ctx, "SELECT current_setting('lock_timeout')").Scan(&after); err != nil || after != "0" {
		t.Errorf("lock_timeout after the transaction %q (%v), want 0: SET LOCAL leaked", after, err)
	}
}

// TestLazyBeginEveryMethod: fn's statements run inside one transaction, whichever method comes first, and a
// rollback undoes them all; the methods that cannot carry BEGIN begin first.
func TestLazyBeginEveryMethod(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1)
	ctx := context.Background()
	errRollback := errors.New("roll back")
	for _, c := range []struct {
		name  string
		first func(ctx context.Context, tx pgx.Tx) error
	}{
		{"exec", func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "UPDATE accounts SET balance = 0 WHERE id = $1", 1)
			return err
		}},
		{"query row", func(ctx context.Context, tx pgx.Tx) error {
			var n int64
			return tx.QueryRow(ctx, "UPDATE accounts SET balance = 0 WHERE id = $1 RETURNING balance", 1).Scan(&n)
		}},
		{"conn", func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Conn().Exec(ctx, "UPDATE accounts SET balance = 0 WHERE id = $1", 1)
			return err
		}},
		{"copy", func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"log"}, []string{"msg"}, pgx.CopyFromRows([][]any{{"x"}}))
			if err == nil {
				_, err = tx.Exec(ctx, "UPDATE accounts SET balance = 0 WHERE id = $1", 1)
			}
			return err
		}},
		{"prepare", func(ctx context.Context, tx pgx.Tx) error {
			if _, err := tx.Prepare(ctx, "zero", "UPDATE accounts SET balance = 0 WHERE id = $1"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "zero", 1)
			return err
		}},
		{"savepoint", func(ctx context.Context, tx pgx.Tx) error {
			return txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
				_, err := sp.Exec(ctx, "UPDATE accounts SET balance = 0 WHERE id = $1", 1)
				return err
			})
		}},
		{"large objects", func(ctx context.Context, tx pgx.Tx) error {
			lo := tx.LargeObjects()
			if _, err := lo.Create(ctx, 0); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "UPDATE accounts SET balance = 0 WHERE id = $1", 1)
			return err
		}},
	} {
		err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			if err := c.first(ctx, tx); err != nil {
				return err
			}
			var status string
			if err := tx.QueryRow(ctx, "SELECT CASE WHEN now() = statement_timestamp() THEN 'first' ELSE 'in' END").Scan(&status); err != nil {
				return err
			}
			if status != "in" {
				return errors.New("the statements did not run in one transaction")
			}
			return errRollback
		})
		if !errors.Is(err, errRollback) {
			t.Errorf("%s: %v", c.name, err)
		}
		if b := balance(t, db); b != 100 {
			t.Errorf("%s: balance %d after rollback, want 100", c.name, b)
		}
	}
	if s := pool.Stat(); s.AcquiredConns() != 0 {
		t.Errorf("%d connections still acquired", s.AcquiredConns())
	}
}

// TestLazyBeginSingleConnection: on a single connection the lazy transaction leaves the connection idle after
// commit, after rollback, and when fn sent nothing.
func TestLazyBeginSingleConnection(t *testing.T) {
	t.Parallel()
	db, _ := setup(t, 1)
	conn := db.Conn(t)
	ctx := context.Background()
	for _, fn := range []func(context.Context, pgx.Tx) error{
		func(context.Context, pgx.Tx) error { return nil },
		increment,
		func(ctx context.Context, tx pgx.Tx) error {
			_ = increment(ctx, tx)
			return errors.New("fail")
		},
	} {
		_ = txn.Run(ctx, conn, fn)
		if s := conn.PgConn().TxStatus(); s != 'I' {
			t.Fatalf("connection status %c after Run, want idle", s)
		}
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
}

// TestLazyBeginFirstFlightLost: the connection is reset in the middle of the flight that carries BEGIN and
// fn's first statement (BEGIN delivered, the UPDATE not). Nothing can have committed: Run retries on a fresh
// connection and the update is applied once.
func TestLazyBeginFirstFlightLost(t *testing.T) {
	t.Parallel()
	db, pool, p := proxiedOne(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec })
	rule := p.OnQuery(faultnet.SQLHasPrefix("UPDATE accounts"), faultnet.ResetInstead, faultnet.Times(1))
	var retried []error
	calls := 0
	err := txn.Run(context.Background(), pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", 1)
		return err
	}, fastRetry, txn.OnRetry(func(_ int, err error, _ time.Duration) { retried = append(retried, err) }))
	if err != nil {
		t.Fatal(err)
	}
	if rule.Fired() != 1 || len(retried) != 1 || !errors.Is(retried[0], pgcc.ErrConnectionLost) || calls != 2 {
		t.Fatalf("rule fired %d, retried %v with %d calls; want one ErrConnectionLost, then success", rule.Fired(), retried, calls)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
}

// TestLazyBeginFirstStatementFails: an error of fn's first statement (sent with BEGIN) is fn's, as with an
// eager BEGIN: the transaction is rolled back and a retryable one is retried.
func TestLazyBeginFirstStatementFails(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1)
	ctx := context.Background()
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance / $1 WHERE id = 1", 0)
		return err
	})
	if pgCode(err) != pgerrcode.DivisionByZero {
		t.Fatalf("err = %v, want division by zero", err)
	}
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE no_such_table SET x = $1", 1)
		return err
	})
	if pgCode(err) != pgerrcode.UndefinedTable {
		t.Fatalf("err = %v, want undefined table", err)
	}
	calls := 0
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		if calls == 1 {
			_, err := tx.Exec(ctx, "SELECT 1 WHERE $1::int = 1", 1)
			if err != nil {
				return err
			}
			return &pgconn.PgError{Code: pgerrcode.SerializationFailure}
		}
		return increment(ctx, tx)
	}, fastRetry)
	if err != nil || calls != 2 {
		t.Fatalf("err = %v after %d calls, want a retried serialization failure", err, calls)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
}
