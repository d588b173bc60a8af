package examples_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// open connects to the examples' database and creates the tables of one pattern; drop removes them.
func open(ctx context.Context, ddl string) (pool *pgxpool.Pool, drop func(tables string), err error) {
	pool, err = pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		return nil, nil, err
	}
	if _, err := pool.Exec(ctx, ddl); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, func(tables string) {
		_, _ = pool.Exec(context.WithoutCancel(ctx), "DROP TABLE IF EXISTS "+tables)
		pool.Close()
	}, nil
}
