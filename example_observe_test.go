package pgcc_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/txn"
)

// A transaction labelled "checkout" whose first attempt fails with a serialization failure: the slog
// observer logs the retried attempt at Info and the committed one at Debug. (Time and durations are left
// out of the records so that the output is stable.)
func ExampleNewSlogObserver() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()

	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey, "duration", "pgcc.retry_delay":
				return slog.Attr{}
			}
			return a
		},
	}))
	attempt := 0
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		attempt++
		if attempt == 1 {
			_, err := tx.Exec(ctx, "DO $$ BEGIN RAISE EXCEPTION 'write skew' USING ERRCODE = 'serialization_failure'; END $$")
			return err
		}
		return nil
	}, txn.WithObserver(pgcc.NewSlogObserver(logger)), txn.WithLabel("checkout"),
		txn.WithBackoff(txn.Backoff{Base: time.Millisecond, NoJitter: true}))
	fmt.Println("err:", err)
	// Output:
	// level=INFO msg="pgcc: transaction attempt" pgcc.operation=txn.Run pgcc.label=checkout pgcc.attempt=1 pgcc.outcome=retried error="ERROR: write skew (SQLSTATE 40001)" db.response.status_code=40001
	// level=DEBUG msg="pgcc: transaction attempt" pgcc.operation=txn.Run pgcc.label=checkout pgcc.attempt=2 pgcc.outcome=committed
	// err: <nil>
}
