package txn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/txn"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup returns a pool on a fresh database with a small accounts table: ids 1..n, balance 100 each.
func setup(t *testing.T, n int, configure ...func(*pgxpool.Config)) (*pgtest.DB, *pgxpool.Pool) {
	t.Helper()
	db := pgtest.NewDB(t)
	pool := db.Pool(t, configure...)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `
		CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
		CREATE TABLE doctors (name text PRIMARY KEY, shift int NOT NULL, on_call bool NOT NULL);
		CREATE TABLE log (msg text NOT NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO accounts SELECT g, 100 FROM generate_series(1, $1) g", n); err != nil {
		t.Fatal(err)
	}
	return db, pool
}

// raise makes the server itself report an error with the given SQLSTATE, so tests see a real *pgconn.PgError.
func raise(ctx context.Context, tx pgx.Tx, code string) error {
	_, err := tx.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN RAISE EXCEPTION 'raised for a test' USING ERRCODE = '%s'; END $$`, code))
	return err
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func count(t *testing.T, q pgxQuerier, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

type pgxQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// TestWriteSkewSerializable: eight doctors are on call; each goes off call if at least one other remains.
// All eight read before any writes (a barrier on the first attempt), the classic write-skew interleaving.
// Under SERIALIZABLE with retries exactly one doctor stays on call; under READ COMMITTED nobody does, which
// shows the test can fail.
func TestWriteSkewSerializable(t *testing.T) {
	t.Parallel()
	const doctors = 8
	for _, tc := range []struct {
		name      string
		isolation pgx.TxIsoLevel
		wantOn    int
	}{
		{"serializable", pgx.Serializable, 1},
		{"read committed loses the invariant", pgx.ReadCommitted, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, pool := setup(t, 0, func(c *pgxpool.Config) { c.MaxConns = doctors + 2 })
			ctx := context.Background()
			for i := range doctors {
				if _, err := pool.Exec(ctx, "INSERT INTO doctors VALUES ($1, 1, true)", fmt.Sprint("dr", i)); err != nil {
					t.Fatal(err)
				}
			}
			b := pgtest.NewBarrier(doctors)
			var retries atomic.Int64
			var wg sync.WaitGroup
			errs := make([]error, doctors)
			for i := range doctors {
				wg.Add(1)
				go func() {
					defer wg.Done()
					first := true
					errs[i] = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
						var onCall int
						if err := tx.QueryRow(ctx, "SELECT count(*) FROM doctors WHERE shift = 1 AND on_call").Scan(&onCall); err != nil {
							return err
						}
						if first {
							first = false
							b.Wait(ctx)
						}
						if onCall < 2 {
							return nil
						}
						_, err := tx.Exec(ctx, "UPDATE doctors SET on_call = false WHERE name = $1", fmt.Sprint("dr", i))
						return err
					}, txn.WithIsolation(tc.isolation), txn.WithMaxAttempts(50),
						txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 20 * time.Millisecond}),
						txn.OnRetry(func(int, error, time.Duration) { retries.Add(1) }))
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("doctor %d: %v", i, err)
				}
			}
			if got := count(t, pool, "SELECT count(*) FROM doctors WHERE on_call"); got != tc.wantOn {
				t.Errorf("doctors on call = %d, want %d", got, tc.wantOn)
			}
			if tc.isolation == pgx.Serializable && retries.Load() == 0 {
				t.Error("no retry happened: the interleaving did not produce a serialization failure")
			}
		})
	}
}

// TestTransfersKeepTotalUnderSerializable moves money between accounts from 12 goroutines with a rule that
// no account goes below zero; SERIALIZABLE and retries keep both the total and the rule.
func TestTransfersKeepTotalUnderSerializable(t *testing.T) {
	t.Parallel()
	const workers, rounds, accounts = 12, 30, 4
	_, pool := setup(t, accounts, func(c *pgxpool.Config) { c.MaxConns = workers })
	ctx := context.Background()
	var ok, exhausted atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				from, to := (w+r)%accounts+1, (w+r+1)%accounts+1
				err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
					var bal int64
					if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1", from).Scan(&bal); err != nil {
						return err
					}
					if bal < 30 {
						return nil
					}
					if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = $2 WHERE id = $1", from, bal-30); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 30 WHERE id = $1", to)
					return err
				}, txn.WithIsolation(pgx.Serializable), txn.WithMaxAttempts(100),
					txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 10 * time.Millisecond}))
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, pgcc.ErrRetriesExhausted):
					exhausted.Add(1)
				default:
					t.Errorf("transfer: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if got := count(t, pool, "SELECT sum(balance) FROM accounts"); got != 100*accounts {
		t.Errorf("total balance = %d, want %d", got, 100*accounts)
	}
	if got := count(t, pool, "SELECT count(*) FROM accounts WHERE balance < 0"); got != 0 {
		t.Errorf("%d accounts below zero", got)
	}
	if ok.Load()+exhausted.Load() != workers*rounds {
		t.Errorf("%d succeeded + %d exhausted, want %d calls accounted for", ok.Load(), exhausted.Load(), workers*rounds)
	}
}

// TestDeadlockIsRetried locks two rows in opposite orders from two transactions that meet in the middle.
// PostgreSQL aborts one with 40P01; Run retries it and both complete.
func TestDeadlockIsRetried(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 2)
	ctx := context.Background()
	b := pgtest.NewBarrier(2)
	var codes sync.Map
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, order := range [][2]int{{1, 2}, {2, 1}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := true
			errs[i] = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", order[0]); err != nil {
					return err
				}
				if first {
					first = false
					b.Wait(ctx)
				}
				_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", order[1])
				return err
			}, txn.OnRetry(func(_ int, err error, _ time.Duration) { codes.Store(pgCode(err), true) }))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
	}
	if _, ok := codes.Load(pgerrcode.DeadlockDetected); !ok {
		t.Error("no deadlock was retried")
	}
	if got := count(t, pool, "SELECT sum(balance) FROM accounts"); got != 204 {
		t.Errorf("sum = %d, want 204 (both transactions applied exactly once)", got)
	}
}

func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	calls := 0
	var hooks []int
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		if _, err := tx.Exec(ctx, "INSERT INTO log VALUES ('attempt')"); err != nil {
			return err
		}
		return raise(ctx, tx, pgerrcode.SerializationFailure)
	}, txn.WithMaxAttempts(3), txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: time.Millisecond}),
		txn.OnRetry(func(attempt int, err error, _ time.Duration) { hooks = append(hooks, attempt) }))

	var exhausted *pgcc.RetriesExhaustedError
	if !errors.As(err, &exhausted) || !errors.Is(err, pgcc.ErrRetriesExhausted) {
		t.Fatalf("err = %v, want *RetriesExhaustedError", err)
	}
	if exhausted.Attempts != 3 || calls != 3 {
		t.Errorf("attempts = %d, calls = %d, want 3 and 3", exhausted.Attempts, calls)
	}
	if pgCode(err) != pgerrcode.SerializationFailure {
		t.Errorf("the last *pgconn.PgError is not reachable: code %q", pgCode(err))
	}
	if fmt.Sprint(hooks) != "[1 2]" {
		t.Errorf("OnRetry saw attempts %v, want [1 2]", hooks)
	}
	if got := count(t, pool, "SELECT count(*) FROM log"); got != 0 {
		t.Errorf("%d rows from failed attempts were committed", got)
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelledAt time.Time
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return raise(ctx, tx, pgerrcode.SerializationFailure)
	}, txn.WithBackoff(txn.Backoff{Base: time.Minute, Cap: time.Minute, NoJitter: true}),
		txn.OnRetry(func(int, error, time.Duration) {
			cancelledAt = time.Now()
			cancel() // the sleep that follows must end at once
		}))
	elapsed := time.Since(cancelledAt)

	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	var interrupted *pgcc.InterruptedError
	if !errors.As(err, &interrupted) || interrupted.Attempts != 1 {
		t.Fatalf("err = %#v, want *InterruptedError after 1 attempt", err)
	}
	if pgCode(err) != pgerrcode.SerializationFailure {
		t.Errorf("the last conflict is not reachable from %v", err)
	}
	if elapsed > time.Second {
		t.Errorf("returned %v after cancellation", elapsed)
	}
}

// TestDeadlineShorterThanBackoff: a sleep that would outlast the deadline is not started.
func TestDeadlineShorterThanBackoff(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return raise(ctx, tx, pgerrcode.DeadlockDetected)
	}, txn.WithBackoff(txn.Backoff{Base: time.Minute, Cap: time.Minute, NoJitter: true}))
	if !errors.Is(err, context.DeadlineExceeded) || pgCode(err) != pgerrcode.DeadlockDetected {
		t.Fatalf("err = %v, want DeadlineExceeded carrying the deadlock", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("slept %v although the deadline could not be met", d)
	}
}

// TestCancelWhileBlocked cancels a transaction waiting for a row lock another session holds.
func TestCancelWhileBlocked(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1)
	holder := db.Conn(t)
	ctx := context.Background()
	hold, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(ctx)
	if _, err := hold.Exec(ctx, "SELECT * FROM accounts WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	pids := make(chan uint32, 1)
	done := make(chan error, 1)
	go func() {
		done <- txn.Run(runCtx, pool, func(ctx context.Context, tx pgx.Tx) error {
			pids <- tx.Conn().PgConn().PID()
			_, err := tx.Exec(ctx, "UPDATE accounts SET balance = 0 WHERE id = 1")
			return err
		})
	}()
	waitForLockWait(t, pool, <-pids)
	cancelled := time.Now()
	cancel()
	err = <-done
	if d := time.Since(cancelled); d > time.Second {
		t.Errorf("Run returned %v after cancellation", d)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if err := hold.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// The pool is healthy: a new transaction runs, and the blocked update never happened.
	if got := count(t, pool, "SELECT balance FROM accounts WHERE id = 1"); got != 100 {
		t.Errorf("balance = %d, want 100", got)
	}
}

// waitForLockWait polls until the backend pid waits for a lock.
func waitForLockWait(t *testing.T, pool *pgxpool.Pool, pid uint32) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a statement took over 10 s to reach its lock on a loaded machine
	for time.Now().Before(deadline) {
		var waiting bool
		err := pool.QueryRow(context.Background(),
			"SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1", int32(pid)).Scan(&waiting)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("backend %d never waited for the lock", pid)
}

func TestPanicRollsBackAndRepanics(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the original panic value", r)
			}
		}()
		_ = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "INSERT INTO log VALUES ('panicked')"); err != nil {
				return err
			}
			panic("boom")
		})
		t.Error("Run returned instead of panicking")
	}()
	if got := count(t, pool, "SELECT count(*) FROM log"); got != 0 {
		t.Errorf("the panicking transaction committed %d rows", got)
	}
}

func TestErrorReturnedUnchangedAndRolledBack(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	mine := errors.New("insufficient funds")
	calls := 0
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		if _, err := tx.Exec(ctx, "INSERT INTO log VALUES ('x')"); err != nil {
			return err
		}
		return mine
	})
	if err != mine {
		t.Fatalf("err = %v, want the caller's own error value", err)
	}
	if calls != 1 {
		t.Errorf("a non-retryable error was retried: %d calls", calls)
	}
	if got := count(t, pool, "SELECT count(*) FROM log"); got != 0 {
		t.Errorf("%d rows committed", got)
	}

	// A server error that is not a conflict (unique violation) is returned at once, too.
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO accounts VALUES (1, 0)")
		return err
	})
	if pgCode(err) != pgerrcode.UniqueViolation {
		t.Fatalf("err = %v, want the unique violation", err)
	}
}

func TestNestedSavepoint(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	inner := errors.New("inner failed")
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO log VALUES ('outer before')"); err != nil {
			return err
		}
		err := txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			if _, err := sp.Exec(ctx, "INSERT INTO log VALUES ('inner, rolled back')"); err != nil {
				return err
			}
			return inner
		})
		if err != inner {
			return fmt.Errorf("nested Run returned %v, want the inner error", err)
		}
		// A failed statement inside the savepoint must not poison the outer transaction either.
		err = txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			_, err := sp.Exec(ctx, "INSERT INTO accounts VALUES (1, 0)")
			return err
		})
		if pgCode(err) != pgerrcode.UniqueViolation {
			return fmt.Errorf("nested Run returned %v, want a unique violation", err)
		}
		if err := txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			_, err := sp.Exec(ctx, "INSERT INTO log VALUES ('inner, kept')")
			return err
		}); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO log VALUES ('outer after')")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, "SELECT msg FROM log ORDER BY msg")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(msgs), "[inner, kept outer after outer before]"; got != want {
		t.Errorf("committed %s, want %s", got, want)
	}
}

// TestCommitUnknown terminates the transaction's backend from another connection after fn and before
// COMMIT. The outcome is unknowable from the client, so Run must say so and not retry, unless fn is declared
// idempotent.
func TestCommitUnknown(t *testing.T) {
	t.Parallel()
	for _, idempotent := range []bool{false, true} {
		t.Run(fmt.Sprintf("idempotent=%v", idempotent), func(t *testing.T) {
			t.Parallel()
			db, pool := setup(t, 1)
			killer := db.Conn(t)
			ctx := context.Background()
			calls := 0
			opts := []txn.Option{txn.WithBackoff(txn.Backoff{Base: time.Millisecond})}
			if idempotent {
				opts = append(opts, txn.Idempotent())
			}
			err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
				calls++
				if _, err := tx.Exec(ctx, "INSERT INTO log VALUES ('x')"); err != nil {
					return err
				}
				if calls > 1 {
					return nil
				}
				return terminate(ctx, killer, tx.Conn().PgConn().PID())
			}, opts...)
			if idempotent {
				if err != nil || calls != 2 {
					t.Fatalf("err = %v after %d calls, want success on the second", err, calls)
				}
				if got := count(t, pool, "SELECT count(*) FROM log"); got != 1 {
					t.Errorf("log has %d rows, want 1", got)
				}
				return
			}
			var unknown *pgcc.CommitUnknownError
			if !errors.Is(err, pgcc.ErrCommitUnknown) || !errors.As(err, &unknown) || unknown.Attempts != 1 {
				t.Fatalf("err = %v, want *CommitUnknownError at attempt 1", err)
			}
			if calls != 1 {
				t.Errorf("an unknown commit was retried: %d calls", calls)
			}
			if unknown.Err == nil {
				t.Error("the connection's error is missing")
			}
		})
	}
}

// terminate ends backend pid from another connection and waits until it is gone.
func terminate(ctx context.Context, killer *pgx.Conn, pid uint32) error {
	if _, err := killer.Exec(ctx, "SELECT pg_terminate_backend($1, 10000)", int32(pid)); err != nil {
		return err
	}
	return nil
}

// TestWorksOnEveryHandle runs the same increment through a pool, a pooled conn, a plain conn and a tx.
func TestWorksOnEveryHandle(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1)
	ctx := context.Background()
	conn := db.Conn(t)
	pooled, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	increment := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
		return err
	}
	handles := map[string]pgcc.Beginner{"pool": pool, "pooled conn": pooled, "conn": conn}
	for name, h := range handles {
		if err := txn.Run(ctx, h, increment, txn.WithIsolation(pgx.Serializable)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	pooled.Release()
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return txn.Run(ctx, tx, increment)
	})
	if err != nil {
		t.Fatalf("tx: %v", err)
	}
	if got := count(t, pool, "SELECT balance FROM accounts WHERE id = 1"); got != 104 {
		t.Errorf("balance = %d, want 104", got)
	}
}

func TestTransactionSettings(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	show := func(tx pgx.Tx, name string) string {
		var v string
		if err := tx.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		for name, want := range map[string]string{
			"transaction_isolation":  "serializable",
			"transaction_read_only":  "on",
			"transaction_deferrable": "on",
			"lock_timeout":           "250ms",
			"statement_timeout":      "1min",
		} {
			if got := show(tx, name); got != want {
				t.Errorf("%s = %q, want %q", name, got, want)
			}
		}
		// The failed write aborts the transaction; a savepoint keeps it usable.
		err := txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			_, err := sp.Exec(ctx, "INSERT INTO log VALUES ('x')")
			return err
		})
		if pgCode(err) != pgerrcode.ReadOnlySQLTransaction {
			t.Errorf("write in a read-only transaction: %v", err)
		}
		return nil
	}, txn.WithIsolation(pgx.Serializable), txn.ReadOnly(), txn.Deferrable(),
		// A SERIALIZABLE READ ONLY DEFERRABLE transaction's first statement waits for a safe snapshot, which
		// takes as long as the server's other serializable transactions (other tests, in parallel) do: the
		// statement timeout must leave room for that wait.
		txn.WithLockTimeout(250*time.Millisecond), txn.WithStatementTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	// SET LOCAL ends with the transaction: the pooled connection is back to the server's defaults.
	if got := count(t, pool, "SELECT count(*) FROM pg_settings WHERE name = 'lock_timeout' AND setting <> '0'"); got != 0 {
		t.Error("lock_timeout leaked out of the transaction")
	}
}

func TestLockTimeout(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1)
	ctx := context.Background()
	holder := db.Conn(t)
	hold, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(ctx)
	if _, err := hold.Exec(ctx, "SELECT * FROM accounts WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	update := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = 0 WHERE id = 1")
		return err
	}

	calls := 0
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error { calls++; return update(ctx, tx) },
		txn.WithLockTimeout(20*time.Millisecond))
	if pgCode(err) != pgerrcode.LockNotAvailable || errors.Is(err, pgcc.ErrRetriesExhausted) || calls != 1 {
		t.Fatalf("err = %v after %d calls, want 55P03 returned at once", err, calls)
	}

	err = txn.Run(ctx, pool, update, txn.WithLockTimeout(20*time.Millisecond), txn.RetryLockNotAvailable(),
		txn.WithMaxAttempts(3), txn.WithBackoff(txn.Backoff{Base: time.Millisecond}))
	var exhausted *pgcc.RetriesExhaustedError
	if !errors.As(err, &exhausted) || exhausted.Attempts != 3 || pgCode(err) != pgerrcode.LockNotAvailable {
		t.Fatalf("err = %v, want exhaustion after 3 lock timeouts", err)
	}

	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "SELECT pg_sleep(5)")
		return err
	}, txn.WithStatementTimeout(20*time.Millisecond))
	if pgCode(err) != pgerrcode.QueryCanceled {
		t.Fatalf("err = %v, want 57014 from statement_timeout", err)
	}
}

type countingTracer struct{ n atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func TestRunValue(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 3)
	ctx := context.Background()
	attempts := 0
	total, err := txn.RunValue(ctx, pool, func(ctx context.Context, tx pgx.Tx) (int64, error) {
		attempts++
		var sum int64
		if err := tx.QueryRow(ctx, "SELECT sum(balance) FROM accounts").Scan(&sum); err != nil {
			return 0, err
		}
		if attempts == 1 {
			return sum + 1000, raise(ctx, tx, pgerrcode.SerializationFailure)
		}
		return sum, nil
	}, txn.WithBackoff(txn.Backoff{Base: time.Millisecond}))
	if err != nil || total != 300 || attempts != 2 {
		t.Fatalf("RunValue = %d, %v after %d attempts; want 300 from the second attempt", total, err, attempts)
	}
	v, err := txn.RunValue(ctx, pool, func(ctx context.Context, tx pgx.Tx) (string, error) {
		return "discarded", errors.New("nope")
	})
	if v != "" || err == nil {
		t.Fatalf("RunValue on error = %q, %v; want the zero value and the error", v, err)
	}
}

func TestInvalidOptions(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	for name, opt := range map[string]txn.Option{
		"zero attempts":         txn.WithMaxAttempts(0),
		"negative attempts":     txn.WithMaxAttempts(-1),
		"negative lock timeout": txn.WithLockTimeout(-time.Second),
		"zero stmt timeout":     txn.WithStatementTimeout(0),
		"base above cap":        txn.WithBackoff(txn.Backoff{Base: time.Second, Cap: time.Millisecond}),
		"unknown isolation":     txn.WithIsolation("snapshot; DROP TABLE accounts"),
		"nil predicate":         txn.RetryIf(nil),
		"nil option":            nil,
	} {
		called := false
		err := txn.Run(ctx, pool, func(context.Context, pgx.Tx) error { called = true; return nil }, opt)
		if !errors.Is(err, pgcc.ErrInvalidArgument) || called {
			t.Errorf("%s: err = %v, called = %v; want ErrInvalidArgument and fn not called", name, err, called)
		}
	}
	if err := txn.Run(ctx, nil, func(context.Context, pgx.Tx) error { return nil }); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Run on a nil handle: err = %v, want ErrInvalidArgument", err)
	}
	if err := txn.Run(ctx, pool, nil); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Run with a nil fn: err = %v, want ErrInvalidArgument", err)
	}
	if err := txn.Retry(ctx, nil); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Retry with a nil fn: err = %v, want ErrInvalidArgument", err)
	}
	err := txn.Retry(ctx, func(context.Context) error { return nil }, txn.WithIsolation(pgx.Serializable))
	if !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Retry with an isolation level: err = %v, want ErrInvalidArgument", err)
	}
}

func TestRetryWithPredicate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	stale := errors.New("stale")
	calls := 0
	err := txn.Retry(ctx, func(context.Context) error {
		calls++
		if calls < 4 {
			return fmt.Errorf("round %d: %w", calls, stale)
		}
		return nil
	}, txn.RetryIf(func(err error) bool { return errors.Is(err, stale) }), txn.WithBackoff(txn.Backoff{Base: time.Microsecond}))
	if err != nil || calls != 4 {
		t.Fatalf("Retry = %v after %d calls, want success on the fourth", err, calls)
	}
	err = txn.Retry(ctx, func(context.Context) error { return stale },
		txn.RetryIf(func(err error) bool { return errors.Is(err, stale) }), txn.WithMaxAttempts(2),
		txn.WithBackoff(txn.Backoff{Base: time.Microsecond}))
	if !errors.Is(err, pgcc.ErrRetriesExhausted) || !errors.Is(err, stale) {
		t.Fatalf("err = %v, want exhaustion wrapping the last error", err)
	}
}

// TestFnIgnoringTxLeaksNothing: fn that never touches tx, or that fails, returns its connection.
func TestFnIgnoringTxLeaksNothing(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1, func(c *pgxpool.Config) { c.MaxConns = 1 })
	ctx := context.Background()
	for range 5 {
		if err := txn.Run(ctx, pool, func(context.Context, pgx.Tx) error { return nil }); err != nil {
			t.Fatal(err)
		}
		_ = txn.Run(ctx, pool, func(context.Context, pgx.Tx) error { return errors.New("x") })
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Fatalf("%d connections acquired after Run returned", n)
	}
}

// TestSwallowedErrorIsNotCommitUnknown: fn ignores a failed statement and returns nil. PostgreSQL answers
// COMMIT with ROLLBACK, a definite outcome that Run reports as pgx.ErrTxCommitRollback.
func TestSwallowedErrorIsNotCommitUnknown(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, _ = tx.Exec(ctx, "INSERT INTO accounts VALUES (1, 0)") // unique violation, ignored
		return nil
	})
	if !errors.Is(err, pgx.ErrTxCommitRollback) || errors.Is(err, pgcc.ErrCommitUnknown) {
		t.Fatalf("err = %v, want pgx.ErrTxCommitRollback", err)
	}
}

// TestNestedRunRejectsTransactionOptions: options shape the outermost transaction only; a nested Run given
// any says so, naming them, instead of ignoring them.
func TestNestedRunRejectsTransactionOptions(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		called := false
		err := txn.Run(ctx, tx, func(context.Context, pgx.Tx) error { called = true; return nil },
			txn.WithIsolation(pgx.Serializable), txn.WithLockTimeout(time.Second), txn.WithIdempotencyKey("k"))
		if !errors.Is(err, pgcc.ErrInvalidArgument) || called {
			t.Errorf("nested Run with options: err = %v, called %v; want ErrInvalidArgument", err, called)
		}
		for _, name := range []string{"WithIsolation", "WithLockTimeout", "WithIdempotencyKey"} {
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("the error does not name %s: %v", name, err)
			}
		}
		err = txn.Run(ctx, tx, func(context.Context, pgx.Tx) error { called = true; return nil }, txn.Outermost())
		if !errors.Is(err, pgcc.ErrInvalidArgument) || called {
			t.Errorf("nested Run with Outermost: err = %v, called %v; want ErrInvalidArgument", err, called)
		}
		return txn.Run(ctx, tx, increment) // without options a savepoint is fine
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := txn.Run(ctx, pool, increment, txn.Outermost()); err != nil {
		t.Fatalf("Outermost on a pool: %v", err)
	}
	if got := count(t, pool, "SELECT balance FROM accounts WHERE id = 1"); got != 102 {
		t.Errorf("balance %d, want 102", got)
	}
}

// TestConnAlreadyInTransaction: Run's COMMIT would end a transaction it did not begin.
func TestConnAlreadyInTransaction(t *testing.T) {
	t.Parallel()
	db, _ := setup(t, 1)
	conn := db.Conn(t)
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := txn.Run(ctx, conn, increment, txn.Outermost()); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Run on a connection inside a transaction: %v, want ErrInvalidArgument", err)
	}
}

// TestRetryReturnsCommitUnknown: Retry never retries an unknown outcome unless told the work is idempotent,
// and reports it with the loop's attempt number.
func TestRetryReturnsCommitUnknown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, idempotent := range []bool{false, true} {
		calls := 0
		opts := []txn.Option{txn.RetryIf(func(error) bool { return true }), txn.WithBackoff(txn.Backoff{Base: time.Microsecond})}
		if idempotent {
			opts = append(opts, txn.Idempotent())
		}
		err := txn.Retry(ctx, func(context.Context) error {
			calls++
			switch calls {
			case 1:
				return errors.New("retry me")
			case 2:
				return &pgcc.CommitUnknownError{Attempts: 1, Err: io.ErrUnexpectedEOF}
			}
			return nil
		}, opts...)
		var unknown *pgcc.CommitUnknownError
		switch {
		case idempotent && (err != nil || calls != 3):
			t.Errorf("idempotent: err = %v after %d calls, want success on the third", err, calls)
		case !idempotent && (!errors.As(err, &unknown) || unknown.Attempts != 2 || calls != 2):
			t.Errorf("err = %v after %d calls, want *CommitUnknownError at attempt 2", err, calls)
		}
	}
}
