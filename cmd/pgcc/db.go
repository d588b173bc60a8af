package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgserver"
	"github.com/pgcc/pgcc/internal/secret"
	"github.com/pgcc/pgcc/pgcctest"
)

// execModes are the values of -exec-mode besides auto, pgx's names for its query exec modes.
var execModes = map[string]pgx.QueryExecMode{
	"cache_statement": pgx.QueryExecModeCacheStatement,
	"cache_describe":  pgx.QueryExecModeCacheDescribe,
	"describe_exec":   pgx.QueryExecModeDescribeExec,
	"exec":            pgx.QueryExecModeExec,
	"simple_protocol": pgx.QueryExecModeSimpleProtocol,
}

// execModeUsage documents -exec-mode.
const execModeUsage = "pgx query exec mode: auto, cache_statement, cache_describe, describe_exec, exec or simple_protocol. " +
	"auto keeps the connection string's default_query_exec_mode if it sets one; otherwise it uses pgx's default " +
	"(cache_statement) on a direct connection and cache_describe behind a connection pooler such as PgBouncer, " +
	"whose transaction mode breaks cached prepared statements (42P05, 26000)"

// checkExecMode validates an -exec-mode value.
func checkExecMode(mode string) error {
	if _, ok := execModes[mode]; ok || mode == "auto" {
		return nil
	}
	return usageError("-exec-mode %q: want auto, cache_statement, cache_describe, describe_exec, exec or simple_protocol", mode)
}

// behindPooler reports whether conn reaches the server through a connection pooler: the process id the
// server announced at connection start (BackendKeyData) is not the backend's own. PgBouncer, for one, hands
// out cancel keys of its own. It cannot tell transaction pooling from session pooling.
func behindPooler(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	c, err := pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	defer c.Release()
	var backend int64
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&backend); err != nil {
		return false, err
	}
	return int64(c.Conn().PgConn().PID()) != backend, nil
}

// connect opens a pool of at most maxConns connections on the database the flags and environment name:
// dsn, else DATABASE_URL, else the local server, else a testcontainers PostgreSQL, in query exec mode execMode
// (see [execModeUsage]). close closes the pool and stops the container if one was started.
func connect(ctx context.Context, dsn string, getenv func(string) string, maxConns int, execMode string) (pool *pgxpool.Pool, where string, close func(), err error) {
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
	auto := execMode == "" || execMode == "auto"
	if !auto {
		cfg.ConnConfig.DefaultQueryExecMode = execModes[execMode]
	}
	fail := func(err error) (*pgxpool.Pool, string, func(), error) {
		if pool != nil {
			pool.Close()
		}
		release()
		return nil, "", nil, fmt.Errorf("cannot reach the database (%s): %w", where, err)
	}
	pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		return fail(err)
	}
	if auto && !strings.Contains(dsn, "default_query_exec_mode") {
		pooled, err := behindPooler(ctx, pool)
		if err != nil {
			return fail(err)
		}
		if pooled {
			pool.Close()
			cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
			if pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
				return fail(err)
			}
			where += " (behind a connection pooler: exec mode cache_describe; -exec-mode overrides)"
		}
	}
	return pool, where, func() { pool.Close(); release() }, nil
}
