package txn_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/txn"
)

// Moving money between two accounts under SERIALIZABLE: Run retries serialization failures and deadlocks,
// so the function re-reads the balance on every attempt.
func ExampleRun() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_run_accounts;
		CREATE TABLE example_run_accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
		INSERT INTO example_run_accounts VALUES (1, 100), (2, 0)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_run_accounts")

	errInsufficient := errors.New("insufficient funds")
	transfer := func(from, to int, amount int64) error {
		return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			var balance int64
			err := tx.QueryRow(ctx, "SELECT balance FROM example_run_accounts WHERE id = $1", from).Scan(&balance)
			if err != nil {
				return err
			}
			if balance < amount {
				return errInsufficient // returned unchanged, never retried
			}
			if _, err := tx.Exec(ctx, "UPDATE example_run_accounts SET balance = balance - $2 WHERE id = $1", from, amount); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, "UPDATE example_run_accounts SET balance = balance + $2 WHERE id = $1", to, amount)
			return err
		}, txn.WithIsolation(pgx.Serializable), txn.WithLockTimeout(2*time.Second))
	}

	fmt.Println(transfer(1, 2, 70))
	fmt.Println(errors.Is(transfer(1, 2, 70), errInsufficient))
	// Output:
	// <nil>
	// true
}

// RunValue returns what the committed attempt computed.
func ExampleRunValue() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()

	next, err := txn.RunValue(ctx, pool, func(ctx context.Context, tx pgx.Tx) (int64, error) {
		var n int64
		err := tx.QueryRow(ctx, "SELECT 41 + 1").Scan(&n)
		return n, err
	}, txn.ReadOnly())
	fmt.Println(next, err)
	// Output: 42 <nil>
}

// A nested Run is a savepoint: its failure rolls back its own work and leaves the outer transaction going.
func ExampleRun_nested() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, "DROP TABLE IF EXISTS example_nested; CREATE TABLE example_nested (v text PRIMARY KEY)")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_nested")

	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO example_nested VALUES ('kept')"); err != nil {
			return err
		}
		inner := txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			_, err := sp.Exec(ctx, "INSERT INTO example_nested VALUES ('kept')") // duplicate key
			return err
		})
		fmt.Println("inner failed:", inner != nil)
		return nil
	})
	var n int
	_ = pool.QueryRow(ctx, "SELECT count(*) FROM example_nested").Scan(&n)
	fmt.Println(err, n)
	// Output:
	// inner failed: true
	// <nil> 1
}

// Retry gives any operation Run's retry policy; here the predicate decides which errors are worth another
// attempt.
func ExampleRetry() {
	ctx := context.Background()
	errBusy := errors.New("busy")
	attempts := 0
	err := txn.Retry(ctx, func(ctx context.Context) error {
		attempts++
		if attempts < 3 {
			return errBusy
		}
		return nil
	}, txn.RetryIf(func(err error) bool { return errors.Is(err, errBusy) }),
		txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 10 * time.Millisecond}),
		txn.OnRetry(func(attempt int, err error, _ time.Duration) { fmt.Println("attempt", attempt, "failed:", err) }))
	fmt.Println(err, attempts)
	// Output:
	// attempt 1 failed: busy
	// attempt 2 failed: busy
	// <nil> 3
}

// An idempotency key makes a transaction apply once however often the request behind it is retried: the
// HTTP Idempotency-Key pattern. The key is recorded by the transaction itself (no extra round trip); a second
// run with the same key is refused with ErrAlreadyApplied, and a lost COMMIT reply is settled by looking the
// key up. It needs pgcc's migrations (the table pgcc.idempotency_keys).
func ExampleWithIdempotencyKey() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS example_key_payments;
		CREATE TABLE example_key_payments (id serial PRIMARY KEY, amount bigint NOT NULL);
		DELETE FROM pgcc.idempotency_keys WHERE key LIKE 'payment:%'`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Exec(ctx, "DROP TABLE example_key_payments")

	// handle is what a POST /payments handler would do with the request's Idempotency-Key header.
	handle := func(requestKey string, amount int64) string {
		err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "INSERT INTO example_key_payments (amount) VALUES ($1)", amount)
			return err
		}, txn.WithIdempotencyKey("payment:"+requestKey))
		var applied *pgcc.AlreadyAppliedError
		switch {
		case err == nil:
			return "201 Created"
		case errors.As(err, &applied):
			return "201 Created (replayed: applied once, earlier)"
		case errors.Is(err, pgcc.ErrCommitUnknown):
			return "503 Service Unavailable (retry with the same key)"
		default:
			return "500 " + err.Error()
		}
	}

	fmt.Println(handle("7f3c", 250))
	fmt.Println(handle("7f3c", 250)) // the client retried: same key
	var n int
	_ = pool.QueryRow(ctx, "SELECT count(*) FROM example_key_payments").Scan(&n)
	fmt.Println("payments:", n)
	// Output:
	// 201 Created
	// 201 Created (replayed: applied once, earlier)
	// payments: 1
}

// AfterCommit runs a side effect once, after the commit, never for an attempt that was rolled back and
// retried.
func ExampleAfterCommit() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()

	attempt := 0
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		attempt++
		fmt.Println("attempt", attempt)
		if err := txn.AfterCommit(tx, func(context.Context) { fmt.Println("published: order 42 placed") }); err != nil {
			return err
		}
		if attempt == 1 {
			// A serialization failure, as a concurrent transaction would cause: the attempt is rolled back,
			// its hook dropped, and the transaction run again.
			_, err := tx.Exec(ctx, "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$")
			return err
		}
		return nil
	}, txn.WithBackoff(txn.Backoff{Base: time.Millisecond}))
	fmt.Println(err)
	// Output:
	// attempt 1
	// attempt 2
	// published: order 42 placed
	// <nil>
}
