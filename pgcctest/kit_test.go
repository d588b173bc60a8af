package pgcctest_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/schema"
	"github.com/pgcc/pgcc/internal/testdb"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/pgcctest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// serviceSchema is the "service's own" schema the tests apply to the template with pgcctest.SQL.
const serviceSchema = `
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL, version bigint NOT NULL);
INSERT INTO accounts VALUES (1, 'ada', 100, 1), (2, 'bob', 50, 1);`

func TestMain(m *testing.M) {
	pgcctest.Main(m, pgcctest.SQL(serviceSchema))
}

type Account struct {
	ID      int64  `db:"id"`
	Owner   string `db:"owner"`
	Balance int64  `db:"balance"`
	Version int64  `db:"version"`
}

var accounts = mustTable()

func mustTable() *repo.Table[Account] {
	t, err := repo.NewTable[Account]("accounts")
	if err != nil {
		panic(err)
	}
	return t
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func balance(t *testing.T, p *pgcctest.FaultPool, id int64) int64 {
	t.Helper()
	var b int64
	if err := p.Direct().QueryRow(context.Background(), "SELECT balance FROM accounts WHERE id = $1", id).Scan(&b); err != nil {
		t.Fatal(err)
	}
	return b
}

// deposit is the "service code" under test: one transaction of two statements.
func deposit(ctx context.Context, db pgcc.Beginner, id, amount int64, attempts *atomic.Int32, opts ...txn.Option) error {
	return txn.Run(ctx, db, func(ctx context.Context, tx pgx.Tx) error {
		attempts.Add(1)
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, id); err != nil {
			return err
		}
		var b int64
		return tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1", id).Scan(&b)
	}, opts...)
}

func TestDatabasePerTest(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	var name string
	t.Run("own", func(t *testing.T) {
		db := pgcctest.NewDB(t)
		name = db.Name
		pool := db.Pool(t)
		if _, err := pool.Exec(ctx, "UPDATE accounts SET balance = 0"); err != nil {
			t.Fatal(err)
		}
		// pgcc's schema is in the template too, at the latest version, recorded as golang-migrate records it.
		latest, err := schema.Latest()
		if err != nil {
			t.Fatal(err)
		}
		var version int64
		var dirty bool
		if err := pool.QueryRow(ctx, "SELECT version, dirty FROM pgcc.schema_migrations").Scan(&version, &dirty); err != nil ||
			version != int64(latest) || dirty {
			t.Fatalf("pgcc.schema_migrations: version %d, dirty %v, %v; want %d, clean", version, dirty, err, latest)
		}
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM pgcc.idempotency_keys").Scan(&n); err != nil {
			t.Fatal(err)
		}
		conn := db.Conn(t)
		var b int64
		if err := conn.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = 1").Scan(&b); err != nil || b != 0 {
			t.Fatalf("balance = %d, %v", b, err)
		}
	})
	// The other test's write is not visible here, and its database is gone.
	pool := pgcctest.Pool(t)
	var b int64
	if err := pool.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = 1").Scan(&b); err != nil || b != 100 {
		t.Fatalf("balance in a fresh database = %d, %v; want 100", b, err)
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil || exists {
		t.Fatalf("database %s still exists after its test: %v, %v", name, exists, err)
	}
}

// TestPoolLeakReported checks that a connection kept acquired past the test's end fails the test.
func TestPoolLeakReported(t *testing.T) {
	t.Parallel()
	db := pgcctest.NewDB(t)
	rec := &recorder{TB: t}
	pool := db.Pool(rec)
	conn, err := pool.Acquire(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	rec.runCleanups(func() { conn.Release() })
	if len(rec.errors) != 1 {
		t.Fatalf("leak check reported %q, want one error", rec.errors)
	}
}

func TestFailStatementRetriedByRun(t *testing.T) {
	t.Parallel()
	for _, code := range []string{pgerrcode.SerializationFailure, pgerrcode.DeadlockDetected} {
		t.Run(code, func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t)
			p := pgcctest.NewDB(t).FaultPool(t)
			f := p.FailStatement(2, code, pgcctest.Times(2))
			var attempts atomic.Int32
			var seen []string
			err := deposit(ctx, p, 1, 10, &attempts, txn.OnRetry(func(_ int, err error, _ time.Duration) {
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) {
					seen = append(seen, pgErr.Code)
				}
			}))
			if err != nil {
				t.Fatal(err)
			}
			if attempts.Load() != 3 || f.Fired() != 2 || len(seen) != 2 || seen[0] != code || seen[1] != code {
				t.Fatalf("attempts %d, fired %d, retried on %v; want 3, 2, [%s %s]", attempts.Load(), f.Fired(), seen, code, code)
			}
			if b := balance(t, p, 1); b != 110 {
				t.Fatalf("balance %d, want 110 (applied once)", b)
			}
		})
	}
}

func TestFailStatementExhaustsRetries(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	p.FailStatement(1, pgerrcode.SerializationFailure, pgcctest.Always())
	var attempts atomic.Int32
	err := deposit(ctx, p, 1, 10, &attempts, txn.WithMaxAttempts(3))
	if !errors.Is(err, pgcc.ErrRetriesExhausted) || !errors.Is(err, pgcc.ErrSerialization) || attempts.Load() != 3 {
		t.Fatalf("err %v after %d attempts; want retries exhausted after 3", err, attempts.Load())
	}
	if s := pgcc.HTTPStatus(err); s != http.StatusConflict {
		t.Fatalf("HTTPStatus %d, want 409", s)
	}
	if b := balance(t, p, 1); b != 100 {
		t.Fatalf("balance %d, want 100", b)
	}
}

func TestFailStatementLockNotAvailable(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	// lock.XactLock's statement fails as a NOWAIT lock held by someone else would.
	p.FailStatement(1, pgerrcode.LockNotAvailable, pgcctest.Matching(pgcctest.HasPrefix("SELECT")))
	err := txn.Run(ctx, p, func(ctx context.Context, tx pgx.Tx) error {
		return lock.XactLock(ctx, tx, lock.StringKey("accounts", "nightly-totals"), lock.WithWait(lock.NoWait))
	})
	var pgErr *pgconn.PgError
	if !errors.Is(err, pgcc.ErrLockNotAvailable) || !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.LockNotAvailable {
		t.Fatalf("err %v; want ErrLockNotAvailable carrying the server's 55P03", err)
	}
	if s := pgcc.HTTPStatus(err); s != http.StatusLocked {
		t.Fatalf("HTTPStatus %d, want 423", s)
	}

	// With RetryLockNotAvailable, Run retries it.
	p.FailStatement(1, pgerrcode.LockNotAvailable)
	var attempts atomic.Int32
	if err := deposit(ctx, p, 1, 1, &attempts, txn.RetryLockNotAvailable()); err != nil || attempts.Load() != 2 {
		t.Fatalf("err %v after %d attempts; want nil after 2", err, attempts.Load())
	}
}

func TestFailCommit(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	f := p.FailCommit(pgerrcode.SerializationFailure, pgcctest.Times(2))
	var attempts atomic.Int32
	var seen []string
	err := deposit(ctx, p, 1, 10, &attempts, txn.WithIsolation(pgx.Serializable), txn.OnRetry(func(_ int, err error, _ time.Duration) {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			seen = append(seen, pgErr.Code+" "+pgErr.Message)
		}
	}))
	if err != nil || attempts.Load() != 3 || f.Fired() != 2 || len(seen) != 2 {
		t.Fatalf("err %v, attempts %d, fired %d, seen %q", err, attempts.Load(), f.Fired(), seen)
	}
	if seen[0] != "40001 pgcctest: injected SQLSTATE 40001 at COMMIT" {
		t.Fatalf("retried on %q", seen[0])
	}
	if b := balance(t, p, 1); b != 110 {
		t.Fatalf("balance %d, want 110: the failed COMMITs must not have applied anything", b)
	}

	// A deadlock at COMMIT, never retried by a caller that does not retry.
	p.FailCommit(pgerrcode.DeadlockDetected)
	err = deposit(ctx, p, 1, 10, &attempts, txn.WithMaxAttempts(1))
	if !errors.Is(err, pgcc.ErrDeadlock) {
		t.Fatalf("err %v, want ErrDeadlock", err)
	}
	if b := balance(t, p, 1); b != 110 {
		t.Fatalf("balance %d, want 110", b)
	}
}

func TestFailCommitReadOnly(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	p.FailCommit(pgerrcode.SerializationFailure)
	var calls int
	err := txn.Run(ctx, p, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		_, err := tx.Exec(ctx, "SELECT 1")
		return err
	}, txn.WithIsolation(pgx.Serializable), txn.ReadOnly())
	if err != nil || calls != 2 {
		t.Fatalf("err %v after %d calls; want nil after 2", err, calls)
	}
}

func TestLoseCommitReply(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)

	f := p.LoseCommitReply()
	var attempts atomic.Int32
	err := deposit(ctx, p, 1, 10, &attempts)
	var cu *pgcc.CommitUnknownError
	if !errors.Is(err, pgcc.ErrCommitUnknown) || !errors.As(err, &cu) || f.Fired() != 1 {
		t.Fatalf("err %v, fired %d; want a *pgcc.CommitUnknownError", err, f.Fired())
	}
	if s := pgcc.HTTPStatus(err); s != http.StatusInternalServerError {
		t.Fatalf("HTTPStatus %d, want 500", s)
	}
	if b := balance(t, p, 1); b != 110 {
		t.Fatalf("balance %d, want 110: the server committed", b)
	}

	// With an idempotency key, Run finds out that the attempt committed and returns nil.
	p.LoseCommitReply()
	attempts.Store(0)
	if err := deposit(ctx, p, 1, 10, &attempts, txn.WithIdempotencyKey("deposit-2")); err != nil || attempts.Load() != 1 {
		t.Fatalf("err %v after %d attempts; want nil after 1", err, attempts.Load())
	}
	if b := balance(t, p, 1); b != 120 {
		t.Fatalf("balance %d, want 120", b)
	}
}

func TestConflictOnceModify(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	f := pgcctest.ConflictOnce(p, accounts, pgcc.Key{int64(1)}, func(a *Account) { a.Balance += 1000 })
	var calls int
	got, err := accounts.Modify(ctx, p, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error {
		calls++
		a.Balance -= 30
		return nil
	})
	if err != nil || calls != 2 || f.Fired() != 1 {
		t.Fatalf("err %v, fn called %d times, fired %d; want nil, 2, 1", err, calls, f.Fired())
	}
	if got.Balance != 1070 || got.Version != 3 {
		t.Fatalf("row %+v; want balance 1070 (both writes) at version 3", got)
	}

	// Inside txn.Run, on the transaction: the same single retry of Modify's loop.
	pgcctest.ConflictOnce(p, accounts, pgcc.Key{int64(2)}, nil)
	calls = 0
	err = txn.Run(ctx, p, func(ctx context.Context, tx pgx.Tx) error {
		_, err := accounts.Modify(ctx, tx, pgcc.Key{int64(2)}, func(_ context.Context, a *Account) error {
			calls++
			a.Owner = "carol"
			return nil
		})
		return err
	})
	if err != nil || calls != 2 {
		t.Fatalf("err %v, fn called %d times; want nil, 2", err, calls)
	}
}

func TestConflictOnceUpdate(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	pgcctest.ConflictOnce(p, accounts, pgcc.Key{int64(1)}, func(a *Account) { a.Owner = "eve" })
	a, err := accounts.Get(ctx, p, pgcc.Key{int64(1)})
	if err != nil {
		t.Fatal(err)
	}
	a.Balance = 0
	err = accounts.Update(ctx, p, &a)
	var ce *pgcc.ConflictError
	if !errors.As(err, &ce) || ce.Actual != 2 {
		t.Fatalf("err %v; want a *pgcc.ConflictError finding version 2", err)
	}
	if s := pgcc.HTTPStatus(err); s != http.StatusPreconditionFailed {
		t.Fatalf("HTTPStatus %d, want 412", s)
	}
	if b := balance(t, p, 1); b != 100 {
		t.Fatalf("balance %d, want 100: the stale write must not land", b)
	}
}

func TestHookErrorReported(t *testing.T) {
	t.Parallel()
	db := pgcctest.NewDB(t)
	rec := &recorder{TB: t}
	p := db.FaultPool(rec)
	pgcctest.ConflictOnce(p, accounts, pgcc.Key{int64(99)}, nil) // no such row
	if _, err := accounts.Get(ctxFor(t), p, pgcc.Key{int64(1)}); err != nil {
		t.Fatal(err)
	}
	if err := p.HookErr(); !errors.Is(err, pgcc.ErrNotFound) {
		t.Fatalf("HookErr %v, want the hook's ErrNotFound", err)
	}
	rec.runCleanups(nil)
	if len(rec.errors) != 1 {
		t.Fatalf("cleanup reported %q, want the hook's error", rec.errors)
	}
}

// recorder is a testing.TB whose cleanups run when the test says and whose errors are recorded, for tests of
// what the kit reports when a test ends.
type recorder struct {
	testing.TB
	cleanups []func()
	errors   []string
}

func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// runCleanups runs the cleanups, last first. release, when not nil, runs in the background once the leak
// check's grace (5 s) is over, since closing a pool waits for its connections.
func (r *recorder) runCleanups(release func()) {
	if release != nil {
		time.AfterFunc(testdb.LeakGrace+time.Second, release) // past the leak check's grace
	}
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// An autocommitted repo write whose answer is lost: the write happened, and repo says the outcome is unknown.
func TestLoseReplyRepoUpdate(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	a, err := accounts.Get(ctx, p, pgcc.Key{int64(1)})
	if err != nil {
		t.Fatal(err)
	}
	f := p.LoseReply(pgcctest.HasPrefix("UPDATE"))
	a.Balance = 7
	err = accounts.Update(ctx, p, &a)
	if !errors.Is(err, pgcc.ErrCommitUnknown) || f.Fired() != 1 || a.Version != 1 {
		t.Fatalf("err %v, fired %d, version %d; want ErrCommitUnknown, 1, unchanged 1", err, f.Fired(), a.Version)
	}
	if b := balance(t, p, 1); b != 7 {
		t.Fatalf("balance %d, want 7: the server applied the write", b)
	}
}

// A serialization failure injected into Modify's write on the pool: Modify retries it as it retries a real one.
func TestFailStatementRepoModify(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	f := p.FailStatement(1, pgerrcode.SerializationFailure, pgcctest.Matching(pgcctest.HasPrefix("UPDATE")))
	calls := 0
	got, err := accounts.Modify(ctx, p, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error {
		calls++
		a.Balance++
		return nil
	})
	if err != nil || calls != 2 || f.Fired() != 1 || got.Balance != 101 || got.Version != 2 {
		t.Fatalf("err %v, calls %d, fired %d, row %+v; want nil, 2, 1, balance 101 at version 2", err, calls, f.Fired(), got)
	}
}

// A fault that is removed before it is reached never fires.
func TestFaultRemove(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	f := p.FailStatement(1, pgerrcode.SerializationFailure)
	c := p.FailCommit(pgerrcode.SerializationFailure)
	l := p.LoseCommitReply()
	f.Remove()
	c.Remove()
	l.Remove()
	var attempts atomic.Int32
	if err := deposit(ctx, p, 1, 1, &attempts); err != nil || attempts.Load() != 1 || f.Fired()+c.Fired()+l.Fired() != 0 {
		t.Fatalf("err %v after %d attempts, fired %d %d %d", err, attempts.Load(), f.Fired(), c.Fired(), l.Fired())
	}
}

// Faults armed with Times(n) fire n times in all across concurrent transactions, each transaction's retry
// absorbs them, and every deposit lands once.
func TestFaultsUnderConcurrency(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	p := pgcctest.NewDB(t).FaultPool(t)
	c := p.FailCommit(pgerrcode.SerializationFailure, pgcctest.Times(3))
	s := p.FailStatement(2, pgerrcode.DeadlockDetected, pgcctest.Times(3))
	const workers, each = 4, 5
	var attempts atomic.Int32
	errs := make(chan error, workers)
	for range workers {
		go func() {
			var err error
			for range each {
				if err = deposit(ctx, p, 2, 1, &attempts); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if c.Fired() != 3 || s.Fired() != 3 || attempts.Load() != workers*each+6 {
		t.Fatalf("fired %d at COMMIT and %d at statement 2, %d attempts; want 3, 3, %d", c.Fired(), s.Fired(), attempts.Load(), workers*each+6)
	}
	if b := balance(t, p, 2); b != 50+workers*each {
		t.Fatalf("balance %d, want %d", b, 50+workers*each)
	}
}

// Start and CreateDB work without a testing.TB; WithoutPgccSchema leaves pgcc's tables out of the template,
// and Close drops it.
func TestStartWithoutPgccSchema(t *testing.T) {
	t.Parallel()
	// Start's own bound (two minutes) and then CreateDB's: two CREATE DATABASE, each a checkpoint, took past
	// a minute on a machine running the suite -count=5 beside two fault runs.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	admin := pgcctest.Pool(t) // any database of the same server, to look at pg_database from
	srv, err := pgcctest.Start(ctx, pgcctest.WithoutPgccSchema(), pgcctest.SQL("CREATE TABLE t (x int)"))
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	if err != nil {
		t.Skip(err)
	}
	db, err := srv.CreateDB(ctx)
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	conn := db.Conn(t)
	var pgccSchema, table bool
	err = conn.QueryRow(ctx, "SELECT to_regnamespace('pgcc') IS NOT NULL, to_regclass('t') IS NOT NULL").Scan(&pgccSchema, &table)
	if err != nil || pgccSchema || !table {
		t.Errorf("pgcc schema %v, table t %v, %v; want false, true", pgccSchema, table, err)
	}
	_ = conn.Close(ctx)
	if err := db.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	template := srv.Template()
	srv.Close()
	var left int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = ANY($1)",
		[]string{db.Name, template}).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d of the test's databases left, %v", left, err)
	}
}
