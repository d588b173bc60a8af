package repo_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// exampleTable opens a pool on the examples' database and creates a table from ddl; drop drops it and closes
// the pool.
func exampleTable(ctx context.Context, name, ddl string) (pool *pgxpool.Pool, drop func(), err error) {
	pool, err = pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		return nil, nil, err
	}
	if _, err := pool.Exec(ctx, "DROP TABLE IF EXISTS "+name+"; "+ddl); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, func() {
		_, _ = pool.Exec(ctx, "DROP TABLE "+name)
		pool.Close()
	}, nil
}

// Two requests load the same account; the second to write gets a conflict that says what happened, and its
// write is not applied.
func ExampleTable_Update() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_update_accounts", `
		CREATE TABLE example_update_accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
			version bigint NOT NULL);
		INSERT INTO example_update_accounts VALUES (42, 'ada', 100, 7)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	accounts, err := repo.NewTable[Account]("example_update_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}

	first, _ := accounts.Get(ctx, pool, pgcc.Key{42})
	second, _ := accounts.Get(ctx, pool, pgcc.Key{42})
	first.Balance += 50
	fmt.Println(accounts.Update(ctx, pool, &first), first.Version)

	second.Balance -= 30
	err = accounts.Update(ctx, pool, &second)
	fmt.Println(err)
	var conflict *pgcc.ConflictError
	if errors.As(err, &conflict) {
		fmt.Println(conflict.Expected, conflict.Actual, conflict.Deleted)
	}
	stored, _ := accounts.Get(ctx, pool, pgcc.Key{42})
	fmt.Println(stored.Balance)
	// Output:
	// <nil> 8
	// pgcc: conflict updating "example_update_accounts" id=42: expected version 7, found 8
	// 7 8 false
	// 150
}

// Modify reads, applies the change and writes; when another writer got there first it reads again and
// re-applies the change to the newer row.
func ExampleTable_Modify() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_modify_accounts", `
		CREATE TABLE example_modify_accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
			version bigint NOT NULL);
		INSERT INTO example_modify_accounts VALUES (1, 'ada', 100, 1)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	accounts, err := repo.NewTable[Account]("example_modify_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}

	errInsufficient := errors.New("insufficient funds")
	calls := 0
	withdraw := func(ctx context.Context, a *Account) error {
		calls++
		if calls == 1 { // another writer deposits between our read and our write
			_, _ = pool.Exec(ctx, "UPDATE example_modify_accounts SET balance = balance + 20, version = version + 1 WHERE id = 1")
		}
		if a.Balance < 110 {
			return errInsufficient // returned unchanged, never retried
		}
		a.Balance -= 110
		return nil
	}
	_, err = accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, withdraw)
	fmt.Println(errors.Is(err, errInsufficient), calls)

	calls = 0
	stored, err := accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, withdraw,
		txn.WithMaxAttempts(5), txn.WithBackoff(txn.Backoff{Base: time.Millisecond}))
	fmt.Println(stored.Balance, stored.Version, err, calls)
	// Output:
	// true 1
	// 30 4 <nil> 2
}

// Code that writes its own SQL, as sqlc generates it, gets the same errors from Check.
func ExampleTable_Check() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_check_accounts", `
		CREATE TABLE example_check_accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
			version bigint NOT NULL);
		INSERT INTO example_check_accounts VALUES (1, 'ada', 100, 3)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	accounts, err := repo.NewTable[Account]("example_check_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}

	// -- name: SetBalance :execresult
	// UPDATE example_check_accounts SET balance = $2, version = version + 1 WHERE id = $1 AND version = $3;
	setBalance := func(id, balance, version int64) error {
		tag, err := pool.Exec(ctx, "UPDATE example_check_accounts SET balance = $2, version = version + 1 WHERE id = $1 AND version = $3", id, balance, version)
		if err != nil {
			return err
		}
		return accounts.Check(ctx, pool, tag, pgcc.Key{id}, version)
	}
	fmt.Println(setBalance(1, 90, 3))
	fmt.Println(setBalance(1, 80, 3))
	fmt.Println(setBalance(2, 80, 1))
	// Output:
	// <nil>
	// pgcc: conflict writing "example_check_accounts" id=1: expected version 3, found 4
	// pgcc: conflict writing "example_check_accounts" id=2: expected version 1, but the row was deleted
}

// UpdateAll writes a batch in one statement, all or nothing, and lists every row that conflicted.
func ExampleTable_UpdateAll() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_bulk_accounts", `
		CREATE TABLE example_bulk_accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
			version bigint NOT NULL);
		INSERT INTO example_bulk_accounts SELECT g, 'owner', 100, 1 FROM generate_series(1, 5) g`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	accounts, err := repo.NewTable[Account]("example_bulk_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}

	var batch []*Account
	for id := int64(1); id <= 5; id++ {
		a, _ := accounts.Get(ctx, pool, pgcc.Key{id})
		a.Balance += 10
		batch = append(batch, &a)
	}
	_, _ = pool.Exec(ctx, "UPDATE example_bulk_accounts SET version = 2 WHERE id = 2; DELETE FROM example_bulk_accounts WHERE id = 4")

	err = accounts.UpdateAll(ctx, pool, batch)
	fmt.Println(err)
	var bulk *repo.BulkConflictError
	if errors.As(err, &bulk) {
		for _, c := range bulk.Conflicts {
			fmt.Println(c.Key, c.Expected, c.Actual, c.Deleted)
		}
	}
	var written int
	_ = pool.QueryRow(ctx, "SELECT count(*) FROM example_bulk_accounts WHERE balance > 100").Scan(&written)
	fmt.Println(written)
	// Output:
	// pgcc: bulk update of "example_bulk_accounts" rolled back: 2 of 5 rows conflicted: id=2 expected version 1, found 2; id=4 expected version 1, deleted
	// (2) 1 2 false
	// (4) 1 0 true
	// 0
}

// NewTable checks the description against the struct before any query is sent.
func ExampleNewTable() {
	type Order struct {
		ID    int64  `db:"order_id"`
		State string `db:"state"`
		Rev   int64  `db:"rev"`
	}
	_, err := repo.NewTable[Order]("orders", repo.WithKey("order_id"))
	fmt.Println(err)
	fmt.Println(errors.Is(err, pgcc.ErrInvalidArgument))

	orders, err := repo.NewTable[Order]("orders", repo.InSchema("shop"), repo.WithKey("order_id"), repo.WithVersion("rev"))
	fmt.Println(orders.Name(), orders.KeyColumns(), orders.VersionColumn(), err)
	// Output:
	// pgcc: invalid argument: table "orders": struct repo_test.Order has no field for counter version column "version" (tag a field `db:"version"`)
	// true
	// "shop"."orders" [order_id] rev <nil>
}

// A table without a version column uses PostgreSQL's xmin: every write gives the row a new one.
func ExampleWithXmin() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_xmin_profiles", `
		CREATE TABLE example_xmin_profiles (id bigint PRIMARY KEY, bio text NOT NULL);
		INSERT INTO example_xmin_profiles VALUES (1, 'hello')`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	type Profile struct {
		ID   int64  `db:"id"`
		Bio  string `db:"bio"`
		Xmin uint32 `db:"xmin"`
	}
	profiles, err := repo.NewTable[Profile]("example_xmin_profiles", repo.WithXmin())
	if err != nil {
		fmt.Println(err)
		return
	}

	mine, _ := profiles.Get(ctx, pool, pgcc.Key{int64(1)})
	theirs := mine
	theirs.Bio = "written first"
	fmt.Println(profiles.Update(ctx, pool, &theirs), theirs.Xmin != mine.Xmin)

	mine.Bio = "written second"
	err = profiles.Update(ctx, pool, &mine)
	var conflict *pgcc.ConflictError
	fmt.Println(errors.As(err, &conflict), conflict.Actual == int64(theirs.Xmin))
	// Output:
	// <nil> true
	// true true
}

// InsertOrGet is the get-or-create that holds under concurrency: of any number of callers creating the same
// row, one inserts and the others get its row.
func ExampleTable_InsertOrGet() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_create_accounts", `
		CREATE TABLE example_create_accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
			version bigint NOT NULL)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	accounts, err := repo.NewTable[Account]("example_create_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}

	a := Account{ID: 7, Owner: "ada", Balance: 10}
	created, err := accounts.InsertOrGet(ctx, pool, &a)
	fmt.Println(created, err, a)
	b := Account{ID: 7, Owner: "bob"}
	created, err = accounts.InsertOrGet(ctx, pool, &b)
	fmt.Println(created, err, b)
	// Output:
	// true <nil> {7 ada 10 1}
	// false <nil> {7 ada 10 1}
}

// A table whose only version is an updated_at column, as Rails and Django create them: the database sets the
// timestamp on every write that changes a value, and a stale write is a conflict that shows both timestamps.
func ExampleWithTimestampVersion() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_posts", `
		CREATE TABLE example_posts (id bigint PRIMARY KEY, body text NOT NULL, updated_at timestamptz NOT NULL);
		INSERT INTO example_posts VALUES (1, 'draft', '2026-01-02 03:04:05.678901+00')`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	type Post struct {
		ID        int64     `db:"id"`
		Body      string    `db:"body"`
		UpdatedAt time.Time `db:"updated_at"`
	}
	posts, err := repo.NewTable[Post]("example_posts", repo.WithTimestampVersion("updated_at"))
	if err != nil {
		fmt.Println(err)
		return
	}

	mine, _ := posts.Get(ctx, pool, pgcc.Key{int64(1)})
	theirs := mine
	theirs.Body = "published"
	fmt.Println(posts.Update(ctx, pool, &theirs), theirs.UpdatedAt.After(mine.UpdatedAt))

	mine.Body = "edited draft"
	err = posts.Update(ctx, pool, &mine)
	var conflict *pgcc.ConflictError
	fmt.Println(errors.As(err, &conflict), conflict.ExpectedTime.UTC(), conflict.ActualTime.Equal(theirs.UpdatedAt))
	fmt.Println(repo.ETag(posts.VersionOf(&mine)))
	// Output:
	// <nil> true
	// true 2026-01-02 03:04:05.678901 +0000 UTC true
	// "1767323045678901"
}

// ETag and ParseETag carry a version through HTTP; pgcc.HTTPStatus answers each failure with its status.
func ExampleParseETag() {
	tag := repo.ETag(7)
	fmt.Println(tag)
	for _, header := range []string{tag, `W/"7"`, ``, `"seven"`} {
		version, err := repo.ParseETag(header)
		fmt.Println(version, pgcc.HTTPStatus(err), err)
	}
	// Output:
	// "7"
	// 7 200 <nil>
	// 7 200 <nil>
	// 0 428 pgcc: precondition required: no If-Match header: send the ETag of the version you read
	// 0 400 pgcc: invalid argument: entity tag "\"seven\"" is not a version tag such as "7" or W/"7"
}

// With repo.Tracked embedded, a row remembers the key it was read with, and a write of a row whose key field
// was changed is refused instead of landing on another row.
func ExampleTracked() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_tracked_accounts", `
		CREATE TABLE example_tracked_accounts (id bigint PRIMARY KEY, owner text NOT NULL, version bigint NOT NULL);
		INSERT INTO example_tracked_accounts VALUES (1, 'ada', 1), (2, 'bob', 1)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	type Account struct {
		repo.Tracked
		ID      int64  `db:"id"`
		Owner   string `db:"owner"`
		Version int64  `db:"version"`
	}
	accounts, err := repo.NewTable[Account]("example_tracked_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}

	a, _ := accounts.Get(ctx, pool, pgcc.Key{int64(1)})
	a.ID = 2 // a bug: bob's row is at version 1 too
	a.Owner = "ada lovelace"
	fmt.Println(accounts.Update(ctx, pool, &a))
	// Output:
	// pgcc: invalid argument: update of "example_tracked_accounts": the row's key changed from id=1 to id=2 since it was read; a write never moves a row to another key (insert the new row and delete the old one)
}

// Stock decremented without reading it first: the guard refuses a sale that would oversell, and tells it from
// a missing product.
func ExampleTable_Add() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_add_accounts", `
		CREATE TABLE example_add_accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
			version bigint NOT NULL);
		INSERT INTO example_add_accounts VALUES (1, 'widget', 2, 1)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	stock, err := repo.NewTable[Account]("example_add_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}
	for range 3 {
		row, err := stock.Add(ctx, pool, pgcc.Key{1}, "balance", -1, repo.AtLeast(0))
		switch {
		case errors.Is(err, pgcc.ErrGuardFailed):
			fmt.Println("sold out")
		case err != nil:
			fmt.Println(err)
		default:
			fmt.Println("left:", row.Balance, "version:", row.Version)
		}
	}
	_, err = stock.Add(ctx, pool, pgcc.Key{2}, "balance", -1, repo.AtLeast(0))
	fmt.Println(errors.Is(err, pgcc.ErrNotFound))
	// Output:
	// left: 1 version: 2
	// left: 0 version: 3
	// sold out
	// true
}

// Concurrent read-modify-writes of one row combined: each caller's function sees the row as the previous
// one left it, and a batch writes and commits once for all of them.
func ExampleCombiner_Modify() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_combine_accounts", `
		CREATE TABLE example_combine_accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
			version bigint NOT NULL);
		INSERT INTO example_combine_accounts VALUES (1, 'ada', 0, 1)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	accounts, err := repo.NewTable[Account]("example_combine_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}
	combiner, err := accounts.Combine(pool)
	if err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error)
	for range 20 {
		go func() {
			_, err := combiner.Modify(ctx, pgcc.Key{1}, func(_ context.Context, a *Account) error {
				a.Balance += 5
				return nil
			})
			done <- err
		}()
	}
	for range 20 {
		if err := <-done; err != nil {
			fmt.Println(err)
		}
	}
	row, _ := accounts.Get(ctx, pool, pgcc.Key{1})
	fmt.Println("balance:", row.Balance, "transactions at most calls:", row.Version-1 <= 20)
	// Output:
	// balance: 100 transactions at most calls: true
}

// Inside txn.Run, a Modify marked with txn.Last is the transaction's last write: its compare-and-swap travels
// with COMMIT, so the transaction costs two round trips instead of three. Here another writer changes the row
// between the read and COMMIT: the server refuses the write and skips COMMIT, and Run runs the transaction
// again from a fresh read.
func ExampleTable_Modify_last() {
	ctx := context.Background()
	pool, drop, err := exampleTable(ctx, "example_last_accounts", `
		CREATE TABLE example_last_accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
			version bigint NOT NULL);
		INSERT INTO example_last_accounts VALUES (42, 'ada', 100, 7)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()
	accounts, err := repo.NewTable[Account]("example_last_accounts")
	if err != nil {
		fmt.Println(err)
		return
	}

	attempts := 0
	row, err := txn.RunValue(ctx, pool, func(ctx context.Context, tx pgx.Tx) (Account, error) {
		attempts++
		return accounts.Modify(ctx, txn.Last(tx), pgcc.Key{42}, func(ctx context.Context, a *Account) error {
			if attempts == 1 { // someone else deposits 5 meanwhile
				if _, err := pool.Exec(ctx, "UPDATE example_last_accounts SET balance = balance + 5, version = version + 1 WHERE id = 42"); err != nil {
					return err
				}
			}
			a.Balance -= 30
			return nil
		})
	}, txn.OnRetry(func(_ int, err error, _ time.Duration) { fmt.Println("retrying:", err) }))
	fmt.Println(err, attempts, row.Balance, row.Version)
	// Output:
	// retrying: pgcc: conflict updating "example_last_accounts" id=42: expected version 7, found 8
	// <nil> 2 75 9
}
