package examples_test

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// Wallet is a row of example_wallets.
type Wallet struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
	Version int64 `db:"version"`
}

var errInsufficientFunds = errors.New("insufficient funds")

// Updating an account balance optimistically: 10 concurrent deposits and one withdrawal that would overdraw
// go through repo.Modify, which re-reads and re-applies on every version conflict. No deposit is lost, the
// business rule is checked against the row actually written, and the caller's own error comes back as is.
func Example_accountBalance() {
	ctx := context.Background()
	pool, drop, err := open(ctx, `CREATE TABLE example_wallets (id bigint PRIMARY KEY, balance bigint NOT NULL, version bigint NOT NULL)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop("example_wallets")
	wallets, err := repo.NewTable[Wallet]("example_wallets")
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := wallets.Insert(ctx, pool, &Wallet{ID: 1, Balance: 0}); err != nil {
		fmt.Println(err)
		return
	}

	change := func(amount int64) error {
		_, err := wallets.Modify(ctx, pool, pgcc.Key{int64(1)}, func(_ context.Context, w *Wallet) error {
			if w.Balance+amount < 0 {
				return errInsufficientFunds
			}
			w.Balance += amount
			return nil
		}, txn.WithMaxAttempts(50))
		return err
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := change(10); err != nil {
				fmt.Println(err)
			}
		}()
	}
	wg.Wait()
	fmt.Println(errors.Is(change(-500), errInsufficientFunds))
	w, err := wallets.Get(ctx, pool, pgcc.Key{int64(1)})
	fmt.Println(w.Balance, w.Version, err)
	// Output:
	// true
	// 100 11 <nil>
}
