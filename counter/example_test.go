package counter_test

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/counter"
)

// Page views counted by many writers at once, read as one number, and compacted back into one row.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	views, err := counter.New("example_counters", counter.WithSlots(8))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := views.CreateTable(ctx, pool); err != nil {
		fmt.Println(err)
		return
	}
	defer func() { _, _ = pool.Exec(ctx, "DROP TABLE example_counters") }()

	for range 10 {
		if err := views.Add(ctx, pool, "home", 1); err != nil {
			fmt.Println(err)
			return
		}
	}
	n, _ := views.Get(ctx, pool, "home")
	fmt.Println("views:", n)
	_ = views.Compact(ctx, pool, "home")
	n, _ = views.Get(ctx, pool, "home")
	fmt.Println("after compaction:", n)
	// Output:
	// views: 10
	// after compaction: 10
}
