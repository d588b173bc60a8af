package txn_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgfail/pgfailtest"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/txn"
)

// TestIdempotencyKeyAppliesOnce: a second Run with a key that committed is refused with ErrAlreadyApplied,
// saying when, and fn does not run. On a single connection the refusal leaves the connection usable.
func TestIdempotencyKeyAppliesOnce(t *testing.T) {
	t.Parallel()
	for _, handle := range []string{"pool", "conn"} {
		t.Run(handle, func(t *testing.T) {
			t.Parallel()
			db, pool := setup(t, 1)
			ctx := context.Background()
			var h pgcc.Beginner = pool
			var conn *pgx.Conn
			if handle == "conn" {
				conn = db.Conn(t)
				h = conn
			}
			calls := 0
			fn := func(ctx context.Context, tx pgx.Tx) error { calls++; return increment(ctx, tx) }
			before := time.Now()
			if err := txn.Run(ctx, h, fn, txn.WithIdempotencyKey("request 7")); err != nil {
				t.Fatal(err)
			}
			err := txn.Run(ctx, h, fn, txn.WithIdempotencyKey("request 7"))
			var applied *pgcc.AlreadyAppliedError
			if !errors.As(err, &applied) || !errors.Is(err, pgcc.ErrAlreadyApplied) || applied.Key != "request 7" {
				t.Fatalf("second Run: %v, want *AlreadyAppliedError for the key", err)
			}
			if d := applied.AppliedAt.Sub(before); d < -time.Minute || d > time.Minute {
				t.Errorf("AppliedAt = %v, want about %v", applied.AppliedAt, before)
			}
			if calls != 1 {
				t.Errorf("fn ran %d times, want 1", calls)
			}
			if got := count(t, pool, "SELECT balance FROM accounts WHERE id = 1"); got != 101 {
				t.Errorf("balance %d, want 101", got)
			}
			if conn != nil {
				if status := conn.PgConn().TxStatus(); status != 'I' {
					t.Errorf("the connection was left in transaction status %q", status)
				}
				if err := txn.Run(ctx, conn, fn, txn.WithIdempotencyKey("request 8")); err != nil {
					t.Errorf("the connection is not usable after the refusal: %v", err)
				}
			}
			// A transaction that rolled back leaves no key behind.
			mine := errors.New("refused by fn")
			if err := txn.Run(ctx, pool, func(context.Context, pgx.Tx) error { return mine }, txn.WithIdempotencyKey("request 9")); err != mine {
				t.Fatalf("err = %v, want fn's own", err)
			}
			if err := txn.Run(ctx, pool, fn, txn.WithIdempotencyKey("request 9")); err != nil {
				t.Errorf("a key whose transaction rolled back was kept: %v", err)
			}
		})
	}
}

// TestConcurrentDuplicateKey: the second transaction with a key waits, at BEGIN, for the first; it is then
// refused if the first committed, and runs if the first rolled back. fn never runs to a commit twice.
func TestConcurrentDuplicateKey(t *testing.T) {
	t.Parallel()
	for _, firstCommits := range []bool{true, false} {
		name := "first commits"
		if !firstCommits {
			name = "first rolls back"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, pool := setup(t, 1)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			inside, release := make(chan struct{}), make(chan struct{})
			firstDone := make(chan error, 1)
			go func() {
				firstDone <- txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
					if err := increment(ctx, tx); err != nil {
						return err
					}
					close(inside)
					<-release
					if !firstCommits {
						return errors.New("first rolls back")
					}
					return nil
				}, txn.WithIdempotencyKey("dup"))
			}()
			<-inside
			secondDone := make(chan error, 1)
			secondCalls := 0
			go func() {
				secondDone <- txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
					secondCalls++
					return increment(ctx, tx)
				}, txn.WithIdempotencyKey("dup"))
			}()
			waitForKeyWait(t, pool)
			close(release)
			firstErr, secondErr := <-firstDone, <-secondDone
			if firstCommits {
				if firstErr != nil || !errors.Is(secondErr, pgcc.ErrAlreadyApplied) || secondCalls != 0 {
					t.Fatalf("first %v, second %v after %d calls; want nil and ErrAlreadyApplied without a call", firstErr, secondErr, secondCalls)
				}
			} else if firstErr == nil || secondErr != nil || secondCalls != 1 {
				t.Fatalf("first %v, second %v after %d calls; want the first's error and the second applied", firstErr, secondErr, secondCalls)
			}
			if got := count(t, pool, "SELECT balance FROM accounts WHERE id = 1"); got != 101 {
				t.Errorf("balance %d, want 101", got)
			}
		})
	}
}

// waitForKeyWait polls until a backend of the test's database waits for a lock in the key's INSERT.
func waitForKeyWait(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a statement took over 10 s to reach its lock on a loaded machine
	for time.Now().Before(deadline) {
		n := count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%idempotency_keys%'`)
		if n > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no transaction waited for the key")
}

// TestManyConcurrentDuplicates: 16 goroutines with one key at once: one applies, 15 are refused.
func TestManyConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	const n = 16
	_, pool := setup(t, 1, func(c *pgxpool.Config) { c.MaxConns = n })
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = txn.Run(ctx, pool, increment, txn.WithIdempotencyKey("once")) })
	}
	wg.Wait()
	ok, refused := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, pgcc.ErrAlreadyApplied):
			refused++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 || refused != n-1 {
		t.Errorf("%d applied, %d refused; want 1 and %d", ok, refused, n-1)
	}
	if got := count(t, pool, "SELECT balance FROM accounts WHERE id = 1"); got != 101 {
		t.Errorf("balance %d, want 101", got)
	}
}

// TestIdempotencyKeyCostsNoRoundTrip: the key's INSERT travels with BEGIN.
func TestIdempotencyKeyCostsNoRoundTrip(t *testing.T) {
	t.Parallel()
	tracer := &countingTracer{}
	_, pool := setup(t, 1, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	ctx := context.Background()
	for _, opts := range [][]txn.Option{
		{txn.WithIdempotencyKey("k1")},
		{txn.WithIdempotencyKey("k2"), txn.WithIsolation(pgx.Serializable), txn.WithLockTimeout(time.Second)},
	} {
		tracer.n.Store(0)
		if err := txn.Run(ctx, pool, increment, opts...); err != nil {
			t.Fatal(err)
		}
		if got := tracer.n.Load(); got != 3 {
			t.Errorf("with %d options: %d statements sent, want 3 (BEGIN with the key, UPDATE, COMMIT)", len(opts), got)
		}
	}
	if got := count(t, pool, "SELECT count(*) FROM pgcc.idempotency_keys WHERE key IN ('k1', 'k2')"); got != 2 {
		t.Errorf("%d keys recorded, want 2", got)
	}
}

// TestIdempotencyKeyIsNotSQL: a key full of quotes and backslashes is stored as given.
func TestIdempotencyKeyIsNotSQL(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	key := `it's'); DROP TABLE accounts; -- \x00 "ü"` + "\n\t$$"
	if err := txn.Run(ctx, pool, increment, txn.WithIdempotencyKey(key)); err != nil {
		t.Fatal(err)
	}
	var stored string
	if err := pool.QueryRow(ctx, "SELECT key FROM pgcc.idempotency_keys").Scan(&stored); err != nil || stored != key {
		t.Fatalf("stored %q, %v; want %q", stored, err, key)
	}
	if !errors.Is(txn.Run(ctx, pool, increment, txn.WithIdempotencyKey(key)), pgcc.ErrAlreadyApplied) {
		t.Error("the same key was not recognised")
	}
}

// TestMissingKeyTable: without the migration, the error says what to do.
func TestMissingKeyTable(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "DROP TABLE pgcc.idempotency_keys"); err != nil {
		t.Fatal(err)
	}
	conn := db.Conn(t)
	for name, h := range map[string]pgcc.Beginner{"pool": pool, "conn": conn} {
		called := false
		err := txn.Run(ctx, h, func(context.Context, pgx.Tx) error { called = true; return nil }, txn.WithIdempotencyKey("k"))
		if pgcc.SQLState(err) != pgerrcode.UndefinedTable || !strings.Contains(err.Error(), "migrations") || called {
			t.Errorf("%s: err = %v, called %v; want 42P01 with a hint to apply the migrations", name, err, called)
		}
	}
	if status := conn.PgConn().TxStatus(); status != 'I' {
		t.Errorf("the connection was left in transaction status %q", status)
	}
	if _, err := txn.PurgeIdempotencyKeys(ctx, pool); pgcc.SQLState(err) != pgerrcode.UndefinedTable || !strings.Contains(err.Error(), "migrations") {
		t.Errorf("Purge: %v, want 42P01 with a hint", err)
	}
}

func TestPurgeIdempotencyKeys(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	for _, key := range []string{"a", "b", "c"} {
		if err := txn.Run(ctx, pool, increment, txn.WithIdempotencyKey(key), txn.WithIdempotencyRetention(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	var retention string
	if err := pool.QueryRow(ctx, "SELECT (expires_at - applied_at)::text FROM pgcc.idempotency_keys WHERE key = 'a'").Scan(&retention); err != nil || retention != "01:00:00" {
		t.Fatalf("retention %q, %v; want 01:00:00", retention, err)
	}
	// Age two keys past their retention, rather than wait.
	if _, err := pool.Exec(ctx, "UPDATE pgcc.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key IN ('a', 'b')"); err != nil {
		t.Fatal(err)
	}
	n, err := txn.PurgeIdempotencyKeys(ctx, pool)
	if err != nil || n != 2 {
		t.Fatalf("Purge = %d, %v; want 2", n, err)
	}
	if err := txn.Run(ctx, pool, increment, txn.WithIdempotencyKey("a")); err != nil {
		t.Errorf("a purged key still refuses: %v", err)
	}
	if err := txn.Run(ctx, pool, increment, txn.WithIdempotencyKey("c")); !errors.Is(err, pgcc.ErrAlreadyApplied) {
		t.Errorf("a key within its retention: %v, want ErrAlreadyApplied", err)
	}
}

func TestInvalidIdempotencyOptions(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	for name, opts := range map[string][]txn.Option{
		"empty key":               {txn.WithIdempotencyKey("")},
		"long key":                {txn.WithIdempotencyKey(strings.Repeat("k", txn.MaxIdempotencyKeyLen+1))},
		"NUL in key":              {txn.WithIdempotencyKey("a\x00b")},
		"invalid UTF-8":           {txn.WithIdempotencyKey("\xff")},
		"key in a read-only txn":  {txn.WithIdempotencyKey("k"), txn.ReadOnly()},
		"zero retention":          {txn.WithIdempotencyKey("k"), txn.WithIdempotencyRetention(0)},
		"retention without a key": {txn.WithIdempotencyRetention(time.Hour)},
	} {
		called := false
		err := txn.Run(ctx, pool, func(context.Context, pgx.Tx) error { called = true; return nil }, opts...)
		if !errors.Is(err, pgcc.ErrInvalidArgument) || called {
			t.Errorf("%s: err = %v, called %v; want ErrInvalidArgument", name, err, called)
		}
	}
	if err := txn.Retry(ctx, func(context.Context) error { return nil }, txn.WithIdempotencyKey("k")); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Retry with a key: %v, want ErrInvalidArgument", err)
	}
}

// TestHungCommitSettledByKeyWithinDeadline: COMMIT reaches the server and commits, and its answer is held
// with the connection (a network that stopped both ways). The caller's deadline must not be spent waiting for
// it: a keyed Run stops waiting early enough to look the key up on a new connection within the deadline, and
// returns nil, applied once. Before the reserve, the wait took the whole deadline and Run returned
// ErrCommitUnknown although the key could have settled it.
func TestHungCommitSettledByKeyWithinDeadline(t *testing.T) {
	t.Parallel()
	db, pool, proxy := proxiedOne(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "SELECT 1"); err != nil { // the pool's connection, open before the clock starts
		t.Fatal(err)
	}
	rule := proxy.OnQuery(pgfailtest.IsCommit, faultnet.HangAfter)
	defer proxy.Resume()
	// A quarter of it, 5 s, kept for the look-up: a new connection took 0.7 s at a load average of 18, and
	// 1–3 s beside a network-fault run, where an 8 s deadline (2 s kept) failed one run in three.
	const deadline = 20 * time.Second
	runCtx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	start := time.Now()
	calls := 0
	err := txn.Run(runCtx, pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
		return err
	}, txn.WithIdempotencyKey("hung commit"))
	took := time.Since(start)
	if rule.Fired() != 1 {
		t.Fatalf("the rule fired %d times, want 1", rule.Fired())
	}
	if err != nil {
		t.Fatalf("Run = %v after %v, want nil: the key settles the hung COMMIT", err, took)
	}
	if took > deadline+100*time.Millisecond {
		t.Errorf("Run took %v, past its %v deadline", took, deadline)
	}
	proxy.Resume()
	if calls != 1 {
		t.Errorf("fn ran %d times, want 1", calls)
	}
	if b := count(t, db.Conn(t), "SELECT balance FROM accounts WHERE id = 1"); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
}

// TestKeyedCommitNotSentWithoutTimeToConfirm: a keyed transaction whose fn used its deadline up to the time
// kept for the look-up does not send COMMIT, whose lost answer could no longer be settled: it rolls back and
// returns a certain failure (an InterruptedError for the deadline), nothing applied, before the deadline.
func TestKeyedCommitNotSentWithoutTimeToConfirm(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // 0.5 s kept for a look-up
	defer cancel()
	start := time.Now()
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1"); err != nil {
			return err
		}
		time.Sleep(1600 * time.Millisecond)
		return nil
	}, txn.WithIdempotencyKey("late"))
	took := time.Since(start)
	var interrupted *pgcc.InterruptedError
	if !errors.As(err, &interrupted) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, pgcc.ErrCommitUnknown) ||
		!strings.Contains(err.Error(), "not committed") || !strings.Contains(err.Error(), `"late"`) {
		t.Fatalf("Run = %v (%T), want an InterruptedError for the deadline saying nothing was committed", err, err)
	}
	if took >= 2*time.Second {
		t.Errorf("Run took %v, want it back before its 2 s deadline", took)
	}
	if b := count(t, db.Conn(t), "SELECT balance FROM accounts WHERE id = 1"); b != 100 {
		t.Errorf("balance %d, want 100: nothing committed", b)
	}
	if n := count(t, db.Conn(t), "SELECT count(*) FROM pgcc.idempotency_keys WHERE key = 'late'"); n != 0 {
		t.Errorf("%d key rows, want none", n)
	}
	// The same request, sent again with time to spare, applies once.
	if err := txn.Run(context.Background(), pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
		return err
	}, txn.WithIdempotencyKey("late")); err != nil {
		t.Fatal(err)
	}
	if stat := pool.Stat(); stat.AcquiredConns() != 0 {
		t.Errorf("%d connections left acquired", stat.AcquiredConns())
	}
}

// TestLostCommitLookUpIsOneRoundTrip counts the round trips of a look-up: once it has a connection, it settles
// the outcome in one (its transaction is a single pipeline), where it took six before. Each one is a chance
// for the fault that lost the COMMIT's answer to strike again.
func TestLostCommitLookUpIsOneRoundTrip(t *testing.T) {
	t.Parallel()
	db, _ := setup(t, 1)
	p, dsn := faultnet.ForDSN(t, db.DSN)
	conn := (&pgtest.DB{Name: db.Name, DSN: dsn}).Conn(t) // one connection: the look-up opens exactly one of its own
	ctx := context.Background()
	if err := txn.Run(ctx, conn, increment, txn.WithIdempotencyKey("warm")); err != nil {
		t.Fatal(err)
	}
	p.ResetStats()
	lose := p.OnQuery(faultnet.IsCommit, faultnet.LoseReply)
	err := txn.Run(ctx, conn, increment, txn.WithIdempotencyKey("lost"))
	if err != nil || lose.Fired() != 1 {
		t.Fatalf("Run = %v with %d COMMIT replies lost; want nil, settled by the key, with 1", err, lose.Fired())
	}
	// BEGIN with the key, the UPDATE, COMMIT; the cancel request pgx sends as it closes the broken connection;
	// then the look-up: its connection (one with trust authentication) and its probe.
	if n := p.Stats().Flights; n != 6 {
		t.Errorf("%d round trips, want 6: 3 for the transaction, pgx's cancel request, 1 to connect, 1 to look the key up", n)
	}
	if b := balance(t, db); b != 102 {
		t.Errorf("balance %d, want 102", b)
	}
}
