package lock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lease"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/txn"
)

type Account struct {
	ID      int32
	Balance int64
}

// accounts describes the example table to lock; a *repo.Table[Account] would do the same.
func accounts(name string) *lock.TableDef[Account] {
	t, err := lock.NewTable[Account](name)
	if err != nil {
		panic(err)
	}
	return t
}

// Load locks both accounts of a transfer, in key order whichever way the money moves, and reads them: the
// select_for_update of Django or lock! of Rails. txn.Run retries the transaction if it ever deadlocks with a
// writer that does not lock in order.
func ExampleLoad() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_lock_load;
		CREATE TABLE example_lock_load (id int PRIMARY KEY, balance bigint NOT NULL);
		INSERT INTO example_lock_load VALUES (1, 100), (2, 0)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_lock_load")

	transfer := func(from, to int32, amount int64) error {
		return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			rows, err := lock.Load[Account](ctx, tx, accounts("example_lock_load"), []pgcc.Key{{from}, {to}}, lock.WithTimeout(2*time.Second))
			if err != nil {
				return err
			}
			balance := map[int32]int64{}
			for _, a := range rows {
				balance[a.ID] = a.Balance
			}
			if balance[from] < amount {
				return fmt.Errorf("account %d has %d, needs %d", from, balance[from], amount)
			}
			_, err = tx.Exec(ctx, `UPDATE example_lock_load SET balance = balance + CASE id WHEN $1 THEN -$3::bigint ELSE $3::bigint END
				WHERE id IN ($1, $2)`, from, to, amount)
			return err
		})
	}
	fmt.Println(transfer(1, 2, 70))
	fmt.Println(transfer(2, 1, 20))
	fmt.Println(transfer(1, 2, 60))
	// Output:
	// <nil>
	// <nil>
	// account 1 has 50, needs 60
}

// A second transaction asking for a row another holds with NOWAIT fails at once, and the error says who
// holds it.
func ExampleLockError() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_lock_lockerror;
		CREATE TABLE example_lock_lockerror (id int PRIMARY KEY, balance bigint NOT NULL);
		INSERT INTO example_lock_lockerror VALUES (1, 100)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_lock_lockerror")

	holder, err := pool.Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer holder.Rollback(ctx)
	if err := lock.Row(ctx, holder, accounts("example_lock_lockerror"), pgcc.Key{1}); err != nil {
		fmt.Println(err)
		return
	}

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return lock.Row(ctx, tx, accounts("example_lock_lockerror"), pgcc.Key{1}, lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool))
	})
	var lockErr *pgcc.LockError
	if errors.As(err, &lockErr) {
		fmt.Println("not available:", errors.Is(err, pgcc.ErrLockNotAvailable))
		fmt.Println("table:", lockErr.Table, "keys:", lockErr.Keys)
		fmt.Println("held by the holder:", len(lockErr.Blockers) == 1 && lockErr.Blockers[0].PID == int(holder.Conn().PgConn().PID()))
	}
	// Output:
	// not available: true
	// table: "example_lock_lockerror" keys: [(1)]
	// held by the holder: true
}

// Workers claim disjoint batches of a queue with SKIP LOCKED and delete what they processed before committing.
func ExampleClaim() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_lock_claim;
		CREATE TABLE example_lock_claim (id int PRIMARY KEY, balance bigint NOT NULL);
		INSERT INTO example_lock_claim SELECT g, g * 10 FROM generate_series(1, 5) g`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_lock_claim")

	first, err := pool.Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer first.Rollback(ctx)
	a, _ := lock.Claim[Account](ctx, first, accounts("example_lock_claim"), 2)
	err = pgx.BeginFunc(ctx, pool, func(second pgx.Tx) error {
		b, err := lock.Claim[Account](ctx, second, accounts("example_lock_claim"), 2, lock.Where("balance >= $1", 20))
		fmt.Println("first:", a, "second:", b)
		return err
	})
	fmt.Println(err)
	// Output:
	// first: [{1 10} {2 20}] second: [{3 30} {4 40}]
	// <nil>
}

// Only one nightly export at a time: the second caller learns who is running it, and a write guarded by a
// stale token is refused.
func ExampleLeases_TryAcquire() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	name := fmt.Sprintf("example-export-%d", time.Now().UnixNano())
	defer pool.Exec(ctx, "DELETE FROM pgcc.leases WHERE name = $1", name)

	leases := lease.New(pool)
	mine, err := leases.TryAcquire(ctx, name, "host-a", time.Minute)
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = leases.TryAcquire(ctx, name, "host-b", time.Minute)
	var held *lease.HeldError
	if errors.As(err, &held) {
		fmt.Println("already running on", held.Holder)
	}

	fmt.Println(mine.Release(ctx))
	next, err := leases.TryAcquire(ctx, name, "host-b", time.Minute)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("tokens:", mine.Token, next.Token)

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return lease.Guard(ctx, tx, name, mine.Token) // host-a, paused past its lease, tries to write
	})
	fmt.Println(errors.Is(err, pgcc.ErrFenced))
	// Output:
	// already running on host-a
	// <nil>
	// tokens: 1 2
	// true
}

// A transaction-scoped advisory lock serialises a job per tenant without a row to lock; it is released at
// COMMIT or ROLLBACK.
func ExampleXactLock() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	key := lock.StringKey("billing", "tenant-42")
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if err := lock.XactLock(ctx, tx, key, lock.WithTimeout(time.Second)); err != nil {
			return err
		}
		// Another transaction cannot take it meanwhile.
		return pgx.BeginFunc(ctx, pool, func(other pgx.Tx) error {
			ok, err := lock.TryXactLock(ctx, other, key)
			fmt.Println("taken by another:", ok)
			return err
		})
	})
	fmt.Println(err)
	// Output:
	// taken by another: false
	// <nil>
}
