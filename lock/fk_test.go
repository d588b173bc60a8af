package lock_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/txn"
)

type account struct {
	ID      int32
	Balance int64
}

// setupCheckout creates accounts 1..n (balance 1,000,000 each) and orders referencing two of them, the
// checkout of issue 13's service: inserting an order takes FOR KEY SHARE on both accounts (the foreign-key
// checks), then the accounts are locked to move the money.
func setupCheckout(t *testing.T, n int, configure ...func(*pgxpool.Config)) (*pgxpool.Pool, *lock.TableDef[account]) {
	t.Helper()
	pool := setup(t, 0, configure...)
	_, err := pool.Exec(context.Background(), `
		CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
		CREATE TABLE orders (id bigserial PRIMARY KEY, from_id int NOT NULL REFERENCES accounts, to_id int NOT NULL REFERENCES accounts, amount bigint NOT NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), "INSERT INTO accounts SELECT g, 1000000 FROM generate_series(1, $1::int) g", n); err != nil {
		t.Fatal(err)
	}
	return pool, must(lock.NewTable[account]("accounts"))
}

// checkout inserts the order first (FOR KEY SHARE on both accounts), then locks both accounts with opts and
// moves the money.
func checkout(ctx context.Context, tx pgx.Tx, accounts *lock.TableDef[account], from, to int32, opts ...lock.Option) error {
	if _, err := tx.Exec(ctx, "INSERT INTO orders (from_id, to_id, amount) VALUES ($1, $2, 1)", from, to); err != nil {
		return err
	}
	rows, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{from}, {to}}, opts...)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "UPDATE accounts SET balance = CASE id WHEN $1 THEN $3::bigint ELSE $4::bigint END WHERE id IN ($1, $2)",
		from, to, rows[0].Balance-1, rows[1].Balance+1)
	return err
}

// TestForeignKeyUpgradeDeadlock reproduces the trap deterministically: two checkouts insert their orders
// (each takes FOR KEY SHARE on accounts 1 and 2), then lock the accounts FOR UPDATE, which conflicts with the
// other's FOR KEY SHARE: each waits for the other, and PostgreSQL aborts one (40P01). With the default
// strength, FOR NO KEY UPDATE, which does not conflict with FOR KEY SHARE, the first locks at once, the second
// waits for it, and both commit.
func TestForeignKeyUpgradeDeadlock(t *testing.T) {
	t.Parallel()
	t.Run("ForUpdate deadlocks", func(t *testing.T) {
		t.Parallel()
		pool, accounts := setupCheckout(t, 2)
		errs := twoCheckouts(t, pool, accounts, lock.WithStrength(lock.ForUpdate))
		deadlocks := 0
		for _, err := range errs {
			switch {
			case err == nil:
			case errors.Is(err, pgcc.ErrDeadlock) && pgCode(err) == pgerrcode.DeadlockDetected:
				deadlocks++
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}
		if deadlocks != 1 {
			t.Errorf("%d deadlocks (%v), want 1: the lock upgrade over the foreign keys' FOR KEY SHARE", deadlocks, errs)
		}
	})
	t.Run("default strength does not", func(t *testing.T) {
		t.Parallel()
		pool, accounts := setupCheckout(t, 2)
		for _, err := range twoCheckouts(t, pool, accounts) {
			if err != nil {
				t.Errorf("checkout with the default strength: %v", err)
			}
		}
		if got := queryInt(t, pool, "SELECT sum(balance) FROM accounts"); got != 2000000 {
			t.Errorf("total = %d", got)
		}
	})
}

// twoCheckouts runs the interleaving of TestForeignKeyUpgradeDeadlock and returns each checkout's error (a
// failed one is rolled back, the other committed).
func twoCheckouts(t *testing.T, pool *pgxpool.Pool, accounts *lock.TableDef[account], opts ...lock.Option) []error {
	t.Helper()
	ctx := context.Background()
	txs := make([]pgx.Tx, 2)
	for i := range txs {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		txs[i] = tx
		if _, err := tx.Exec(ctx, "INSERT INTO orders (from_id, to_id, amount) VALUES (1, 2, 1)"); err != nil {
			t.Fatal(err)
		}
	}
	move := func(tx pgx.Tx) error {
		rows, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{int32(1)}, {int32(2)}}, opts...)
		if err == nil {
			_, err = tx.Exec(ctx, "UPDATE accounts SET balance = CASE id WHEN 1 THEN $1::bigint ELSE $2::bigint END WHERE id IN (1, 2)",
				rows[0].Balance-1, rows[1].Balance+1)
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			_ = tx.Rollback(ctx)
		}
		return err
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs[0] = move(txs[0])
	}()
	// The second starts once the first waits for a lock or has finished.
	pid := txs[0].Conn().PgConn().PID()
	deadline := time.Now().Add(30 * time.Second) // a statement took over 10 s to reach its lock on a loaded machine
	for time.Now().Before(deadline) {
		if queryInt(t, pool, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND (wait_event_type = 'Lock' OR state = 'idle')", int64(pid)) == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	errs[1] = move(txs[1])
	wg.Wait()
	return errs
}

// TestCheckoutThroughput runs the checkout with 8 workers on 4 accounts for two seconds, with the default
// strength: no deadlock, every checkout committed, money conserved. With ForUpdate it logs the deadlocks the
// same workload meets (not asserted: how many depends on timing), for docs/pessimistic.md.
func TestCheckoutThroughput(t *testing.T) {
	t.Parallel()
	for _, v := range []struct {
		name string
		opts []lock.Option
	}{{"default", nil}, {"ForUpdate", []lock.Option{lock.WithStrength(lock.ForUpdate)}}} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			const workers, accountsN = 8, 4
			pool, accounts := setupCheckout(t, accountsN, func(c *pgxpool.Config) { c.MaxConns = workers })
			var done, deadlocks atomic.Int64
			stop := time.Now().Add(2 * time.Second)
			var wg sync.WaitGroup
			errs := make([]error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx := context.Background()
					i := 0
					for time.Now().Before(stop) {
						i++
						from := int32((w+i)%accountsN + 1)
						to := int32((w+2*i+1)%accountsN + 1)
						if from == to {
							continue
						}
						err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
							return checkout(ctx, tx, accounts, from, to, v.opts...)
						}, txn.WithMaxAttempts(1))
						switch {
						case err == nil:
							done.Add(1)
						case errors.Is(err, pgcc.ErrDeadlock):
							deadlocks.Add(1)
						default:
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
			if got := queryInt(t, pool, "SELECT sum(balance) FROM accounts"); got != accountsN*1000000 {
				t.Errorf("total = %d", got)
			}
			if n := queryInt(t, pool, "SELECT count(*) FROM orders"); n < done.Load() {
				t.Errorf("%d orders for %d checkouts", n, done.Load())
			}
			t.Logf("%s: %d checkouts in 2s, %d deadlocks", v.name, done.Load(), deadlocks.Load())
			if v.opts == nil && deadlocks.Load() != 0 {
				t.Errorf("%d deadlocks with the default strength", deadlocks.Load())
			}
		})
	}
}

// TestBlockersThroughMultiXact: rows key-share-locked by two transactions (their orders' foreign keys) and
// then locked by one of them carry a MultiXact xmax; diagnostics resolve its members and name the holder,
// never the requester itself.
func TestBlockersThroughMultiXact(t *testing.T) {
	t.Parallel()
	pool, accounts := setupCheckout(t, 2)
	ctx := context.Background()
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	waiter, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Rollback(ctx)
	for _, tx := range []pgx.Tx{holder, waiter} {
		if _, err := tx.Exec(ctx, "INSERT INTO orders (from_id, to_id, amount) VALUES (1, 2, 1)"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := lock.Load(ctx, holder, accounts, []pgcc.Key{{1}, {2}}); err != nil {
		t.Fatal(err)
	}
	var holderPID int
	if err := holder.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&holderPID); err != nil {
		t.Fatal(err)
	}
	_, err = lock.Load(ctx, waiter, accounts, []pgcc.Key{{2}, {1}}, lock.WithTimeout(100*time.Millisecond), lock.WithDiagnostics(pool))
	le := lockError(t, err)
	if !errors.Is(err, pgcc.ErrLockNotAvailable) {
		t.Fatalf("err = %v", err)
	}
	checkBlockers(t, le, holderPID)
	t.Logf("%v", err)
}
