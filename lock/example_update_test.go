package lock_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
)

// Update withdraws from an account in two round trips: the row is locked with BEGIN in the first, the
// UPDATE of the balance travels with COMMIT in the second. A withdrawal the function refuses writes nothing;
// one the database refuses (the CHECK constraint) commits nothing and names the row.
func ExampleUpdate() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_lock_update;
		CREATE TABLE example_lock_update (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= -50));
		INSERT INTO example_lock_update VALUES (1, 100)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_lock_update")
	table := accounts("example_lock_update")

	withdraw := func(amount int64, overdraft bool) (Account, error) {
		return lock.Update(ctx, pool, table, pgcc.Key{1}, func(_ context.Context, a *Account) error {
			if a.Balance < amount && !overdraft {
				return fmt.Errorf("account %d has %d, needs %d", a.ID, a.Balance, amount)
			}
			a.Balance -= amount
			return nil
		})
	}
	fmt.Println(withdraw(70, false))
	fmt.Println(withdraw(70, false))
	_, err = withdraw(90, true) // below the CHECK's -50: refused by the server, nothing committed
	var writeErr *lock.WriteError
	var pgErr *pgconn.PgError
	if errors.As(err, &writeErr) && errors.As(err, &pgErr) {
		fmt.Println(writeErr.Table, writeErr.Keys, pgErr.ConstraintName)
	}
	fmt.Println(withdraw(0, false))
	// Output:
	// {1 30} <nil>
	// {0 0} account 1 has 30, needs 70
	// "example_lock_update" [(1)] example_lock_update_balance_check
	// {1 30} <nil>
}

// A queue worker claims a batch with SKIP LOCKED and marks it done in the same transaction, two round trips
// in all: concurrent workers get disjoint batches, and every job is done once.
func ExampleClaimAndUpdate() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_lock_claimupdate;
		CREATE TABLE example_lock_claimupdate (id bigint PRIMARY KEY, payload text NOT NULL, done bool NOT NULL DEFAULT false);
		INSERT INTO example_lock_claimupdate SELECT g, 'mail ' || g FROM generate_series(1, 5) g`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_lock_claimupdate")
	type Mail struct {
		ID      int64  `db:"id"`
		Payload string `db:"payload"`
		Done    bool   `db:"done"`
	}
	mails, err := lock.NewTable[Mail]("example_lock_claimupdate")
	if err != nil {
		fmt.Println(err)
		return
	}
	for {
		batch, err := lock.ClaimAndUpdate(ctx, pool, mails, 2, func(_ context.Context, batch []Mail) error {
			for i := range batch {
				// send batch[i].Payload …
				batch[i].Done = true
			}
			return nil
		}, lock.Where("NOT done"))
		if err != nil || len(batch) == 0 {
			fmt.Println("stopped:", err)
			break
		}
		fmt.Println(batch)
	}
	// Output:
	// [{1 mail 1 true} {2 mail 2 true}]
	// [{3 mail 3 true} {4 mail 4 true}]
	// [{5 mail 5 true}]
	// stopped: <nil>
}
