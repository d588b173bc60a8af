package examples_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// Item is a row of example_items.
type Item struct {
	SKU     string `db:"sku"`
	Stock   int64  `db:"stock"`
	Version int64  `db:"version"`
}

var errSoldOut = errors.New("sold out")

// Reserving stock under a row lock: the check "enough stock?" and the decrement happen while the row is
// locked (SELECT … FOR NO KEY UPDATE through lock.Load), so 20 buyers racing for 5 units sell exactly 5, and the
// other 15 get the business answer, not an error about concurrency. Pessimistic locking fits here: the
// row is hot, and a reservation usually succeeds once it gets the lock.
func Example_reserveStock() {
	ctx := context.Background()
	pool, drop, err := open(ctx, `CREATE TABLE example_items (sku text PRIMARY KEY, stock bigint NOT NULL CHECK (stock >= 0), version bigint NOT NULL)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop("example_items")
	items, err := repo.NewTable[Item]("example_items", repo.WithKey("sku"))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := items.Insert(ctx, pool, &Item{SKU: "lamp", Stock: 5}); err != nil {
		fmt.Println(err)
		return
	}

	reserve := func(sku string) error {
		return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			rows, err := lock.Load(ctx, tx, items, []pgcc.Key{{sku}})
			if err != nil {
				return err
			}
			if rows[0].Stock < 1 {
				return errSoldOut
			}
			rows[0].Stock--
			return items.Update(ctx, tx, &rows[0])
		})
	}
	var sold, soldOut atomic.Int64
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch err := reserve("lamp"); {
			case err == nil:
				sold.Add(1)
			case errors.Is(err, errSoldOut):
				soldOut.Add(1)
			default:
				fmt.Println(err)
			}
		}()
	}
	wg.Wait()
	lamp, err := items.Get(ctx, pool, pgcc.Key{"lamp"})
	fmt.Println(sold.Load(), soldOut.Load(), lamp.Stock, err)
	// Output:
	// 5 15 0 <nil>
}
