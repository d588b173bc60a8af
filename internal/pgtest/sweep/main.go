// Command sweep drops the databases one `make test` run created, whatever the run's outcome.
//
//	go run ./internal/pgtest/sweep -run <PGCC_TEST_RUN>
//
// It connects like the tests do (PGCC_TEST_DATABASE_URL, else the local server) and drops every database
// named by the test harness for that run. Without -run it drops only databases older than -older-than.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgtest"
)

func main() {
	run := flag.String("run", os.Getenv(pgtest.EnvRun), "the test run whose databases to drop")
	olderThan := flag.Duration("older-than", 2*time.Hour, "with no -run: drop harness databases older than this")
	flag.Parse()

	dsn := os.Getenv(pgtest.EnvDatabaseURL)
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sweep: %v\n", err)
		os.Exit(1)
	}
	defer pool.Close()
	minAge := *olderThan
	if *run != "" {
		minAge = 0
	}
	dropped, err := pgtest.Sweep(ctx, pool, *run, minAge)
	for _, name := range dropped {
		fmt.Printf("sweep: dropped leftover %s\n", name) // a database, or a role named after one
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sweep: %v\n", err)
		os.Exit(1)
	}
}
