package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgserver"
	"github.com/pgcc/pgcc/internal/secret"
	"github.com/pgcc/pgcc/pgcctest"
)

// connect opens a pool of at most maxConns connections on the database the flags and environment name:
// dsn, else DATABASE_URL, else the local server, else a testcontainers PostgreSQL. close closes the pool and
// stops the container if one was started.
func connect(ctx context.Context, dsn string, getenv func(string) string, maxConns int) (pool *pgxpool.Pool, where string, close func(), err error) {
	release := func() {}
	switch {
	case dsn != "":
		where = "-dsn"
	case getenv("DATABASE_URL") != "":
		dsn, where = getenv("DATABASE_URL"), "DATABASE_URL"
	case pgserver.Reachable(ctx, pgserver.LocalAddr):
		dsn, where = pgserver.LocalDSN, "local server "+pgserver.LocalAddr
	default:
		var cerr error
		dsn, release, cerr = pgcctest.StartContainer(ctx)
		if cerr != nil {
			return nil, "", nil, fmt.Errorf("no database: set DATABASE_URL or -dsn, run PostgreSQL on %s, or start a Docker engine (%v)", pgserver.LocalAddr, cerr)
		}
		where = "testcontainers " + pgcctest.ContainerImage
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		release()
		return nil, "", nil, fmt.Errorf("bad connection string from %s: %w", where, secret.ParseError(err))
	}
	cfg.MaxConns = int32(maxConns)
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgcc"
	pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		release()
		return nil, "", nil, fmt.Errorf("cannot reach the database (%s): %w", where, err)
	}
	return pool, where, func() { pool.Close(); release() }, nil
}
