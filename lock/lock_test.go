package lock_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	"github.com/pgcc/pgcc/internal/lockwait"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/txn"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// table is the smallest lock.Table: constants.
type table struct {
	name pgx.Identifier
	keys []string
	cols []string
}

func (t table) Identifier() pgx.Identifier { return t.name }
func (t table) KeyColumns() []string       { return t.keys }
func (t table) SelectColumns() []string    { return t.cols }

var _ lock.Table = table{}

// plainItems is the items table as a hand-written lock.Table (no row type: Rows and Row only).
func plainItems() table {
	return table{name: pgx.Identifier{"items"}, keys: []string{"id"}, cols: []string{"id", "n"}}
}

func itemsTable() *lock.TableDef[item] { return must(lock.NewTable[item]("items")) }

func pairsTable() *lock.TableDef[pair] {
	return must(lock.NewTable[pair]("pairs", lock.WithKey("a", "b")))
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

type item struct {
	ID int32
	N  int64
}

type pair struct {
	A string
	B int32
	N int64
}

// setup returns a pool on a fresh database with items 1..n (n = 0 each) and a few pairs.
func setup(t *testing.T, n int, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	pool := pgtest.NewDB(t).Pool(t, configure...)
	createItems(t, pool, n)
	return pool
}

// createItems creates the tables of setup through pool.
func createItems(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `
		CREATE TABLE items (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
		CREATE TABLE pairs (a text, b int, n bigint NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
		INSERT INTO pairs VALUES ('a', 1), ('a', 2), ('b', 1)`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), "INSERT INTO items SELECT g FROM generate_series(1, $1) g", n); err != nil {
		t.Fatal(err)
	}
}

// holdRow begins a transaction on its own connection and locks items row id FOR UPDATE in it, with plain pgx.
// It returns the transaction and its backend pid; the transaction is rolled back when the test ends.
func holdRow(t *testing.T, pool *pgxpool.Pool, id int) (pgx.Tx, int) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(ctx, "SELECT id FROM items WHERE id = $1 FOR UPDATE", id); err != nil {
		t.Fatal(err)
	}
	return tx, int(tx.Conn().PgConn().PID())
}

// awaitWaiting polls pg_stat_activity until the backend pid waits for a lock.
//
// When it fails it first ends the statement the test's goroutine sent on that backend (pg_terminate_backend)
// and calls stop, which must wait for that goroutine to return: t.Fatal runs the test's deferred calls
// (a Rollback, a Release) on the same connection, and the goroutine must no longer be using it.
func awaitWaiting(t *testing.T, pool *pgxpool.Pool, pid uint32, stop func()) {
	t.Helper()
	err := awaitLockWait(context.Background(), pool, pid)
	if err == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, termErr := pool.Exec(ctx, "SELECT pg_terminate_backend($1)", int64(pid)); termErr != nil {
		t.Logf("terminating backend %d: %v", pid, termErr)
	}
	stop()
	t.Fatal(err)
}

// awaitLockWait is awaitWaiting for goroutines other than the test's, which must not call t.Fatal: it
// returns an error when backend pid has not waited for a lock within 30 seconds (or ctx's end): a statement
// can take more than 10 s to reach its lock on a machine loaded with fault suites.
func awaitLockWait(ctx context.Context, pool *pgxpool.Pool, pid uint32) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var waiting bool
		err := pool.QueryRow(ctx,
			"SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock')", int64(pid)).Scan(&waiting)
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("backend %d never waited for a lock: %w", pid, ctx.Err())
		case err != nil:
			return err
		case waiting:
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func lockError(t *testing.T, err error) *pgcc.LockError {
	t.Helper()
	var le *pgcc.LockError
	if !errors.As(err, &le) {
		t.Fatalf("error %v (%T) is not a *pgcc.LockError", err, err)
	}
	return le
}

// checkBlockers checks that le names the backends pids, in that order, as the sessions holding the lock,
// with no diagnostics error. The look-up behind WithDiagnostics is bounded to two seconds; on a loaded machine
// it can run out, which leaves Blockers empty and DiagnosticsErr matching context.DeadlineExceeded, the
// documented outcome: checkBlockers logs it and accepts it. Empty blockers with any other DiagnosticsErr, or
// with none, fail as before. It reports whether the blockers were found, so a caller can check them further.
func checkBlockers(t *testing.T, le *pgcc.LockError, pids ...int) bool {
	t.Helper()
	if len(le.Blockers) == 0 && errors.Is(le.DiagnosticsErr, context.DeadlineExceeded) {
		t.Logf("the blockers' look-up ran out of its two seconds (%v): blockers not checked", le.DiagnosticsErr)
		return false
	}
	got := make([]int, len(le.Blockers))
	for i, b := range le.Blockers {
		got[i] = b.PID
	}
	if le.DiagnosticsErr != nil || !slices.Equal(got, pids) {
		t.Errorf("blockers = %v (pids %v, diagnostics: %v), want pids %v", le.Blockers, got, le.DiagnosticsErr, pids)
		return false
	}
	return true
}

func queryInt(t *testing.T, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// inTx runs fn in a transaction on its own connection and rolls back.
func inTx(t *testing.T, pool *pgxpool.Pool, fn func(tx pgx.Tx)) {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	fn(tx)
}

func TestRowsLockInKeyOrder(t *testing.T) {
	t.Parallel()
	pool := setup(t, 5)
	ctx := context.Background()
	inTx(t, pool, func(tx pgx.Tx) {
		got, err := lock.Rows(ctx, tx, plainItems(), []pgcc.Key{{3}, {1}, {99}, {2}}, lock.AllowMissing())
		if err != nil {
			t.Fatal(err)
		}
		if want := "[(3) (1) (2)]"; fmt.Sprint(got) != want {
			t.Errorf("locked keys = %v, want %s (in the order asked, the missing 99 left out)", got, want)
		}
		// The rows are really locked: another session cannot take them with NOWAIT.
		other, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = other.Rollback(ctx) }()
		_, err = other.Exec(ctx, "SELECT FROM items WHERE id = 2 FOR UPDATE NOWAIT")
		if pgCode(err) != pgerrcode.LockNotAvailable {
			t.Errorf("row 2 not locked: %v", err)
		}
	})
	inTx(t, pool, func(tx pgx.Tx) {
		got, err := lock.Rows(ctx, tx, pairsTable(), []pgcc.Key{{"b", 1}, {"a", 2}, {"a", 1}}, lock.WithStrength(lock.ForNoKeyUpdate))
		if err != nil {
			t.Fatal(err)
		}
		if want := `[("b", 1) ("a", 2) ("a", 1)]`; fmt.Sprint(got) != want {
			t.Errorf("locked pairs = %v, want %s", got, want)
		}
		got, err = lock.Rows(ctx, tx, itemsTable(), nil)
		if err != nil || len(got) != 0 {
			t.Errorf("no keys: %v, %v", got, err)
		}
	})
}

func TestLoadAndRow(t *testing.T) {
	t.Parallel()
	pool := setup(t, 3)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "UPDATE items SET n = id * 10"); err != nil {
		t.Fatal(err)
	}
	inTx(t, pool, func(tx pgx.Tx) {
		got, err := lock.Load[item](ctx, tx, itemsTable(), []pgcc.Key{{3}, {1}}, lock.WithStrength(lock.ForShare))
		if err != nil {
			t.Fatal(err)
		}
		if want := []item{{3, 30}, {1, 10}}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("Load = %v, want %v (in the order asked)", got, want)
		}
		pairs, err := lock.Load[pair](ctx, tx, pairsTable(), []pgcc.Key{{"a", 2}})
		if err != nil || len(pairs) != 1 || pairs[0].A != "a" || pairs[0].B != 2 {
			t.Errorf("Load pairs = %v, %v", pairs, err)
		}
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{2}); err != nil {
			t.Errorf("Row 2: %v", err)
		}
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{42}); !errors.Is(err, pgcc.ErrNotFound) {
			t.Errorf("Row 42 = %v, want ErrNotFound", err)
		}
	})
}

func TestInvalidOptionsSendNothing(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	inTx(t, pool, func(tx pgx.Tx) {
		for name, err := range map[string]error{
			"strength":           lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithStrength(lock.Strength(9))),
			"wait":               lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithWait(lock.WaitPolicy(7))),
			"timeout":            lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithTimeout(0)),
			"nil option":         lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, nil),
			"where on row":       lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.Where("true")),
			"key arity":          lock.Row(ctx, tx, pairsTable(), pgcc.Key{"a"}),
			"advisory key share": lock.XactLock(ctx, tx, 1, lock.WithStrength(lock.ForKeyShare)),
			"advisory skip":      lock.XactLock(ctx, tx, 1, lock.WithWait(lock.SkipLocked)),
		} {
			if !errors.Is(err, pgcc.ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
			}
		}
		_, err := lock.Claim[item](ctx, tx, itemsTable(), 10, lock.WithWait(lock.NoWait))
		if !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("Claim with NoWait: %v", err)
		}
		_, err = lock.Claim[item](ctx, tx, itemsTable(), 0)
		if !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("Claim with limit 0: %v", err)
		}
		// The transaction is still usable: nothing was sent.
		if n := queryInt(t, tx, "SELECT 1"); n != 1 {
			t.Error("transaction unusable")
		}
	})
}

func TestContextAlreadyDoneSendsNothing(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	inTx(t, pool, func(tx pgx.Tx) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithDiagnostics(pool))
		if !errors.Is(err, context.Canceled) || errors.Is(err, pgcc.ErrLockNotAvailable) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if le := lockError(t, err); le.Err != nil || le.Blockers != nil || le.Table != `"items"` {
			t.Errorf("LockError = %+v", le)
		}
		dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer dcancel()
		if err := lock.XactLock(dctx, tx, 1); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("expired deadline: %v", err)
		}
		// Nothing was sent: the transaction is not aborted.
		if n := queryInt(t, tx, "SELECT 1"); n != 1 {
			t.Error("transaction unusable")
		}
	})
}

func TestNoWaitFailsFastWithBlockers(t *testing.T) {
	t.Parallel()
	pool := setup(t, 2)
	ctx := context.Background()
	_, holder := holdRow(t, pool, 1)
	inTx(t, pool, func(tx pgx.Tx) {
		start := time.Now()
		err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool))
		elapsed := time.Since(start)
		if !errors.Is(err, pgcc.ErrLockNotAvailable) || errors.Is(err, pgcc.ErrDeadlock) {
			t.Fatalf("err = %v, want ErrLockNotAvailable", err)
		}
		if pgCode(err) != pgerrcode.LockNotAvailable {
			t.Errorf("SQLSTATE = %q, want 55P03", pgCode(err))
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("NOWAIT failure reported as a context error: %v", err)
		}
		if elapsed > 2*time.Second {
			t.Errorf("NOWAIT took %v", elapsed)
		}
		le := lockError(t, err)
		if le.Table != `"items"` || fmt.Sprint(le.Keys) != "[(1)]" {
			t.Errorf("LockError names %s %v, want \"items\" [(1)]", le.Table, le.Keys)
		}
		if !checkBlockers(t, le, holder) {
			return
		}
		b := le.Blockers[0]
		if b.PID != holder || b.Application != "pgcc-test" || b.State != "idle in transaction" ||
			!strings.Contains(b.Query, "FOR UPDATE") || b.HeldFor <= 0 || b.XactStart.IsZero() {
			t.Errorf("blocker = %+v, want pid %d, pgcc-test, idle in transaction, its FOR UPDATE query", b, holder)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("pid %d", holder)) {
			t.Errorf("message does not name the blocker: %v", err)
		}
	})
	// Row 2 is free: NOWAIT takes it.
	inTx(t, pool, func(tx pgx.Tx) {
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{2}, lock.WithWait(lock.NoWait)); err != nil {
			t.Errorf("free row: %v", err)
		}
	})
}

func TestLockTimeout(t *testing.T) {
	t.Parallel()
	pool := setup(t, 2)
	ctx := context.Background()
	holdRow(t, pool, 1)
	inTx(t, pool, func(tx pgx.Tx) {
		start := time.Now()
		_, err := lock.Rows(ctx, tx, itemsTable(), []pgcc.Key{{2}, {1}}, lock.WithTimeout(200*time.Millisecond))
		elapsed := time.Since(start)
		if !errors.Is(err, pgcc.ErrLockNotAvailable) || pgCode(err) != pgerrcode.LockNotAvailable {
			t.Fatalf("err = %v, want ErrLockNotAvailable from lock_timeout", err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("an explicit timeout reported as the context's deadline: %v", err)
		}
		if elapsed < 200*time.Millisecond || elapsed > 5*time.Second {
			t.Errorf("waited %v, want about 200ms", elapsed)
		}
	})
	// The timeout applies to the lock statement alone: the transaction's own setting is back afterwards.
	inTx(t, pool, func(tx pgx.Tx) {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '7s'"); err != nil {
			t.Fatal(err)
		}
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{2}, lock.WithTimeout(100*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		var setting string
		if err := tx.QueryRow(ctx, "SHOW lock_timeout").Scan(&setting); err != nil {
			t.Fatal(err)
		}
		if setting != "7s" {
			t.Errorf("lock_timeout after the call = %q, want the transaction's 7s", setting)
		}
	})
}

// checkConnHealthy rolls tx back and runs a query on the same pooled connection, which must still be the
// backend pid, then releases it; once the holder has rolled back too, the pool must have nothing acquired.
func checkConnHealthy(t *testing.T, pool *pgxpool.Pool, conn *pgxpool.Conn, tx, holder pgx.Tx, pid uint32) {
	t.Helper()
	ctx := context.Background()
	defer func() {
		conn.Release()
		if err := holder.Rollback(ctx); err != nil {
			t.Error(err)
		}
		if n := pool.Stat().AcquiredConns(); n != 0 {
			t.Errorf("pool has %d connections acquired after the call", n)
		}
	}()
	if err := tx.Rollback(ctx); err != nil {
		t.Errorf("rollback after the interrupted lock: %v", err)
		return
	}
	if n := queryInt(t, conn, "SELECT pg_backend_pid()"); uint32(n) != pid {
		t.Errorf("connection now on backend %d, want the same backend %d", n, pid)
	}
	if conn.Conn().IsClosed() {
		t.Error("connection closed")
	}
}

// TestContextDeadlineWhileBlocked: a lock wait under a 300ms deadline ends by the deadline, as the server's
// own lock_timeout (set a little before the deadline, so that the answer is back in time), and the
// connection stays usable. On a machine too loaded for the answer to arrive within lockwait.DeadlineGrace
// after the deadline the connection is closed instead (the promise is the bound, not the connection), so the
// test allows three attempts for one that keeps it.
func TestContextDeadlineWhileBlocked(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	holder, holderPID := holdRow(t, pool, 1)
	for attempt := 1; ; attempt++ {
		conn, err := pool.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		tx, err := conn.Begin(context.Background())
		if err != nil {
			conn.Release()
			t.Fatal(err)
		}
		pid := conn.Conn().PgConn().PID()

		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		err = lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithTimeout(time.Minute), lock.WithDiagnostics(pool))
		elapsed := time.Since(start)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			conn.Release()
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		t.Logf("deadline 300ms: returned after %v (%v)", elapsed, err)
		le := lockError(t, err)
		// The wait itself ends by the deadline; the diagnostics after it may take up to two seconds more (as
		// WithDiagnostics says), which on a loaded machine they do when they must open a connection.
		if le.Waited < 250*time.Millisecond || le.Waited > 300*time.Millisecond+lockwait.DeadlineGrace+200*time.Millisecond {
			t.Errorf("waited %v, want about 300ms", le.Waited)
		}
		if elapsed > 300*time.Millisecond+lockwait.DeadlineGrace+2*time.Second+200*time.Millisecond {
			t.Errorf("returned after %v, past the deadline, its grace and the diagnostics' two seconds", elapsed)
		}
		checkBlockers(t, le, holderPID)
		if conn.Conn().IsClosed() && attempt < 3 {
			t.Logf("attempt %d: the answer came too late and the connection was closed; again", attempt)
			conn.Release()
			continue
		}
		if !errors.Is(err, pgcc.ErrLockNotAvailable) || pgCode(err) != pgerrcode.LockNotAvailable {
			t.Errorf("err = %v, want the server's lock_timeout (55P03)", err)
		}
		checkConnHealthy(t, pool, conn, tx, holder, pid)
		return
	}
}

func TestContextCancelWhileBlocked(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	holder, _ := holdRow(t, pool, 1)
	conn, err := pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pid := conn.Conn().PgConn().PID()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		_, err := lock.Load[item](ctx, tx, itemsTable(), []pgcc.Key{{1}})
		done <- result{err, time.Now()}
	}()
	awaitWaiting(t, pool, pid, func() { cancel(); <-done })
	cancelled := time.Now()
	cancel()
	r := <-done
	latency := r.at.Sub(cancelled)
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", r.err)
	}
	lockError(t, r.err)
	// "Promptly" is under 100ms on an idle machine (a cancel request is one local connection); on a loaded
	// one the cancel request's connection alone can take a second or more, and the promise is CancelGrace.
	if latency > lockwait.CancelGrace+200*time.Millisecond {
		t.Errorf("returned %v after cancellation", latency)
	}
	t.Logf("cancel while blocked: returned %v after cancel() (%v)", latency, r.err)
	if conn.Conn().IsClosed() && latency >= lockwait.CancelGrace {
		// The server did not acknowledge the cancel request and end the wait within CancelGrace, so lock
		// closed the connection, as its package documentation says (a loaded machine does this).
		t.Logf("the cancel request was not acknowledged within %v: the connection was closed, as documented", lockwait.CancelGrace)
		releaseClosed(t, pool, conn, tx, holder)
		return
	}
	// Within the grace the server answered: the wait was cancelled (57014) and the connection is kept.
	if pgCode(r.err) != pgerrcode.QueryCanceled {
		t.Errorf("SQLSTATE = %q, want 57014: the server cancelled the wait", pgCode(r.err))
	}
	checkConnHealthy(t, pool, conn, tx, holder, pid)
}

// releaseClosed ends a test whose connection conn lock closed: it rolls tx back (which, on a closed
// connection, sends nothing), gives conn back to the pool, rolls holder back, and waits up to 20 seconds for
// the pool to have nothing acquired. The pool destroys a closed connection asynchronously and counts it as
// acquired until pgx's cleanup of it is done: after a read cut off by a deadline pgx sends a cancel request
// of its own and waits up to 15 seconds for the server's answer, which a loaded machine delays.
func releaseClosed(t *testing.T, pool *pgxpool.Pool, conn *pgxpool.Conn, tx, holder pgx.Tx) {
	t.Helper()
	ctx := context.Background()
	_ = tx.Rollback(ctx)
	conn.Release()
	if err := holder.Rollback(ctx); err != nil {
		t.Error(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n := pool.Stat().AcquiredConns()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("pool has %d connections acquired 20s after the closed one was released", n)
			return
		}
	}
}

// TestOppositeOrderNoDeadlock: 16 goroutines lock the same eight rows for three seconds, half listing them
// ascending and half descending. Locking through lock.Rows takes them in key order, so no deadlock occurs.
func TestOppositeOrderNoDeadlock(t *testing.T) {
	t.Parallel()
	const workers, rows = 16, 8
	pool := setup(t, rows, func(c *pgxpool.Config) { c.MaxConns = workers })
	ctx := context.Background()
	asc := make([]pgcc.Key, rows)
	desc := make([]pgcc.Key, rows)
	ids := make([]int, rows)
	for i := range rows {
		asc[i], desc[rows-1-i], ids[i] = pgcc.Key{i + 1}, pgcc.Key{i + 1}, i+1
	}
	stop := time.Now().Add(3 * time.Second)
	var commits, deadlocks atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys := asc
			if w%2 == 1 {
				keys = desc
			}
			for time.Now().Before(stop) {
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					locked, err := lock.Rows(ctx, tx, itemsTable(), keys)
					if err != nil {
						return err
					}
					if len(locked) != rows {
						return fmt.Errorf("locked %d rows", len(locked))
					}
					_, err = tx.Exec(ctx, "UPDATE items SET n = n + 1 WHERE id = ANY($1)", ids)
					return err
				})
				if errors.Is(err, pgcc.ErrDeadlock) || pgCode(err) == pgerrcode.DeadlockDetected {
					deadlocks.Add(1)
					continue
				}
				if err != nil {
					errs[w] = err
					return
				}
				commits.Add(1)
			}
		}()
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Errorf("worker %d: %v", w, err)
		}
	}
	if n := deadlocks.Load(); n != 0 {
		t.Errorf("%d deadlocks", n)
	}
	if commits.Load() == 0 {
		t.Fatal("nothing committed")
	}
	if got, want := queryInt(t, pool, "SELECT sum(n) FROM items"), rows*commits.Load(); got != want {
		t.Errorf("sum = %d, want %d", got, want)
	}
	t.Logf("%d transactions, 0 deadlocks", commits.Load())
}

// TestDeadlockIsTyped: two transactions lock rows one at a time in opposite orders, the textbook deadlock.
// PostgreSQL aborts one; its error is a LockError matching ErrDeadlock that txn.Retryable accepts.
//
// Each goroutine signals the other on a channel of its own (a single shared channel let A receive its own
// token back and wait forever), signals on every path, and every lock wait is bounded by ctx.
func TestDeadlockIsTyped(t *testing.T) {
	t.Parallel()
	pool := setup(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	aHolds1 := make(chan struct{}) // closed by A once it holds row 1 (or failed to)
	bHolds2 := make(chan struct{}) // closed by B once it holds row 2 (or failed to)
	txs := make([]pgx.Tx, 2)
	for i := range txs {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		txs[i] = tx
	}
	pidA := txs[0].Conn().PgConn().PID()
	errs := make([]error, 3) // A, B, and B's wait for A to block
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // A: 1 then 2
		defer wg.Done()
		errs[0] = lock.Row(ctx, txs[0], itemsTable(), pgcc.Key{1})
		close(aHolds1)
		if errs[0] != nil {
			return
		}
		<-bHolds2
		errs[0] = lock.Row(ctx, txs[0], itemsTable(), pgcc.Key{2})
		if errs[0] != nil {
			_ = txs[0].Rollback(ctx)
		}
	}()
	go func() { // B: 2 then 1, once A is waiting for 2
		defer wg.Done()
		<-aHolds1
		errs[1] = lock.Row(ctx, txs[1], itemsTable(), pgcc.Key{2})
		close(bHolds2)
		if errs[1] != nil {
			return
		}
		if errs[2] = awaitLockWait(ctx, pool, pidA); errs[2] != nil {
			_ = txs[1].Rollback(ctx) // releases row 2, so A is not left waiting on it
			return
		}
		errs[1] = lock.Row(ctx, txs[1], itemsTable(), pgcc.Key{1}, lock.WithDiagnostics(pool))
		if errs[1] != nil {
			_ = txs[1].Rollback(ctx)
		}
	}()
	wg.Wait()
	if errs[2] != nil {
		t.Error(errs[2])
	}
	var deadlocked []error
	for _, err := range errs[:2] {
		switch {
		case err == nil:
		case errors.Is(err, pgcc.ErrDeadlock):
			deadlocked = append(deadlocked, err)
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if len(deadlocked) != 1 {
		t.Fatalf("%d deadlock errors (%v), want exactly 1", len(deadlocked), errs)
	}
	err := deadlocked[0]
	if pgCode(err) != pgerrcode.DeadlockDetected || !txn.Retryable(err) || errors.Is(err, pgcc.ErrLockNotAvailable) {
		t.Errorf("deadlock error %v: SQLSTATE %q, retryable %v", err, pgCode(err), txn.Retryable(err))
	}
	if le := lockError(t, err); le.Table != `"items"` || len(le.Keys) != 1 {
		t.Errorf("LockError names %s %v", le.Table, le.Keys)
	}
}

// TestCounterRowLock: 16 goroutines × 200 increments of one counter, read then written, protected only by
// lock.Row: the final value is exact.
func TestCounterRowLock(t *testing.T) {
	t.Parallel()
	const workers, rounds = 16, 200
	pool := setup(t, 1, func(c *pgxpool.Config) { c.MaxConns = workers })
	counter(t, pool, workers, rounds, func(ctx context.Context, tx pgx.Tx) error {
		return lock.Row(ctx, tx, itemsTable(), pgcc.Key{1})
	})
}

// TestCounterAdvisoryLock is TestCounterRowLock with a transaction-scoped advisory lock instead.
func TestCounterAdvisoryLock(t *testing.T) {
	t.Parallel()
	const workers, rounds = 16, 200
	pool := setup(t, 1, func(c *pgxpool.Config) { c.MaxConns = workers })
	key := lock.StringKey("pgcc-test", "counter")
	counter(t, pool, workers, rounds, func(ctx context.Context, tx pgx.Tx) error {
		return lock.XactLock(ctx, tx, key)
	})
}

func counter(t *testing.T, pool *pgxpool.Pool, workers, rounds int, take func(context.Context, pgx.Tx) error) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
					if err := take(ctx, tx); err != nil {
						return err
					}
					var n int64
					if err := tx.QueryRow(ctx, "SELECT n FROM items WHERE id = 1").Scan(&n); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, "UPDATE items SET n = $1 WHERE id = 1", n+1)
					return err
				}, txn.WithMaxAttempts(1))
				if err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Errorf("worker %d: %v", w, err)
		}
	}
	if got, want := queryInt(t, pool, "SELECT n FROM items WHERE id = 1"), int64(workers*rounds); got != want {
		t.Errorf("counter = %d, want %d", got, want)
	}
}

type job struct {
	ID   int32
	Done bool
}

// TestClaimDrainsOnce: eight workers claim batches of a 10,000-row queue with SKIP LOCKED and mark them done
// in the same transaction; every row is claimed exactly once and none is left.
func TestClaimDrainsOnce(t *testing.T) {
	t.Parallel()
	const workers, jobs, batch = 8, 10000, 50
	pool := setup(t, 0, func(c *pgxpool.Config) { c.MaxConns = workers })
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE jobs (id int PRIMARY KEY, done bool NOT NULL DEFAULT false);
		INSERT INTO jobs SELECT g FROM generate_series(1, 10000) g`); err != nil {
		t.Fatal(err)
	}
	jobsTable := must(lock.NewTable[job]("jobs", lock.InSchema("public")))
	claims := make([]atomic.Int32, jobs+1)
	perWorker := make([]int, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var n int
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					got, err := lock.Claim[job](ctx, tx, jobsTable, batch, lock.Where("NOT done"))
					if err != nil {
						return err
					}
					ids := make([]int32, len(got))
					for i, j := range got {
						if j.Done {
							return fmt.Errorf("claimed job %d that is done", j.ID)
						}
						ids[i] = j.ID
					}
					n = len(got)
					_, err = tx.Exec(ctx, "UPDATE jobs SET done = true WHERE id = ANY($1)", ids)
					if err == nil {
						for _, id := range ids {
							claims[id].Add(1)
						}
					}
					return err
				})
				if err != nil {
					errs[w] = err
					return
				}
				if n == 0 {
					return
				}
				perWorker[w] += n
			}
		}()
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Errorf("worker %d: %v", w, err)
		}
	}
	for id := 1; id <= jobs; id++ {
		if n := claims[id].Load(); n != 1 {
			t.Errorf("job %d claimed %d times", id, n)
		}
	}
	if left := queryInt(t, pool, "SELECT count(*) FROM jobs WHERE NOT done"); left != 0 {
		t.Errorf("%d jobs left", left)
	}
	t.Logf("jobs per worker: %v", perWorker)
}

func TestClaimWhereArgs(t *testing.T) {
	t.Parallel()
	pool := setup(t, 10)
	ctx := context.Background()
	inTx(t, pool, func(tx pgx.Tx) {
		got, err := lock.Claim[item](ctx, tx, itemsTable(), 3, lock.Where("id % $1 = $2", 3, 0))
		if err != nil {
			t.Fatal(err)
		}
		if want := []item{{3, 0}, {6, 0}, {9, 0}}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("Claim = %v, want %v", got, want)
		}
		// A second claimer skips what the first holds.
		other, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = other.Rollback(ctx) }()
		got, err = lock.Claim[item](ctx, other, itemsTable(), 4, lock.WithStrength(lock.ForNoKeyUpdate))
		if err != nil {
			t.Fatal(err)
		}
		if want := []item{{1, 0}, {2, 0}, {4, 0}, {5, 0}}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("second Claim = %v, want %v", got, want)
		}
	})
}
