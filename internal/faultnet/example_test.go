package faultnet_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
)

// proxyFor starts a proxy in front of the examples' database and returns it with a DSN through it. Tests
// use faultnet.ForDSN(t, dsn) instead, which closes the proxy when the test ends.
func proxyFor(dsn string) (*faultnet.Proxy, string) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		panic(err)
	}
	p, err := faultnet.New(net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	if err != nil {
		panic(err)
	}
	proxied, err := p.RewriteDSN(dsn)
	if err != nil {
		panic(err)
	}
	return p, proxied
}

// A COMMIT that reaches the server while its answer never comes back: the client sees an error, yet the
// transaction committed. Code that retries such a commit applies the transaction twice.
func Example_lostCommitAnswer() {
	ctx := context.Background()
	dsn := os.Getenv(pgtest.EnvExampleDatabaseURL)
	p, proxied := proxyFor(dsn)
	defer p.Close()

	direct, err := pgx.Connect(ctx, dsn)
	if err != nil {
		panic(err)
	}
	defer direct.Close(ctx)
	if _, err := direct.Exec(ctx, "CREATE TABLE lost_answer (id int)"); err != nil {
		panic(err)
	}

	p.OnQuery(faultnet.IsCommit, faultnet.LoseReply) // fires once
	conn, err := pgx.Connect(ctx, proxied)
	if err != nil {
		panic(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		panic(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO lost_answer VALUES (1)"); err != nil {
		panic(err)
	}
	commitErr := tx.Commit(ctx)

	var n int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM lost_answer").Scan(&n); err != nil {
		panic(err)
	}
	fmt.Println("commit returned an error:", commitErr != nil)
	fmt.Println("rows committed:", n)
	// Output:
	// commit returned an error: true
	// rows committed: 1
}

// Counting round trips: a query on an established connection is one flight, a batch is one flight however
// many statements it holds.
func Example_roundTrips() {
	ctx := context.Background()
	p, proxied := proxyFor(os.Getenv(pgtest.EnvExampleDatabaseURL))
	defer p.Close()
	conn, err := pgx.Connect(ctx, proxied)
	if err != nil {
		panic(err)
	}
	defer conn.Close(ctx)

	p.ResetStats()
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		panic(err)
	}
	fmt.Println("SELECT 1:", p.Stats().Flights, "flight")

	p.ResetStats()
	b := &pgx.Batch{}
	for i := range 5 {
		b.Queue("SELECT $1::int", i)
	}
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		panic(err)
	}
	fmt.Println("batch of 5, cold statement cache:", p.Stats().Flights, "flights (describe, then execute)")

	p.ResetStats()
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		panic(err)
	}
	fmt.Println("the same batch again:", p.Stats().Flights, "flight")
	// Output:
	// SELECT 1: 1 flight
	// batch of 5, cold statement cache: 2 flights (describe, then execute)
	// the same batch again: 1 flight
}
