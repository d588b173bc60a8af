package lock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lock"
)

// pooledExecModes are the pgx query exec modes that can work behind PgBouncer 1.18 in transaction mode.
var pooledExecModes = []pgx.QueryExecMode{pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}

// setupPooled is setup through a PgBouncer of the test's own in pool mode mode, with the given exec mode.
// direct is a pool on the same database without the pooler.
func setupPooled(t *testing.T, n int, mode string, exec pgx.QueryExecMode, configure ...func(*pgxpool.Config)) (pooled, direct *pgxpool.Pool) {
	t.Helper()
	db := pgtest.NewDB(t)
	direct = db.Pool(t)
	createItems(t, direct, n)
	port := startPgBouncer(t, db, mode)
	pooled = db.Pool(t, append([]func(*pgxpool.Config){viaPgBouncer(port, exec)}, configure...)...)
	return pooled, direct
}

// TestSessionLockRefusedUnderTransactionPooling: 16 workers, each on its own pool through PgBouncer in
// transaction mode, try 20 times each to take one session lock and hold it for a moment. Every attempt is
// refused with ErrTransactionPooling, and the lock is never held twice at once, nor left held on a server
// connection.
func TestSessionLockRefusedUnderTransactionPooling(t *testing.T) {
	t.Parallel()
	for _, mode := range pooledExecModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			db := pgtest.NewDB(t)
			direct := db.Pool(t)
			port := startPgBouncer(t, db, "transaction")
			const workers, tries = 8, 20
			key := lock.StringKey("pgcc-test", "pooled")
			var holding, maxHolding, granted, refused atomic.Int64
			var wg sync.WaitGroup
			errs := make([]error, workers)
			for w := range workers {
				pool := db.Pool(t, viaPgBouncer(port, mode), func(c *pgxpool.Config) { c.MaxConns = 2 })
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx := context.Background()
					for range tries {
						h, ok, err := lock.TrySessionLock(ctx, pool, key)
						switch {
						case errors.Is(err, pgcc.ErrTransactionPooling):
							refused.Add(1)
							continue
						case err != nil:
							errs[w] = err
							return
						case !ok:
							continue
						}
						granted.Add(1)
						n := holding.Add(1)
						for {
							m := maxHolding.Load()
							if n <= m || maxHolding.CompareAndSwap(m, n) {
								break
							}
						}
						time.Sleep(time.Millisecond)
						holding.Add(-1)
						_ = h.Release(ctx)
					}
				}()
			}
			wg.Wait()
			for w, err := range errs {
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
				}
			}
			t.Logf("%s: %d refused with ErrTransactionPooling, %d granted, at most %d held at once", mode, refused.Load(), granted.Load(), maxHolding.Load())
			if maxHolding.Load() > 1 {
				t.Errorf("the lock was held by %d clients at once", maxHolding.Load())
			}
			if granted.Load() != 0 {
				t.Errorf("%d session locks granted through transaction pooling, want every attempt refused", granted.Load())
			}
			var left int64
			if err := direct.QueryRow(context.Background(), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "+thisDB).Scan(&left); err != nil {
				t.Fatal(err)
			}
			if left != 0 {
				t.Errorf("%d advisory locks left held on server connections", left)
			}
		})
	}
}

// TestSessionLockRefusedQuietPooler: one client alone on a transaction pooler, nothing else running (the
// pooler hands the same server connection back every time), is refused too: the second client connection
// of the check is given that server connection.
func TestSessionLockRefusedQuietPooler(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	port := startPgBouncer(t, db, "transaction")
	pool := db.Pool(t, viaPgBouncer(port, pgx.QueryExecModeExec), func(c *pgxpool.Config) { c.MaxConns = 1 })
	ctx := context.Background()
	if _, _, err := lock.TrySessionLock(ctx, pool, 7); !errors.Is(err, pgcc.ErrTransactionPooling) {
		t.Errorf("TrySessionLock = %v, want ErrTransactionPooling", err)
	}
	_, err := lock.SessionLock(ctx, pool, 7, lock.WithTimeout(time.Second))
	if !errors.Is(err, pgcc.ErrTransactionPooling) || !strings.Contains(err.Error(), "session mode") {
		t.Errorf("SessionLock = %v, want ErrTransactionPooling naming the fix", err)
	}
	t.Logf("%v", err)
}

// TestSessionLockThroughSessionPooling: in PgBouncer's session mode a session lock works, its PID is the
// real backend's (not PgBouncer's cancel key), and it excludes other clients.
func TestSessionLockThroughSessionPooling(t *testing.T) {
	t.Parallel()
	pooled, direct := setupPooled(t, 0, "session", pgx.QueryExecModeCacheStatement)
	ctx := context.Background()
	key := lock.StringKey("pgcc-test", "session-mode")
	h, err := lock.SessionLock(ctx, pooled, key)
	if err != nil {
		t.Fatal(err)
	}
	var backend bool
	if err := direct.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND granted)", int64(h.PID())).Scan(&backend); err != nil {
		t.Fatal(err)
	}
	if !backend {
		t.Errorf("Held.PID() = %d is not the backend holding the lock", h.PID())
	}
	if _, ok, err := lock.TrySessionLock(ctx, pooled, key); err != nil || ok {
		t.Errorf("second client through the pooler: %v, %v; want not granted", ok, err)
	}
	_, err = lock.SessionLock(ctx, pooled, key, lock.WithWait(lock.NoWait), lock.WithDiagnostics(direct))
	checkBlockers(t, lockError(t, err), h.PID())
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLockThroughTransactionPooling runs each lock feature through PgBouncer in transaction mode with every
// exec mode that can work there: typed parameters, real backend pids in blockers.
func TestLockThroughTransactionPooling(t *testing.T) {
	t.Parallel()
	for _, mode := range pooledExecModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			pooled, direct := setupPooled(t, 10, "transaction", mode)
			exerciseFeatures(t, pooled, direct)
		})
	}
}

// exerciseFeatures runs every row and transaction-scoped lock call once on pool, checking results; direct
// reaches the same database without a pooler.
func exerciseFeatures(t *testing.T, pool, direct *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{3}); err != nil {
			return fmt.Errorf("Row: %w", err)
		}
		keys, err := lock.Rows(ctx, tx, plainItems(), []pgcc.Key{{5}, {4}, {int64(6)}})
		if err != nil || fmt.Sprint(keys) != "[(5) (4) (6)]" {
			return fmt.Errorf("Rows = %v, %v", keys, err)
		}
		rows, err := lock.Load(ctx, tx, itemsTable(), []pgcc.Key{{2}, {1}})
		if err != nil || len(rows) != 2 || rows[0].ID != 2 || rows[1].ID != 1 {
			return fmt.Errorf("Load = %v, %v", rows, err)
		}
		pairs, err := lock.Load(ctx, tx, pairsTable(), []pgcc.Key{{"b", 1}, {"a", 2}})
		if err != nil || len(pairs) != 2 || pairs[0].A != "b" || pairs[1].B != 2 {
			return fmt.Errorf("Load pairs = %v, %v", pairs, err)
		}
		sel, err := lock.Select(ctx, tx, itemsTable(), lock.Where("id > $1", 7), lock.OrderBy("id DESC"), lock.Limit(2))
		if err != nil || len(sel) != 2 || sel[0].ID != 10 {
			return fmt.Errorf("Select = %v, %v", sel, err)
		}
		if err := lock.XactLock(ctx, tx, lock.StringKey("pgcc-test", "xact"), lock.WithTimeout(time.Second)); err != nil {
			return fmt.Errorf("XactLock: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A NOWAIT failure names the holder by its real backend pid, through the pooler.
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	var holderPID int
	if err := holder.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&holderPID); err != nil {
		t.Fatal(err)
	}
	if err := lock.Row(ctx, holder, itemsTable(), pgcc.Key{1}); err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool))
	})
	le := lockError(t, err)
	if !errors.Is(err, pgcc.ErrLockNotAvailable) {
		t.Errorf("NOWAIT through the pooler: %v, want ErrLockNotAvailable", err)
	}
	checkBlockers(t, le, holderPID)
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithTimeout(50*time.Millisecond), lock.WithDiagnostics(direct))
	})
	le = lockError(t, err)
	if !errors.Is(err, pgcc.ErrLockNotAvailable) {
		t.Errorf("timeout through the pooler: %v, want ErrLockNotAvailable", err)
	}
	checkBlockers(t, le, holderPID)
}
