package txn_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail/pgfailtest"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/internal/testdb"
	"github.com/pgcc/pgcc/txn"
)

// fastRetry keeps the tests' retries short.
var fastRetry = txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 5 * time.Millisecond})

// proxied returns the test's database, a fault proxy in front of it, and a pool through the proxy. setup's
// pool, direct, is for assertions.
func proxied(t *testing.T, configure ...func(*pgxpool.Config)) (*pgtest.DB, *pgfailtest.Proxy, *pgtest.DB, *pgxpool.Pool) {
	t.Helper()
	db, _ := setup(t, 1)
	proxy, dsn := pgfailtest.New(t, db.DSN)
	through := &pgtest.DB{Name: db.Name, DSN: dsn}
	// A pooled connection idle for a second is pinged before use; the tests want the broken ones used.
	noPing := func(c *pgxpool.Config) {
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	}
	return db, proxy, through, through.Pool(t, append([]func(*pgxpool.Config){noPing}, configure...)...)
}

func increment(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
	return err
}

func balance(t *testing.T, db *pgtest.DB) int {
	t.Helper()
	conn := db.Conn(t)
	return count(t, conn, "SELECT balance FROM accounts WHERE id = 1")
}

// TestLostCommitReplyIsCommitUnknown: COMMIT reaches the server and commits; its reply is lost and the
// connection reset. pgx then says "conn closed" and pgconn.SafeToRetry says true; before this was fixed Run
// believed it, retried, and applied the increment twice, 10 times out of 10. Now: ErrCommitUnknown, every
// time, the increment applied once, the commit hooks not run and the rollback hooks run.
func TestLostCommitReplyIsCommitUnknown(t *testing.T) {
	t.Parallel()
	db, proxy, _, pool := proxied(t)
	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		proxy.LoseReply(1, pgfailtest.IsCommit)
		calls, committedHooks, rolledBackHooks := 0, 0, 0
		err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			calls++
			_ = txn.AfterCommit(tx, func(context.Context) { committedHooks++ })
			_ = txn.AfterRollback(tx, func() { rolledBackHooks++ })
			return increment(ctx, tx)
		}, fastRetry)
		proxy.AwaitFault()
		var unknown *pgcc.CommitUnknownError
		if !errors.As(err, &unknown) || !errors.Is(err, pgcc.ErrCommitUnknown) || unknown.Attempts != 1 {
			t.Fatalf("round %d: err = %v, want *CommitUnknownError at attempt 1", i, err)
		}
		if calls != 1 || committedHooks != 0 || rolledBackHooks != 1 {
			t.Fatalf("round %d: %d calls, %d commit hooks, %d rollback hooks; want 1, 0, 1", i, calls, committedHooks, rolledBackHooks)
		}
		if got := balance(t, db); got != 100+i {
			t.Fatalf("round %d: balance %d, want %d: the increment was applied %d times", i, got, 100+i, got-100-i+1)
		}
	}
}

// TestLostCommitReplyOfReadOnlyIsRetried: a READ ONLY transaction's COMMIT makes nothing durable, so losing
// its reply loses nothing either: Run runs fn again on a fresh connection and returns what that attempt read,
// never ErrCommitUnknown.
func TestLostCommitReplyOfReadOnlyIsRetried(t *testing.T) {
	t.Parallel()
	_, proxy, _, pool := proxied(t)
	ctx := context.Background()
	proxy.LoseReply(1, pgfailtest.IsCommit)
	calls := 0
	got, err := txn.RunValue(ctx, pool, func(ctx context.Context, tx pgx.Tx) (int, error) {
		calls++
		var b int
		err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = 1").Scan(&b)
		return b, err
	}, txn.ReadOnly(), fastRetry)
	proxy.AwaitFault()
	if err != nil || got != 100 || calls != 2 {
		t.Fatalf("RunValue = %d, %v after %d calls; want 100, nil after 2", got, err, calls)
	}
}

// TestLostCommitReplyResolvedByKey: the same lost reply, with an idempotency key: Run looks the key up, finds
// its own commit, and returns nil with the value of that attempt; hooks see a commit.
func TestLostCommitReplyResolvedByKey(t *testing.T) {
	t.Parallel()
	for _, handle := range []string{"pool", "conn"} {
		t.Run(handle, func(t *testing.T) {
			t.Parallel()
			db, proxy, through, pool := proxied(t)
			ctx := context.Background()
			for i := 1; i <= 3; i++ {
				var h pgcc.Beginner = pool
				if handle == "conn" {
					h = through.Conn(t) // lost with the reply: the look-up opens its own connection
				}
				proxy.LoseReply(1, pgfailtest.IsCommit)
				calls, committedHooks, rolledBackHooks := 0, 0, 0
				var events attemptEvents
				var logged bytes.Buffer // the slog observer's record of the same attempt
				observer := pgcc.JoinObservers(&events, pgcc.NewSlogObserver(slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))))
				got, err := txn.RunValue(ctx, h, func(ctx context.Context, tx pgx.Tx) (int, error) {
					calls++
					_ = txn.AfterCommit(tx, func(context.Context) { committedHooks++ })
					_ = txn.AfterRollback(tx, func() { rolledBackHooks++ })
					var n int
					err := tx.QueryRow(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1 RETURNING balance").Scan(&n)
					return n, err
				}, txn.WithIdempotencyKey(fmt.Sprintf("increment %d", i)), fastRetry, txn.WithObserver(observer))
				proxy.AwaitFault()
				if err != nil || got != 100+i {
					t.Fatalf("round %d: RunValue = %d, %v; want %d, nil", i, got, err, 100+i)
				}
				// The observer hears of the look-up: one attempt, committed, with the look-up's time.
				if len(events) != 1 || events[0].Outcome != pgcc.AttemptCommitted || events[0].LookUp <= 0 || events[0].LookUp > events[0].Duration {
					t.Fatalf("round %d: events %+v, want one committed attempt whose LookUp is set and within its Duration", i, events)
				}
				if !strings.Contains(logged.String(), "pgcc.lookup=") {
					t.Fatalf("round %d: the slog record has no pgcc.lookup: %s", i, logged.String())
				}
				if calls != 1 || committedHooks != 1 || rolledBackHooks != 0 {
					t.Fatalf("round %d: %d calls, %d commit hooks, %d rollback hooks; want 1, 1, 0", i, calls, committedHooks, rolledBackHooks)
				}
				if b := balance(t, db); b != 100+i {
					t.Fatalf("round %d: balance %d, want %d", i, b, 100+i)
				}
			}
		})
	}
}

// attemptEvents records the attempt events of one call (its methods run on the caller's goroutine).
type attemptEvents []pgcc.AttemptEvent

func (e *attemptEvents) ObserveAttempt(_ context.Context, ev pgcc.AttemptEvent) { *e = append(*e, ev) }
func (*attemptEvents) ObserveConflict(context.Context, pgcc.ConflictEvent)      {}
func (*attemptEvents) ObserveLockWait(context.Context, pgcc.LockWaitEvent)      {}
func (*attemptEvents) ObserveLease(context.Context, pgcc.LeaseEvent)            {}

// TestLostCommitReplyResolvedBySaturatedPool: the reply is lost while other callers hold every connection of
// the pool for longer than Run's context lasts. The look-up does not queue behind them: it opens a connection
// of its own and settles the outcome in time (before, it waited for the pool and returned ErrCommitUnknown).
func TestLostCommitReplyResolvedBySaturatedPool(t *testing.T) {
	t.Parallel()
	const conns = 2
	var afterConnect atomic.Int32 // the pool's hooks run for the look-up's connection too
	db, proxy, _, pool := proxied(t, func(c *pgxpool.Config) {
		c.MaxConns = conns
		c.AfterConnect = func(context.Context, *pgx.Conn) error { afterConnect.Add(1); return nil }
	})
	ctx := context.Background()

	// Hogs queue on the pool for as long as the test runs, each holding a connection for 30 s: once Run's
	// connection breaks, the slot it frees goes to a hog that was waiting before the look-up.
	entered, stopHogs := startHogs(pool, 2*conns)
	defer stopHogs()

	proxy.LoseReply(1, pgfailtest.IsCommit)
	// Shorter than the hogs' hold, long enough for a fresh connection on a loaded machine.
	runCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	calls := 0
	err := txn.Run(runCtx, pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		if calls == 1 {
			close(entered)
			time.Sleep(200 * time.Millisecond) // the hogs take the other connection and queue for this one
		}
		return increment(ctx, tx)
	}, txn.WithIdempotencyKey("saturated"), fastRetry)
	proxy.AwaitFault()
	stopHogs()
	if err != nil {
		t.Fatalf("Run = %v, want nil: the look-up should not wait for the saturated pool", err)
	}
	if calls != 1 {
		t.Errorf("%d calls, want 1", calls)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
	if n := afterConnect.Load(); n < conns+1 {
		t.Errorf("AfterConnect ran %d times, want at least %d (the pool's and the look-up's connections)", n, conns+1)
	}
}

// startHogs starts n goroutines that, once entered is closed, acquire a connection from pool and hold it for
// 30 s, again and again, so that the pool stays saturated. stop ends them and waits for them; it may be called
// more than once.
func startHogs(pool *pgxpool.Pool, n int) (entered chan struct{}, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	entered = make(chan struct{})
	var hogs sync.WaitGroup
	for range n {
		hogs.Add(1)
		go func() {
			defer hogs.Done()
			select {
			case <-entered:
			case <-ctx.Done():
				return
			}
			for ctx.Err() == nil {
				c, err := pool.Acquire(ctx)
				if err != nil {
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(30 * time.Second):
				}
				c.Release()
			}
		}()
	}
	return entered, func() { cancel(); hogs.Wait() }
}

// lookUpMark marks the context of the Run whose look-up TestLostCommitLookUpReconnects refuses connections to.
type lookUpMark struct{}

// TestLostCommitLookUpReconnects: the reply is lost, the pool is saturated for longer than Run's context
// lasts, and the look-up's first three connections of its own are refused (the network that lost the reply
// is still failing). The look-up opens its own connection again, rather than fall back on waiting for the
// pool, and settles the outcome. Before, one refused connection left it waiting on the pool until the
// deadline: ErrCommitUnknown, seven times in one network-fault cell of make faults on a loaded machine.
func TestLostCommitLookUpReconnects(t *testing.T) {
	t.Parallel()
	const conns, refusals = 2, 3
	closed := closedPort(t)
	var armed atomic.Bool
	var refused atomic.Int32
	db, proxy, _, pool := proxied(t, func(c *pgxpool.Config) {
		c.MaxConns = conns
		c.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
			if armed.Load() && ctx.Value(lookUpMark{}) != nil && refused.Add(1) <= refusals {
				cc.Host, cc.Port = "127.0.0.1", closed // connection refused, as a real failure
			}
			return nil
		}
	})
	ctx := context.Background()
	entered, stopHogs := startHogs(pool, 2*conns)
	defer stopHogs()

	proxy.LoseReply(1, pgfailtest.IsCommit)
	runCtx, cancel := context.WithTimeout(context.WithValue(ctx, lookUpMark{}, true), 20*time.Second) // under the hogs' 30 s
	defer cancel()
	calls := 0
	err := txn.Run(runCtx, pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		if calls == 1 {
			close(entered)
			time.Sleep(200 * time.Millisecond) // the hogs take the other connection and queue for this one
			armed.Store(true)
		}
		return increment(ctx, tx)
	}, txn.WithIdempotencyKey("reconnects"), fastRetry)
	proxy.AwaitFault()
	stopHogs()
	if err != nil {
		t.Fatalf("Run = %v, want nil: the look-up should open its connection again", err)
	}
	if calls != 1 {
		t.Errorf("%d calls, want 1", calls)
	}
	if n := refused.Load(); n <= refusals {
		t.Errorf("%d of the look-up's connections tried, want more than the %d refused", n, refusals)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
	// The lost connection counts as acquired until its destructor has closed it, in the background.
	if n := testdb.AwaitReleased(pool, testdb.LeakGrace); n != 0 {
		t.Errorf("%d connections left acquired", n)
	}
}

// TestLostCommitLookUpGivesUpWithoutDeadline: the reply is lost and every connection after it is refused (a
// server that stays down), under a context without a deadline. The look-up's ways give up after the policy's
// attempts, and Run reports ErrCommitUnknown, naming the key, instead of trying forever.
func TestLostCommitLookUpGivesUpWithoutDeadline(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	var tried atomic.Int32
	db, proxy, pool := refusingWhile(t, &down, &tried)
	proxy.LoseReply(1, pgfailtest.IsCommit)
	done := make(chan error, 1)
	go func() {
		done <- txn.Run(context.Background(), pool, func(ctx context.Context, tx pgx.Tx) error {
			down.Store(true)
			return increment(ctx, tx)
		}, txn.WithIdempotencyKey("server gone"), txn.WithMaxAttempts(3), fastRetry)
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(45 * time.Second):
		down.Store(false) // let the look-up through, so that the goroutine ends
		t.Fatalf("Run still looking the key up after 45 s (%d connections tried): the look-up has no bound without a deadline", tried.Load())
	}
	var unknown *pgcc.CommitUnknownError
	if !errors.As(err, &unknown) || !strings.Contains(err.Error(), `"server gone"`) {
		t.Fatalf("Run = %v, want a CommitUnknownError naming the key", err)
	}
	// 3 probes, each two ways of at most 3 tries and a second connection of its own tried once.
	if n := tried.Load(); n < 3 || n > 21 {
		t.Errorf("%d connections tried, want between 3 and 21", n)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101: the COMMIT whose reply was lost committed", b)
	}
	if n := testdb.AwaitReleased(pool, testdb.LeakGrace); n != 0 {
		t.Errorf("%d connections left acquired", n)
	}
	t.Logf("gave up after %d connections tried", tried.Load())
}

// TestLostCommitLookUpPacesItsReconnects: the reply is lost and every connection is refused for the next 4 s
// (a server restarting), under a 20 s deadline and no bound on attempts. The look-up waits the outage out and
// settles the outcome, and it does not hammer the server meanwhile: its pauses grow to about a second, and the
// second connection of its own is tried once. Counted: at most 29 connections in 4 s (two ways of at most 14
// tries each, the shortest pauses 5, 10, 20 … 320 ms then 500 ms, and the hedge); the look-up that retried every
// 200 ms on three ways made about 70.
func TestLostCommitLookUpPacesItsReconnects(t *testing.T) {
	t.Parallel()
	const outage = 4 * time.Second
	var down atomic.Bool
	var tried atomic.Int32
	db, proxy, pool := refusingWhile(t, &down, &tried)
	proxy.LoseReply(1, pgfailtest.IsCommit)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	calls := 0
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if calls++; calls == 1 {
			down.Store(true)
			time.AfterFunc(outage, func() { down.Store(false) })
		}
		return increment(ctx, tx)
	}, txn.WithIdempotencyKey("paced"), txn.WithMaxAttempts(txn.UnlimitedAttempts), fastRetry)
	if err != nil {
		t.Fatalf("Run = %v, want nil: the look-up should outlast a %v outage", err, outage)
	}
	if calls != 1 {
		t.Errorf("%d calls, want 1", calls)
	}
	if n := tried.Load(); n < 2 || n > 29 {
		t.Errorf("%d connections tried during the %v outage, want between 2 and 29", n, outage)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
	if n := testdb.AwaitReleased(pool, testdb.LeakGrace); n != 0 {
		t.Errorf("%d connections left acquired", n)
	}
	t.Logf("%d connections tried during the outage", tried.Load())
}

// refusingWhile is proxied with a pool whose connections, while down is set, are refused (sent to a closed
// port), each counted in tried.
func refusingWhile(t *testing.T, down *atomic.Bool, tried *atomic.Int32) (*pgtest.DB, *pgfailtest.Proxy, *pgxpool.Pool) {
	t.Helper()
	closed := closedPort(t)
	db, proxy, _, pool := proxied(t, func(c *pgxpool.Config) {
		c.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
			if down.Load() {
				tried.Add(1)
				cc.Host, cc.Port = "127.0.0.1", closed
			}
			return nil
		}
	})
	return db, proxy, pool
}

// closedPort returns a loopback port nothing listens on: a connection to it is refused.
func closedPort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return uint16(port)
}

// TestSwallowedCommitResolvedByKey: the COMMIT never reaches the server, whose backend stays idle in its
// transaction, holding the key (a dead network path the server has not noticed). The look-up waits briefly,
// ends that backend, finds the key not committed, and Run retries: applied once. On a single connection the
// retry is impossible and the answer is a definite ErrConnectionLost.
func TestSwallowedCommitResolvedByKey(t *testing.T) {
	t.Parallel()
	for _, handle := range []string{"pool", "conn"} {
		t.Run(handle, func(t *testing.T) {
			t.Parallel()
			db, proxy, through, pool := proxied(t)
			ctx := context.Background()
			var h pgcc.Beginner = pool
			if handle == "conn" {
				h = through.Conn(t)
			}
			proxy.Swallow(1, pgfailtest.IsCommit)
			calls := 0
			err := txn.Run(ctx, h, func(ctx context.Context, tx pgx.Tx) error {
				calls++
				return increment(ctx, tx)
			}, txn.WithIdempotencyKey("swallowed"), fastRetry)
			proxy.AwaitFault()
			want, wantCalls := 101, 2
			if handle == "conn" {
				want, wantCalls = 100, 1
				var lost *pgcc.ConnectionLostError
				if !errors.As(err, &lost) || !lost.SingleConnection || !errors.Is(err, pgcc.ErrConnectionLost) {
					t.Fatalf("err = %v, want *ConnectionLostError for a single connection", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if calls != wantCalls {
				t.Errorf("%d calls, want %d", calls, wantCalls)
			}
			if b := balance(t, db); b != want {
				t.Errorf("balance %d, want %d", b, want)
			}
			// The original's backend was ended (it may take a moment to leave pg_stat_activity).
			conn := db.Conn(t)
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				n := count(t, conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'")
				if n == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d backends still idle in transaction: the original was not ended", n)
				}
			}
		})
	}
}

// TestIdleBackendTerminatedIsRetried: the pooled connection's backend was terminated while idle; the next
// Run's BEGIN, sent with fn's first statement, fails on it (57P01, or EOF), certainly before anything of the
// transaction committed, and Run retries on a fresh connection.
func TestIdleBackendTerminatedIsRetried(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1, func(c *pgxpool.Config) {
		c.MaxConns = 1
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	ctx := context.Background()
	var pid uint32
	if err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		pid = tx.Conn().PgConn().PID()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := terminate(ctx, db.Conn(t), pid); err != nil {
		t.Fatal(err)
	}
	var retried []error
	calls := 0
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		return increment(ctx, tx)
	}, fastRetry, txn.OnRetry(func(_ int, err error, _ time.Duration) { retried = append(retried, err) }))
	if err != nil {
		t.Fatal(err)
	}
	// fn's first statement carries BEGIN, so fn runs in the attempt whose BEGIN fails.
	if len(retried) != 1 || !errors.Is(retried[0], pgcc.ErrConnectionLost) || calls != 2 {
		t.Fatalf("retried %v with %d calls of fn; want one ErrConnectionLost at BEGIN", retried, calls)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
}

// TestBackendTerminatedMidTransaction: the backend is terminated between two statements of fn. The
// transaction certainly did not commit: on a pool Run retries it, applied once; on a single connection Run
// says the connection is lost, with nothing committed.
func TestBackendTerminatedMidTransaction(t *testing.T) {
	t.Parallel()
	for _, handle := range []string{"pool", "conn"} {
		t.Run(handle, func(t *testing.T) {
			t.Parallel()
			db, pool := setup(t, 1)
			killer := db.Conn(t)
			ctx := context.Background()
			var h pgcc.Beginner = pool
			if handle == "conn" {
				h = db.Conn(t)
			}
			calls := 0
			err := txn.Run(ctx, h, func(ctx context.Context, tx pgx.Tx) error {
				calls++
				if err := increment(ctx, tx); err != nil {
					return err
				}
				if calls == 1 {
					if err := terminate(ctx, killer, tx.Conn().PgConn().PID()); err != nil {
						return err
					}
				}
				_, err := tx.Exec(ctx, "INSERT INTO log VALUES ('applied')")
				return err
			}, fastRetry)
			want, wantCalls := 101, 2
			if handle == "conn" {
				want, wantCalls = 100, 1
				var lost *pgcc.ConnectionLostError
				if !errors.As(err, &lost) || !lost.SingleConnection || lost.Attempts != 1 {
					t.Fatalf("err = %v, want *ConnectionLostError{SingleConnection} at attempt 1", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if calls != wantCalls {
				t.Errorf("%d calls, want %d", calls, wantCalls)
			}
			if b := balance(t, db); b != want {
				t.Errorf("balance %d, want %d", b, want)
			}
			if n := count(t, killer, "SELECT count(*) FROM log"); n != want-100 {
				t.Errorf("log has %d rows, want %d", n, want-100)
			}
		})
	}
}

// TestServerRestartIsRetriedWithBackoff plays a restart: every connection reset, then new ones refused (or
// answered FATAL 57P03 while the server recovers). Run keeps trying, with backoff, and succeeds once the
// server is back; every retried error is ErrConnectionLost.
func TestServerRestartIsRetriedWithBackoff(t *testing.T) {
	t.Parallel()
	for _, startingUp := range []bool{false, true} {
		t.Run(fmt.Sprintf("startingUp=%v", startingUp), func(t *testing.T) {
			t.Parallel()
			db, proxy, _, pool := proxied(t)
			ctx := context.Background()
			if err := txn.Run(ctx, pool, increment); err != nil { // a pooled connection to break
				t.Fatal(err)
			}
			proxy.Down(startingUp)
			var retried []error
			err := txn.Run(ctx, pool, increment, fastRetry, txn.WithMaxAttempts(20),
				txn.OnRetry(func(n int, err error, _ time.Duration) {
					retried = append(retried, err)
					if n == 4 {
						proxy.Up()
					}
				}))
			if err != nil {
				t.Fatal(err)
			}
			if len(retried) != 4 {
				t.Errorf("%d retries, want 4 (the server came back during the fourth sleep)", len(retried))
			}
			sawStartingUp := false
			for _, err := range retried {
				if !errors.Is(err, pgcc.ErrConnectionLost) {
					t.Errorf("retried %v, want ErrConnectionLost", err)
				}
				sawStartingUp = sawStartingUp || pgcc.SQLState(err) == pgerrcode.CannotConnectNow
			}
			if sawStartingUp != startingUp {
				t.Errorf("a 57P03 was retried: %v, want %v", sawStartingUp, startingUp)
			}
			if b := balance(t, db); b != 102 {
				t.Errorf("balance %d, want 102", b)
			}
		})
	}
}

// TestOutageOutlastingTheAttempts: the server does not come back in time. The error says the attempts ran
// out, and that the connection was lost: nothing was committed.
func TestOutageOutlastingTheAttempts(t *testing.T) {
	t.Parallel()
	db, proxy, _, pool := proxied(t)
	ctx := context.Background()
	proxy.Down(false)
	calls := 0
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error { calls++; return increment(ctx, tx) },
		fastRetry, txn.WithMaxAttempts(3))
	var exhausted *pgcc.RetriesExhaustedError
	if !errors.As(err, &exhausted) || exhausted.Attempts != 3 || !errors.Is(err, pgcc.ErrConnectionLost) {
		t.Fatalf("err = %v, want RetriesExhausted after 3 attempts, matching ErrConnectionLost", err)
	}
	if calls != 0 {
		t.Errorf("fn ran %d times without a connection", calls)
	}
	proxy.Up()
	if b := balance(t, db); b != 100 {
		t.Errorf("balance %d, want 100", b)
	}
}

// TestReadOnlyServer: a server that accepts no writes (a standby, a demoted primary; here a database
// whose sessions start read-only) answers a write with 25006. Nothing committed; Run closes that connection
// so that the pool opens a new one, and retries. With ReadOnly() the 25006 is the caller's own mistake and
// is returned at once; on a single connection it is returned too, and the connection kept.
func TestReadOnlyServer(t *testing.T) {
	t.Parallel()
	db, _ := setup(t, 1)
	admin := db.Conn(t)
	ctx := context.Background()
	readOnly := func(on bool) {
		t.Helper()
		sql := fmt.Sprintf("ALTER DATABASE %s RESET default_transaction_read_only", pgx.Identifier{db.Name}.Sanitize())
		if on {
			sql = fmt.Sprintf("ALTER DATABASE %s SET default_transaction_read_only = on", pgx.Identifier{db.Name}.Sanitize())
		}
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	readOnly(true)
	pool := db.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 2 })
	var pids []uint32
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		pids = append(pids, tx.Conn().PgConn().PID())
		return increment(ctx, tx)
	}, fastRetry, txn.OnRetry(func(_ int, err error, _ time.Duration) {
		if pgcc.SQLState(err) != pgerrcode.ReadOnlySQLTransaction {
			t.Errorf("retried %v, want 25006", err)
		}
		readOnly(false) // the new primary is reachable now
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 2 || pids[0] == pids[1] {
		t.Errorf("attempts ran on backends %v, want two different ones", pids)
	}

	readOnly(true)
	t.Cleanup(func() { readOnly(false) })
	fresh := db.Pool(t)
	calls := 0
	err = txn.Run(ctx, fresh, func(ctx context.Context, tx pgx.Tx) error { calls++; return increment(ctx, tx) },
		txn.WithIsolation(pgx.ReadCommitted), txn.ReadOnly(), fastRetry)
	if pgcc.SQLState(err) != pgerrcode.ReadOnlySQLTransaction || calls != 1 {
		t.Errorf("ReadOnly(): err = %v after %d calls, want 25006 at once", err, calls)
	}
	conn := db.Conn(t)
	err = txn.Run(ctx, conn, increment, fastRetry)
	if pgcc.SQLState(err) != pgerrcode.ReadOnlySQLTransaction || conn.IsClosed() {
		t.Errorf("single connection: err = %v, closed %v; want 25006 and the connection kept", err, conn.IsClosed())
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
}

// TestBackendTerminatedBeforeFinalFlight: the backend is terminated after fn's read and before the flight
// that carries the final write and COMMIT. The server's FATAL is the answer to the final write, which comes
// before COMMIT in that flight, so COMMIT never ran: the attempt is lost, not commit-unknown, and Run retries
// it on a fresh connection; the increment is applied once.
func TestBackendTerminatedBeforeFinalFlight(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 1, func(c *pgxpool.Config) {
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	ctx := context.Background()
	admin := db.Conn(t)
	var retried []error
	calls := 0
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		var b int
		if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = 1 FOR UPDATE").Scan(&b); err != nil {
			return err
		}
		if calls == 1 {
			if err := terminate(ctx, admin, tx.Conn().PgConn().PID()); err != nil {
				return err
			}
		}
		return txn.Final(tx, "UPDATE accounts SET balance = $1 WHERE id = 1", b+1)
	}, fastRetry, txn.OnRetry(func(_ int, err error, _ time.Duration) { retried = append(retried, err) }))
	if err != nil {
		t.Fatalf("Run = %v, want nil after a retry", err)
	}
	if len(retried) != 1 || !errors.Is(retried[0], pgcc.ErrConnectionLost) || calls != 2 {
		t.Fatalf("retried %v with %d calls of fn; want one ErrConnectionLost", retried, calls)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
}

// TestLostCommitLookUpTakesAnIdleConnection: when opening a connection is slow (a loaded server forks its
// backends slowly; here the pool's BeforeConnect takes 5 s) and the pool has an idle one, the key's look-up
// takes the idle one and settles the lost COMMIT at once, instead of waiting for its own connection.
func TestLostCommitLookUpTakesAnIdleConnection(t *testing.T) {
	t.Parallel()
	var slow atomic.Bool
	db, proxy, _, pool := proxied(t, func(c *pgxpool.Config) {
		c.MaxConns = 2
		c.BeforeConnect = func(ctx context.Context, _ *pgx.ConnConfig) error {
			if !slow.Load() {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Second):
				return nil
			}
		}
	})
	ctx := context.Background()
	// Two connections opened and left idle: one for the transaction, one for the look-up.
	c1, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c1.Release()
	c2.Release()
	slow.Store(true)
	proxy.LoseReply(1, pgfailtest.IsCommit)
	start := time.Now()
	err = txn.Run(ctx, pool, increment, txn.WithIdempotencyKey("idle connection"), fastRetry)
	took := time.Since(start)
	proxy.AwaitFault()
	if err != nil {
		t.Fatalf("Run = %v, want nil: the look-up finds the commit", err)
	}
	if took > 2500*time.Millisecond {
		t.Errorf("Run took %v: the look-up waited for a new connection with an idle one in the pool", took)
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
	// The lost connection counts as acquired until its destructor has closed it, in the background.
	if n := testdb.AwaitReleased(pool, testdb.LeakGrace); n != 0 {
		t.Errorf("%d connections left acquired", n)
	}
	t.Logf("Run returned after %v", took)
}

// TestConnectionSlotsFullIsRetried: a server whose connection slots are all taken refuses a new connection
// with FATAL 53300 (too_many_connections; here the role's CONNECTION LIMIT, one connection, held by another
// session). Nothing was sent: Run waits with its backoff and commits once the slot frees. When none frees, the
// attempts run out with ErrConnectionLost, the 53300 reachable through it, and fn never ran.
func TestConnectionSlotsFullIsRetried(t *testing.T) {
	t.Parallel()
	db, _ := setup(t, 1)
	limited := &pgtest.DB{Name: db.Name, DSN: db.LimitedRole(t, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder, err := pgx.Connect(ctx, limited.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.WithoutCancel(ctx))
	pool := limited.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 1 })

	// No slot frees: three attempts, each refused.
	calls := 0
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error { calls++; return increment(ctx, tx) },
		fastRetry, txn.WithMaxAttempts(3))
	var exhausted *pgcc.RetriesExhaustedError
	if !errors.As(err, &exhausted) || exhausted.Attempts != 3 || !errors.Is(err, pgcc.ErrConnectionLost) ||
		pgcc.SQLState(err) != pgerrcode.TooManyConnections || calls != 0 {
		t.Fatalf("err = %v after %d calls of fn; want RetriesExhausted after 3 attempts, matching ErrConnectionLost, with the 53300, and no call", err, calls)
	}

	// The slot frees during the retries: Run commits, once.
	var retried []error
	// The backend of the closed session ends a moment later: the attempts are left to ctx.
	err = txn.Run(ctx, pool, increment, fastRetry, txn.WithMaxAttempts(txn.UnlimitedAttempts),
		txn.OnRetry(func(n int, err error, _ time.Duration) {
			retried = append(retried, err)
			if n == 2 {
				if err := holder.Close(ctx); err != nil {
					t.Error(err)
				}
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	if len(retried) < 2 {
		t.Errorf("%d retries, want at least 2 (the slot was freed during the second sleep)", len(retried))
	}
	for _, err := range retried {
		if !errors.Is(err, pgcc.ErrConnectionLost) {
			t.Errorf("retried %v, want ErrConnectionLost", err)
		}
	}
	if b := balance(t, db); b != 101 {
		t.Errorf("balance %d, want 101", b)
	}
}
