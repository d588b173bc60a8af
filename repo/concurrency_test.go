package repo_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

const (
	workers    = 16
	increments = 200
)

// TestLostUpdateModify: 16 goroutines each add 1 to one counter 200 times through Modify. Every goroutine's
// first read happens before any write (a barrier), so at least 15 of the first writes conflict and are
// retried. The final balance is exactly the number of successful calls, which is all of them.
func TestLostUpdateModify(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := pool.Exec(ctx, "UPDATE accounts SET balance = 0"); err != nil {
		t.Fatal(err)
	}
	first := pgtest.NewBarrier(workers)
	var successes, retries atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range increments {
				waited := false
				_, err := accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(ctx context.Context, a *Account) error {
					if i == 0 && !waited {
						waited = true
						first.Wait(ctx)
					}
					a.Balance++
					return nil
				},
					txn.WithMaxAttempts(txn.UnlimitedAttempts),
					txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 20 * time.Millisecond}),
					txn.OnRetry(func(int, error, time.Duration) { retries.Add(1) }))
				if err != nil {
					errs[w] = err
					return
				}
				successes.Add(1)
			}
		})
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", w, err)
		}
	}
	final := mustGet(t, accounts, pool, int64(1))
	if final.Balance != successes.Load() || successes.Load() != workers*increments {
		t.Fatalf("balance %d after %d successful increments, want %d", final.Balance, successes.Load(), workers*increments)
	}
	if final.Version != workers*increments+1 {
		t.Fatalf("version %d, want %d", final.Version, workers*increments+1)
	}
	if retries.Load() < workers-1 {
		t.Fatalf("%d retries, want at least %d: the barrier should force conflicts", retries.Load(), workers-1)
	}
	t.Logf("%d increments, %d retries", successes.Load(), retries.Load())
}

// TestLostUpdateNaive is the same workload written as read-then-write without a version: it loses updates,
// which shows that TestLostUpdateModify can fail. The first round reads through the same barrier, so at
// least 15 of its 16 writes are lost whatever the scheduling.
func TestLostUpdateNaive(t *testing.T) {
	t.Parallel()
	_, pool, _ := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := pool.Exec(ctx, "UPDATE accounts SET balance = 0"); err != nil {
		t.Fatal(err)
	}
	first := pgtest.NewBarrier(workers)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range increments {
				var balance int64
				if err := pool.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = 1").Scan(&balance); err != nil {
					errs[w] = err
					return
				}
				if i == 0 {
					first.Wait(ctx)
				}
				if _, err := pool.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = 1", balance+1); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", w, err)
		}
	}
	final := queryInt(t, pool, "SELECT balance FROM accounts WHERE id = 1")
	if final > workers*increments-(workers-1) {
		t.Fatalf("balance %d after %d naive increments: expected at least %d lost updates", final, workers*increments, workers-1)
	}
	t.Logf("naive read-then-write: %d of %d increments lost", workers*increments-final, workers*increments)
}

// TestConflictReportsCommittedVersion: under READ COMMITTED an Update that waits for a concurrent update of
// its row and then finds it changed reports the version that transaction committed, although the Update's
// snapshot predates it.
func TestConflictReportsCommittedVersion(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()
	mine := mustGet(t, accounts, pool, int64(1))

	other := beginTx(t, pool)
	if _, err := other.Exec(ctx, "UPDATE accounts SET balance = 7, version = 8 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		mine.Balance = 1
		done <- accounts.Update(ctx, pool, &mine)
	}()
	awaitLockWait(t, pool, 1)
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wantConflict(t, <-done, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 1, Actual: 8})
}

// TestConflictWaitsForWriter: with a stale version the UPDATE writes nothing at once, and the follow-up read
// waits for a transaction updating or deleting the row, so the conflict reports what it committed, not the
// version of the statement's snapshot.
func TestConflictWaitsForWriter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		write string
		want  pgcc.ConflictError
	}{
		{"update", "UPDATE accounts SET version = 9 WHERE id = 1", pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 5, Actual: 9}},
		{"delete", "DELETE FROM accounts WHERE id = 1", pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 5, Deleted: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, pool, accounts := setup(t, 1)
			ctx := context.Background()
			mine := mustGet(t, accounts, pool, int64(1))
			mine.Version = 5 // stale, so the UPDATE writes nothing without waiting

			other := beginTx(t, pool)
			if _, err := other.Exec(ctx, tc.write); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- accounts.Update(ctx, pool, &mine) }()
			awaitLockWait(t, pool, 1) // the FOR SHARE read waits for the writer
			if err := other.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			wantConflict(t, <-done, tc.want)
		})
	}
}

// TestReplacedRowIsRewritten: another transaction deletes the row and inserts it again at the same version
// while the Update waits for it. The UPDATE, whose snapshot cannot see the new row, writes nothing; the
// follow-up read finds the row at the expected version, and Update writes again, successfully. A caller's own
// statement checked with Check gets the conflict with Actual equal to Expected.
func TestReplacedRowIsRewritten(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()
	replace := func() pgx.Tx {
		other := beginTx(t, pool)
		version := mustGet(t, accounts, pool, int64(1)).Version
		if _, err := other.Exec(ctx, "DELETE FROM accounts WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Exec(ctx, "INSERT INTO accounts VALUES (1, 'replaced', 500, $1)", version); err != nil {
			t.Fatal(err)
		}
		return other
	}

	mine := mustGet(t, accounts, pool, int64(1))
	other := replace()
	done := make(chan error, 1)
	go func() {
		mine.Owner = "mine"
		done <- accounts.Update(ctx, pool, &mine)
	}()
	awaitLockWait(t, pool, 1)
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Update of a row replaced at the same version: %v", err)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Owner != "mine" || got.Balance != 100 || got.Version != 2 || mine.Version != 2 {
		t.Fatalf("stored %+v, row %+v; want the caller's write at version 2", got, mine)
	}

	other = replace()
	tags := make(chan error, 1)
	go func() {
		tag, err := pool.Exec(ctx, "UPDATE accounts SET owner = 'sqlc' WHERE id = 1 AND version = 2")
		if err == nil {
			err = accounts.Check(ctx, pool, tag, pgcc.Key{int64(1)}, 2)
		}
		tags <- err
	}()
	awaitLockWait(t, pool, 1)
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wantConflict(t, <-tags, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpCheck, Key: pgcc.Key{int64(1)}, Expected: 2, Actual: 2})
}

// TestRepeatableReadStaleSnapshot: inside a REPEATABLE READ transaction whose snapshot predates the row's
// current version, Update with that current version finds nothing to write in its snapshot. The follow-up
// read does not report the snapshot's stale version: PostgreSQL raises a serialization failure, which
// txn.Run retries with a fresh snapshot, where the write succeeds.
func TestRepeatableReadStaleSnapshot(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()
	attempts := 0
	var firstErr error
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		attempts++
		if _, err := tx.Exec(ctx, "SELECT 1 FROM accounts"); err != nil { // takes the snapshot
			return err
		}
		if attempts == 1 {
			if _, err := pool.Exec(ctx, "UPDATE accounts SET version = 2 WHERE id = 1"); err != nil {
				return err
			}
		}
		row := Account{ID: 1, Owner: "from If-Match", Balance: 1, Version: 2} // the version the client saw
		err := accounts.Update(ctx, tx, &row)
		if attempts == 1 {
			firstErr = err
		}
		return err
	}, txn.WithIsolation(pgx.RepeatableRead))
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || pgCode(firstErr) != pgerrcode.SerializationFailure || errors.Is(firstErr, pgcc.ErrConflict) {
		t.Fatalf("%d attempts, first error %v; want a serialization failure, then success", attempts, firstErr)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Owner != "from If-Match" || got.Version != 3 {
		t.Fatalf("stored %+v", got)
	}
}

// TestHandles runs the same sequence on a pool, a single connection, a pool inside txn.Run and sqlc's DBTX.
func TestHandles(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, seq func(pgcc.DBTX) error) error
	}{
		{"pool", func(t *testing.T, seq func(pgcc.DBTX) error) error {
			_, pool, _ := setup(t, 0)
			return seq(pool)
		}},
		{"conn", func(t *testing.T, seq func(pgcc.DBTX) error) error {
			db, _, _ := setup(t, 0)
			return seq(db.Conn(t))
		}},
		{"txn.Run", func(t *testing.T, seq func(pgcc.DBTX) error) error {
			_, pool, _ := setup(t, 0)
			return txn.Run(context.Background(), pool, func(ctx context.Context, tx pgx.Tx) error { return seq(tx) })
		}},
		{"DBTX only", func(t *testing.T, seq func(pgcc.DBTX) error) error {
			_, pool, _ := setup(t, 0)
			return seq(onlyDBTX{pool})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			accounts, err := repo.NewTable[Account]("accounts")
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			err = tc.run(t, func(db pgcc.DBTX) error {
				a := Account{ID: 1, Owner: "a", Balance: 1}
				if err := accounts.Insert(ctx, db, &a); err != nil {
					return err
				}
				stale := a
				a.Balance = 2
				if err := accounts.Update(ctx, db, &a); err != nil {
					return err
				}
				var ce *pgcc.ConflictError
				if err := accounts.Update(ctx, db, &stale); !errors.As(err, &ce) || ce.Actual != 2 {
					t.Errorf("stale Update: %v", err)
				}
				got, err := accounts.Modify(ctx, db, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error {
					a.Balance *= 10
					return nil
				})
				if err != nil {
					return err
				}
				if got.Balance != 20 || got.Version != 3 {
					t.Errorf("Modify returned %+v", got)
				}
				if err := accounts.Delete(ctx, db, &got); err != nil {
					return err
				}
				_, err = accounts.Get(ctx, db, pgcc.Key{int64(1)})
				if !errors.Is(err, pgcc.ErrNotFound) {
					t.Errorf("Get after Delete: %v", err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestModifyConflictInTx: inside a READ COMMITTED transaction Modify retries a conflict itself, since the
// failed UPDATE leaves the transaction usable and the next read sees the newer row.
func TestModifyConflictInTx(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()
	calls := 0
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := accounts.Modify(ctx, tx, pgcc.Key{int64(1)}, func(ctx context.Context, a *Account) error {
			calls++
			if calls == 1 { // someone else commits between our read and our write
				if _, err := pool.Exec(ctx, "UPDATE accounts SET balance = balance + 1000, version = version + 1 WHERE id = 1"); err != nil {
					return err
				}
			}
			a.Balance++
			return nil
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, accounts, pool, int64(1)); calls != 2 || got.Balance != 1101 || got.Version != 3 {
		t.Fatalf("%d calls, stored %+v; want 2 calls and balance 1101 at version 3", calls, got)
	}
}

func TestModifyErrors(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()
	errMine := errors.New("insufficient funds")

	_, err := accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(context.Context, *Account) error { return errMine })
	if err != errMine {
		t.Fatalf("fn's error came back as %v, want it unchanged", err)
	}
	_, err = accounts.Modify(ctx, pool, pgcc.Key{int64(404)}, func(context.Context, *Account) error { return nil })
	if !errors.Is(err, pgcc.ErrNotFound) {
		t.Fatalf("Modify of a missing row: %v, want ErrNotFound", err)
	}
	_, err = accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(context.Context, *Account) error { return nil }, txn.WithMaxAttempts(3), txn.WithIsolation(pgx.Serializable))
	want := `pgcc: invalid argument: Modify of "accounts": txn.WithIsolation sets up a transaction, and Modify runs none of its own; call Modify inside txn.Run(…, txn.WithIsolation(…)) and pass it the pgx.Tx`
	if !errors.Is(err, pgcc.ErrInvalidArgument) || err.Error() != want {
		t.Fatalf("Modify with a transaction option: %v, want ErrInvalidArgument reading\n%s", err, want)
	}
	for _, o := range []txn.Option{txn.ReadOnly(), txn.WithLockTimeout(time.Second), txn.WithStatementTimeout(time.Second), txn.Deferrable()} {
		_, err = accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(context.Context, *Account) error { return nil }, o)
		if !errors.Is(err, pgcc.ErrInvalidArgument) || !strings.Contains(err.Error(), "sets up a transaction, and Modify runs none") || strings.Contains(err.Error(), "Retry") {
			t.Errorf("Modify with a transaction option: %v", err)
		}
	}
	_, err = accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(context.Context, *Account) error { return nil }, txn.WithMaxAttempts(0))
	if !errors.Is(err, pgcc.ErrInvalidArgument) || !strings.Contains(err.Error(), "max attempts must be at least 1, got 0") || strings.Count(err.Error(), "pgcc:") != 1 {
		t.Fatalf("Modify with zero attempts: %v", err)
	}
	if _, err := accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, nil); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("Modify with a nil function: %v", err)
	}

	// Someone else writes between every read and write: attempts run out, and the error still says conflict.
	calls := 0
	_, err = accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(ctx context.Context, a *Account) error {
		calls++
		_, err := pool.Exec(ctx, "UPDATE accounts SET version = version + 1 WHERE id = 1")
		return err
	}, txn.WithMaxAttempts(3), txn.WithBackoff(txn.Backoff{Base: time.Millisecond}))
	var exhausted *pgcc.RetriesExhaustedError
	if !errors.As(err, &exhausted) || exhausted.Attempts != 3 || calls != 3 || !errors.Is(err, pgcc.ErrConflict) {
		t.Fatalf("Modify against a constant writer: %v after %d calls", err, calls)
	}
	wantConflict(t, exhausted.Err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 3, Actual: 4})
}

// TestModifyConflictRoundTrips: one conflict costs Modify one read, which serves both as the actual version
// the retry hook sees and as the next attempt's starting point: read, write (no row), read, write.
func TestModifyConflictRoundTrips(t *testing.T) {
	t.Parallel()
	tracer := &statementLog{}
	_, pool, accounts := setup(t, 1, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	ctx := context.Background()
	calls := 0
	var seen *pgcc.ConflictError
	_, err := accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(ctx context.Context, a *Account) error {
		calls++
		if calls == 1 {
			// Someone else commits between our read and our write, twice, so the version moves from 1 to 3.
			for range 2 {
				if _, err := pool.Exec(ctx, "UPDATE accounts SET version = version + 1 WHERE id = 1"); err != nil {
					return err
				}
			}
			tracer.reset()
		}
		a.Balance++
		return nil
	}, txn.OnRetry(func(_ int, err error, _ time.Duration) { errors.As(err, &seen) }))
	if err != nil {
		t.Fatal(err)
	}
	if seen == nil || seen.Expected != 1 || seen.Actual != 3 || seen.Deleted {
		t.Fatalf("retry hook saw %+v, want expected 1, actual 3", seen)
	}
	if got := tracer.statements(); len(got) != 3 {
		// After the reset: the failed UPDATE, the read after it, the UPDATE that lands.
		t.Fatalf("statements after the first read = %q, want UPDATE, SELECT, UPDATE", got)
	}
	if got := mustGet(t, accounts, pool, int64(1)); calls != 2 || got.Balance != 101 || got.Version != 4 {
		t.Fatalf("%d calls, stored %+v; want 2 calls and balance 101 at version 4", calls, got)
	}
}

// statementLog records the first word of every statement its pool sends.
type statementLog struct {
	mu  sync.Mutex
	log []string
}

func (s *statementLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, strings.Fields(d.SQL)[0])
	return ctx
}

func (s *statementLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (s *statementLog) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = nil
}

func (s *statementLog) statements() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}
