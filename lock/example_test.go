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

// Load locks both accounts of a transfer and returns them in the order asked, whichever way the money moves
// (locking itself happens in key order, so transfers in opposite directions cannot deadlock): the
// select_for_update of Django or lock! of Rails. The transfer first records an order whose foreign keys
// key-share-lock both accounts; the default strength, FOR NO KEY UPDATE, does not conflict with that, where
// FOR UPDATE would deadlock two such transfers (docs/pessimistic.md).
func ExampleLoad() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_lock_orders, example_lock_load;
		CREATE TABLE example_lock_load (id int PRIMARY KEY, balance bigint NOT NULL);
		CREATE TABLE example_lock_orders (id bigserial PRIMARY KEY, from_id int REFERENCES example_lock_load, to_id int REFERENCES example_lock_load, amount bigint);
		INSERT INTO example_lock_load VALUES (1, 100), (2, 0)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_lock_orders, example_lock_load")
	table := accounts("example_lock_load")

	transfer := func(from, to int32, amount int64) error {
		return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "INSERT INTO example_lock_orders (from_id, to_id, amount) VALUES ($1, $2, $3)", from, to, amount); err != nil {
				return err
			}
			rows, err := lock.Load(ctx, tx, table, []pgcc.Key{{from}, {to}}, lock.WithTimeout(2*time.Second))
			if err != nil {
				return err
			}
			src, dst := rows[0], rows[1]
			if src.Balance < amount {
				return fmt.Errorf("account %d has %d, needs %d", src.ID, src.Balance, amount)
			}
			_, err = tx.Exec(ctx, "UPDATE example_lock_load SET balance = CASE id WHEN $1 THEN $3::bigint ELSE $4::bigint END WHERE id IN ($1, $2)",
				src.ID, dst.ID, src.Balance-amount, dst.Balance+amount)
			return err
		})
	}
	fmt.Println(transfer(1, 2, 70))
	fmt.Println(transfer(2, 1, 20))
	fmt.Println(transfer(1, 2, 60))

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := lock.Load(ctx, tx, table, []pgcc.Key{{1}, {7}})
		return err
	})
	fmt.Println(errors.Is(err, pgcc.ErrNotFound), err)
	// Output:
	// <nil>
	// <nil>
	// account 1 has 50, needs 60
	// true pgcc: "example_lock_load" id=7 not found
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
	table := accounts("example_lock_lockerror")

	holder, err := pool.Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer holder.Rollback(ctx)
	if err := lock.Row(ctx, holder, table, pgcc.Key{1}); err != nil {
		fmt.Println(err)
		return
	}
	var holderPID int
	_ = holder.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&holderPID)

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return lock.Row(ctx, tx, table, pgcc.Key{1}, lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool))
	})
	var lockErr *pgcc.LockError
	if errors.As(err, &lockErr) {
		fmt.Println("not available:", errors.Is(err, pgcc.ErrLockNotAvailable))
		fmt.Println("table:", lockErr.Table, "keys:", lockErr.Keys)
		fmt.Println("held by the holder:", len(lockErr.Blockers) == 1 && lockErr.Blockers[0].PID == holderPID)
	}
	// Output:
	// not available: true
	// table: "example_lock_lockerror" keys: [(1)]
	// held by the holder: true
}

// Job is a row of a work queue that has no version column, described with lock.NewTable.
type Job struct {
	ID      int64  `db:"id"`
	Payload string `db:"payload"`
}

// Workers claim disjoint batches of a queue with SKIP LOCKED, oldest first, and delete what they processed
// before committing.
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
		CREATE TABLE example_lock_claim (id bigint PRIMARY KEY, payload text NOT NULL, queue text NOT NULL);
		INSERT INTO example_lock_claim SELECT g, 'job ' || g, 'mail' FROM generate_series(1, 5) g`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_lock_claim")
	jobs, err := lock.NewTable[Job]("example_lock_claim")
	if err != nil {
		fmt.Println(err)
		return
	}

	first, err := pool.Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer first.Rollback(ctx)
	a, _ := lock.Claim(ctx, first, jobs, 2, lock.Where("queue = $1", "mail"))
	err = pgx.BeginFunc(ctx, pool, func(second pgx.Tx) error {
		b, err := lock.Claim(ctx, second, jobs, 2, lock.Where("queue = $1", "mail"), lock.OrderBy("id DESC"))
		fmt.Println("first:", a, "second:", b)
		return err
	})
	fmt.Println(err)
	// Output:
	// first: [{1 job 1} {2 job 2}] second: [{5 job 5} {4 job 4}]
	// <nil>
}

// Select locks the rows a predicate chooses and waits for those another transaction holds: Django's
// filter(…).order_by(…).select_for_update()[:n].
func ExampleSelect() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_lock_select;
		CREATE TABLE example_lock_select (id int PRIMARY KEY, balance bigint NOT NULL);
		INSERT INTO example_lock_select VALUES (1, 500), (2, 20), (3, 900), (4, 10)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_lock_select")

	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		rich, err := lock.Select(ctx, tx, accounts("example_lock_select"),
			lock.Where("balance >= $1", 100), lock.OrderBy("balance DESC"), lock.Limit(2))
		fmt.Println(rich)
		return err
	})
	fmt.Println(err)
	// Output:
	// [{3 900} {1 500}]
	// <nil>
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

// A singleton worker holds a session lock for as long as it runs, and stops when the lock is lost (its
// connection died, so another instance may take over).
func ExampleHeld_Lost() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	h, ok, err := lock.TrySessionLock(ctx, pool, lock.StringKey("example", "singleton"))
	if err != nil || !ok {
		fmt.Println("another instance runs:", err)
		return
	}
	work := func(stop <-chan struct{}) string {
		for range 3 {
			select {
			case <-stop:
				return "lost the lock, stopping"
			case <-time.After(10 * time.Millisecond): // … one unit of work …
			}
		}
		return "done"
	}
	fmt.Println(work(h.Lost()))
	fmt.Println(h.Release(ctx))
	// Output:
	// done
	// <nil>
}
