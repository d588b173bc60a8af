package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
)

// TestStringKeyIsStable pins StringKey's definition to vectors computed by an independent implementation
// (FNV-1a 64 over the namespace's length as 8 big-endian bytes, the namespace and the name, top bit set): a
// change here breaks every deployed key. docs/pessimistic.md lists the same vectors.
func TestStringKeyIsStable(t *testing.T) {
	t.Parallel()
	for _, v := range []struct {
		namespace, name string
		want            uint64
	}{
		{"billing", "invoice-run", 0xcf7923046432f1ea},
		{"", "", 0xa8c7f832281a39c5},
		{"a", "bc", 0xef8368d5883b9dd6},
		{"ab", "c", 0xea4430cab4e3cf71},
		{"imports", "tenant-42", 0xedd2b5ab22caadeb},
		{"a\x00b", "c", 0xcd44e16dc1b833e2},
		{"a", "\x00bc", 0xe466cdd849023bf8},
	} {
		if got := lock.StringKey(v.namespace, v.name); uint64(got) != v.want {
			t.Errorf("StringKey(%q, %q) = %#x, want %#x", v.namespace, v.name, uint64(got), v.want)
		}
	}
	// Pairs that a NUL separator could not tell apart are different keys.
	distinct := [][2]string{{"a", "bc"}, {"ab", "c"}, {"a\x00b", "c"}, {"a", "b\x00c"}, {"a\x00", "bc"}, {"", "a\x00bc"}, {"x", ""}, {"", "x"}}
	seen := map[pgcc.AdvisoryKey][2]string{}
	for _, p := range distinct {
		k := lock.StringKey(p[0], p[1])
		if prev, ok := seen[k]; ok {
			t.Errorf("StringKey(%q, %q) = StringKey(%q, %q)", p[0], p[1], prev[0], prev[1])
		}
		seen[k] = p
		if k >= 0 {
			t.Errorf("StringKey(%q, %q) = %d, want a negative key (the range reserved for StringKey)", p[0], p[1], k)
		}
	}
}

func TestXactLockNoWaitAndTry(t *testing.T) {
	t.Parallel()
	pool := setup(t, 0)
	ctx := context.Background()
	key := lock.StringKey("pgcc-test", "xact")
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if err := lock.XactLock(ctx, holder, key); err != nil {
		t.Fatal(err)
	}
	holderPID := int(holder.Conn().PgConn().PID())

	inTx(t, pool, func(tx pgx.Tx) {
		ok, err := lock.TryXactLock(ctx, tx, key)
		if err != nil || ok {
			t.Fatalf("TryXactLock on a held key = %v, %v; want false", ok, err)
		}
		err = lock.XactLock(ctx, tx, key, lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool))
		if !errors.Is(err, pgcc.ErrLockNotAvailable) {
			t.Fatalf("NoWait = %v, want ErrLockNotAvailable", err)
		}
		le := lockError(t, err)
		if le.Advisory != key || le.Table != "" {
			t.Errorf("LockError names key %d table %q", le.Advisory, le.Table)
		}
		checkBlockers(t, le, holderPID)
		// A shared lock is refused too, while a different key is free.
		if ok, err := lock.TryXactLock(ctx, tx, key, lock.WithStrength(lock.ForShare)); err != nil || ok {
			t.Errorf("shared try on an exclusively held key = %v, %v", ok, err)
		}
		if ok, err := lock.TryXactLock(ctx, tx, key+1); err != nil || !ok {
			t.Errorf("try on a free key = %v, %v", ok, err)
		}
	})
	inTx(t, pool, func(tx pgx.Tx) {
		start := time.Now()
		err := lock.XactLock(ctx, tx, key, lock.WithTimeout(150*time.Millisecond))
		if !errors.Is(err, pgcc.ErrLockNotAvailable) || time.Since(start) < 150*time.Millisecond {
			t.Errorf("timeout = %v after %v", err, time.Since(start))
		}
	})
	// Released at the end of the holder's transaction.
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	inTx(t, pool, func(tx pgx.Tx) {
		if err := lock.XactLock(ctx, tx, key, lock.WithWait(lock.NoWait)); err != nil {
			t.Errorf("after the holder's rollback: %v", err)
		}
	})
}

func TestSessionLockReleaseAndReuse(t *testing.T) {
	t.Parallel()
	pool := setup(t, 0)
	ctx := context.Background()
	key := lock.StringKey("pgcc-test", "session")
	h, err := lock.SessionLock(ctx, pool, key)
	if err != nil {
		t.Fatal(err)
	}
	if h.Key() != key || h.PID() == 0 {
		t.Errorf("Held key %d pid %d", h.Key(), h.PID())
	}
	// The lock outlives transactions on its connection and blocks others.
	if _, ok, err := lock.TrySessionLock(ctx, pool, key); err != nil || ok {
		t.Fatalf("TrySessionLock on a held key = %v, %v", ok, err)
	}
	_, err = lock.SessionLock(ctx, pool, key, lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool))
	if !errors.Is(err, pgcc.ErrLockNotAvailable) {
		t.Fatalf("NoWait = %v", err)
	}
	checkBlockers(t, lockError(t, err), h.PID())
	if _, err := lock.SessionLock(ctx, pool, key, lock.WithTimeout(100*time.Millisecond)); !errors.Is(err, pgcc.ErrLockNotAvailable) {
		t.Fatalf("timeout = %v", err)
	}
	// Only the holder's connection is out of the pool; the failed attempts gave theirs back.
	if n := pool.Stat().AcquiredConns(); n != 1 {
		t.Errorf("acquired = %d, want 1 (the holder)", n)
	}
	// The timeout was scoped to the statement: the connections given back have lock_timeout 0.
	var settings []string
	conns := make([]*pgxpool.Conn, 0, 3)
	for range 3 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var s string
		if err := c.QueryRow(ctx, "SHOW lock_timeout").Scan(&s); err != nil {
			t.Fatal(err)
		}
		settings = append(settings, s)
	}
	for _, c := range conns {
		c.Release()
	}
	for _, s := range settings {
		if s != "0" {
			t.Errorf("a pool connection has lock_timeout %q", s)
		}
	}

	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// Taken with a timeout (set_config and the lock in one implicit transaction), the lock outlives that
	// transaction.
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ht, err := lock.SessionLock(tctx, pool, key+1, lock.WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := lock.TrySessionLock(ctx, pool, key+1); err != nil || ok {
		t.Errorf("lock taken with a timeout not held afterwards: %v, %v", ok, err)
	}
	if err := ht.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Release(ctx); !errors.Is(err, pgcc.ErrNotHeld) {
		t.Errorf("second Release = %v, want ErrNotHeld", err)
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("acquired after release = %d", n)
	}
	h2, ok, err := lock.TrySessionLock(ctx, pool, key)
	if err != nil || !ok {
		t.Fatalf("TrySessionLock after release = %v, %v", ok, err)
	}
	if err := h2.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// thisDB restricts a pg_locks query to the test's own database: pg_locks shows the whole server, where other
// tests take advisory locks with the same keys in their own databases.
const thisDB = "(SELECT oid FROM pg_database WHERE datname = current_database())"

// TestSessionLockCancelWhileWaiting: a SessionLock cancelled while it waits returns context.Canceled and
// leaves nothing behind: its connection goes back to the pool holding nothing, or, when the server did not
// acknowledge the cancel request within lock.CancelGrace (a loaded machine), is closed. A backend whose
// client closed the connection while it waited for a lock stays in the lock's queue until it is granted
// the lock (PostgreSQL does not look at the socket while it waits, client_connection_check_interval being
// off by default) and exits then; the test checks that it does, once the holder releases.
func TestSessionLockCancelWhileWaiting(t *testing.T) {
	t.Parallel()
	pool := setup(t, 0, func(c *pgxpool.Config) { c.MaxConns = 3 })
	key := pgcc.AdvisoryKey(42)
	h, err := lock.SessionLock(context.Background(), pool, key)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := lock.SessionLock(ctx, pool, key)
		done <- err
	}()
	// Wait until some backend waits on the advisory lock (30 s: on a loaded machine a statement can take
	// more than 10 s to reach its lock).
	var waiter int64
	deadline := time.Now().Add(30 * time.Second)
	for {
		waiter = queryInt(t, pool, "SELECT coalesce(min(pid), 0) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "+thisDB)
		if waiter != 0 {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("nobody waited")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	err = <-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	lockError(t, err)
	if n := pool.Stat().AcquiredConns(); n != 1 {
		t.Errorf("acquired = %d, want 1 (the holder)", n)
	}
	// The server cancelled the wait (57014) and the connection went back to the pool: pg_locks must show the
	// holder's lock alone at once. Otherwise the connection was closed, and its backend may still wait.
	closed := pgCode(err) != pgerrcode.QueryCanceled
	if closed {
		t.Logf("the cancel request was not acknowledged within %v: the connection was closed (%v)", lock.CancelGrace, err)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1 AND database = "+thisDB,
		int64(h.PID())); n != 1 {
		t.Errorf("the holder has %d advisory locks, want 1", n)
	}
	others := func() []advisoryLock { return advisoryLocks(t, pool, h.PID()) }
	left := others()
	if len(left) == 0 {
		return
	}
	if !closed {
		t.Fatalf("the wait was cancelled and the connection kept, yet pg_locks shows advisory locks besides the holder's: %+v", left)
	}
	// Only the closed connection's backend may be left, waiting: while the holder keeps the lock, nobody
	// else may hold it.
	if len(left) != 1 || left[0].PID != waiter || left[0].Granted {
		t.Fatalf("pg_locks besides the holder's: %+v, want only the closed waiter's backend %d, waiting", left, waiter)
	}
	t.Logf("the closed connection's backend still waits: %+v; releasing the holder", left)
	if err := h.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Granted the lock, the orphaned backend finds its client gone and exits, releasing it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n := queryInt(t, pool, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "+thisDB)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d advisory locks 10s after the holder released: %+v", n, others())
		}
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("acquired = %d after the holder's release, want 0", n)
	}
}

// advisoryLock is one advisory lock of pg_locks, with its backend's state.
type advisoryLock struct {
	PID       int64
	Granted   bool
	State     string
	WaitEvent string
}

// advisoryLocks lists the advisory locks of the test's database, but those of backend except.
func advisoryLocks(t *testing.T, pool *pgxpool.Pool, except int) []advisoryLock {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT l.pid, l.granted, coalesce(a.state, ''), coalesce(a.wait_event_type, '')
		FROM pg_locks l LEFT JOIN pg_stat_activity a USING (pid)
		WHERE l.locktype = 'advisory' AND l.database = `+thisDB+` AND l.pid <> $1 ORDER BY l.pid`, int64(except))
	if err != nil {
		t.Fatal(err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[advisoryLock])
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestSessionLockDiesWithBackend: terminating the holder's backend releases the lock; Release then reports
// the broken connection and closes it instead of returning it to the pool.
func TestSessionLockDiesWithBackend(t *testing.T) {
	t.Parallel()
	pool := setup(t, 0)
	ctx := context.Background()
	key := lock.StringKey("pgcc-test", "terminated")
	h, err := lock.SessionLock(ctx, pool, key)
	if err != nil {
		t.Fatal(err)
	}
	pid := h.PID()
	if _, ok, _ := lock.TrySessionLock(ctx, pool, key); ok {
		t.Fatal("lock not held")
	}
	var terminated bool
	if err := pool.QueryRow(ctx, "SELECT pg_terminate_backend($1, 5000)", int64(pid)).Scan(&terminated); err != nil || !terminated {
		t.Fatalf("terminate %d: %v %v", pid, terminated, err)
	}
	h2, ok, err := lock.TrySessionLock(ctx, pool, key)
	if err != nil || !ok {
		t.Fatalf("TrySessionLock after the holder died = %v, %v", ok, err)
	}
	if err := h.Release(ctx); err == nil {
		t.Error("Release on a terminated session reported success")
	}
	if err := h2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for pool.Stat().AcquiredConns() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("acquired = %d after both releases", n)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", int64(pid)); n != 0 {
		t.Errorf("backend %d still there", pid)
	}
}
