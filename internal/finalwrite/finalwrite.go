// Package finalwrite is how package repo hands package txn a write to send with COMMIT (see txn.Last)
// together with what the write's failure means: txn runs the statement, repo knows its table, key and
// version. The exported names are reachable only inside the module, so that the public surface stays
// txn.Final and txn.Last.
package finalwrite

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Write is one statement queued to travel with COMMIT.
type Write struct {
	// SQL and Args are the statement, sent on the extended protocol.
	SQL  string
	Args []any
	// Failed, when not nil, turns the server's error for this statement (a certain failure: the server
	// skipped COMMIT and nothing committed) into the caller's. txn calls it after the transaction was rolled
	// back, with ctx (Run's) and conn, the transaction's connection, now outside any transaction, on which it
	// may send statements of its own (to read what the write found). It must return an error.
	Failed func(ctx context.Context, conn *pgx.Conn, err error) error
	// Retry says that the error Failed returns may be gone when the whole transaction runs again (an
	// optimistic conflict, which a fresh read settles): txn.Retryable then accepts it.
	Retry bool
}

// Queuer is implemented by the pgx.Tx that txn.Last returns: Queue adds w to the writes sent with COMMIT.
type Queuer interface {
	QueueFinalWrite(w Write)
}
