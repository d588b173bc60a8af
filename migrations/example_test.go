package migrations_test

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/migrations"
)

// A service applies pgcc's schema at start-up, next to its own migrations. Every replica may do it at once.
func ExampleUp() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()

	if err := migrations.Up(ctx, pool); err != nil {
		fmt.Println(err)
		return
	}
	_, dirty, err := migrations.Version(ctx, pool)
	fmt.Println("dirty:", dirty, "error:", err)
	// Output: dirty: false error: <nil>
}
