package repo_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail/pgfailtest"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

func isUpdate(sql string) bool { return strings.HasPrefix(sql, "UPDATE") }
func isSelect(sql string) bool { return strings.HasPrefix(sql, "SELECT") }

// faultySetup is setup with a second pool that reaches the database through a fault proxy.
func faultySetup(t *testing.T) (direct *pgxpool.Pool, proxy *pgfailtest.Proxy, faulty *pgxpool.Pool, accounts *repo.Table[Account]) {
	t.Helper()
	db, direct, accounts := setup(t, 1)
	proxy, dsn := pgfailtest.New(t, db.DSN)
	faulty = (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t)
	return direct, proxy, faulty, accounts
}

// TestAutocommitWriteLostReplyIsCommitUnknown: an Update or Modify outside a transaction whose reply is lost
// after the server applied it reports an unknown outcome, never a plain I/O error, and Modify does not run
// fn again.
func TestAutocommitWriteLostReplyIsCommitUnknown(t *testing.T) {
	t.Parallel()
	direct, proxy, faulty, accounts := faultySetup(t)
	ctx := context.Background()

	row := mustGet(t, accounts, direct, 1)
	row.Balance = 150
	proxy.LoseReply(1, isUpdate)
	err := accounts.Update(ctx, faulty, &row)
	proxy.AwaitFault()
	var unknown *pgcc.CommitUnknownError
	if !errors.As(err, &unknown) || !errors.Is(err, pgcc.ErrCommitUnknown) {
		t.Fatalf("Update: %v, want *CommitUnknownError", err)
	}
	if row.Version != 1 {
		t.Errorf("the row's version moved to %d on an unknown outcome", row.Version)
	}
	if got := mustGet(t, accounts, direct, 1); got.Balance != 150 || got.Version != 2 {
		t.Fatalf("stored %+v, want the update applied once", got)
	}

	proxy.LoseReply(1, isUpdate)
	calls := 0
	_, err = accounts.Modify(ctx, faulty, pgcc.Key{1}, func(_ context.Context, a *Account) error {
		calls++
		a.Balance += 10
		return nil
	})
	proxy.AwaitFault()
	if !errors.As(err, &unknown) || unknown.Attempts != 1 || calls != 1 {
		t.Fatalf("Modify: %v after %d calls, want *CommitUnknownError at attempt 1 after 1 call", err, calls)
	}
	if got := mustGet(t, accounts, direct, 1); got.Balance != 160 || got.Version != 3 {
		t.Fatalf("stored %+v, want the modification applied once", got)
	}
}

// TestAutocommitWriteWithoutAConnectionIsLost: a write outside a transaction whose pool cannot open a
// connection (every slot of its role taken: FATAL 53300, too_many_connections) sent nothing. Update and Add
// return a *ConnectionLostError carrying the 53300, never a *CommitUnknownError, and the row is untouched.
// Before, the FATAL inside pgx's connect error was read as the write's own connection failing after it was
// sent: commit-unknown for a write that never left the client.
func TestAutocommitWriteWithoutAConnectionIsLost(t *testing.T) {
	t.Parallel()
	db, direct, accounts := setup(t, 1)
	refused := (&pgtest.DB{Name: db.Name, DSN: db.LimitedRole(t, 0)}).Pool(t)
	ctx := context.Background()
	isLost := func(op string, err error) {
		t.Helper()
		var lost *pgcc.ConnectionLostError
		if !errors.As(err, &lost) || lost.SingleConnection || errors.Is(err, pgcc.ErrCommitUnknown) ||
			pgcc.SQLState(err) != pgerrcode.TooManyConnections {
			t.Errorf("%s: %v, want a *ConnectionLostError carrying the 53300", op, err)
		}
	}

	row := mustGet(t, accounts, direct, 1)
	row.Balance = 150
	isLost("Update", accounts.Update(ctx, refused, &row))
	if row.Version != 1 {
		t.Errorf("the row's version moved to %d though nothing was sent", row.Version)
	}
	_, err := accounts.Add(ctx, refused, pgcc.Key{1}, "balance", 5)
	isLost("Add", err)
	if got := mustGet(t, accounts, direct, 1); got.Balance != 100 || got.Version != 1 {
		t.Fatalf("stored %+v, want the row untouched", got)
	}
}

// TestModifyRetriesALostRead: Modify's read fails on its connection; nothing was written, and on a pool
// the next attempt gets another connection.
func TestModifyRetriesALostRead(t *testing.T) {
	t.Parallel()
	direct, proxy, faulty, accounts := faultySetup(t)
	ctx := context.Background()
	proxy.LoseReply(1, isSelect)
	calls := 0
	got, err := accounts.Modify(ctx, faulty, pgcc.Key{1}, func(_ context.Context, a *Account) error {
		calls++
		a.Balance += 10
		return nil
	}, txn.WithBackoff(txn.Backoff{Base: time.Millisecond}))
	if err != nil || calls != 1 || got.Balance != 110 {
		t.Fatalf("Modify = %+v, %v after %d calls; want balance 110 after one call", got, err, calls)
	}
	if proxy.Faults() != 1 {
		t.Fatal("no read reply was lost")
	}
	if stored := mustGet(t, accounts, direct, 1); stored.Balance != 110 {
		t.Fatalf("stored %+v", stored)
	}
}

// TestWriteInsideRunLostReply: inside txn.Run, a write whose reply is lost is just a failed statement of a
// transaction that certainly did not commit; Run retries it on another connection and it applies once.
func TestWriteInsideRunLostReply(t *testing.T) {
	t.Parallel()
	direct, proxy, faulty, accounts := faultySetup(t)
	ctx := context.Background()
	proxy.LoseReply(1, isUpdate)
	calls := 0
	err := txn.Run(ctx, faulty, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		_, err := accounts.Modify(ctx, tx, pgcc.Key{1}, func(_ context.Context, a *Account) error {
			a.Balance += 10
			return nil
		})
		if calls == 1 && errors.Is(err, pgcc.ErrCommitUnknown) {
			t.Errorf("a write inside a transaction reported an unknown commit: %v", err)
		}
		return err
	}, txn.WithBackoff(txn.Backoff{Base: time.Millisecond}))
	if err != nil || calls != 2 {
		t.Fatalf("Run: %v after %d calls, want success on the second", err, calls)
	}
	if stored := mustGet(t, accounts, direct, 1); stored.Balance != 110 || stored.Version != 2 {
		t.Fatalf("stored %+v, want the modification applied once", stored)
	}
}

// TestModifyOutOfAttemptsOnLostReads: every read of Modify's loses its connection; when the attempts run out
// the error says both that they ran out and that the condition was a lost connection, with nothing written.
func TestModifyOutOfAttemptsOnLostReads(t *testing.T) {
	t.Parallel()
	direct, proxy, faulty, accounts := faultySetup(t)
	ctx := context.Background()
	proxy.LoseReply(3, isSelect)
	calls := 0
	_, err := accounts.Modify(ctx, faulty, pgcc.Key{1}, func(_ context.Context, a *Account) error {
		calls++
		a.Balance += 10
		return nil
	}, txn.WithMaxAttempts(3), txn.WithBackoff(txn.Backoff{Base: time.Millisecond}))
	var lost *pgcc.ConnectionLostError
	if !errors.Is(err, pgcc.ErrRetriesExhausted) || !errors.Is(err, pgcc.ErrConnectionLost) || !errors.As(err, &lost) || lost.SingleConnection {
		t.Fatalf("Modify = %v, want retries exhausted on a lost connection", err)
	}
	if lost.Attempts != 3 || !strings.Contains(err.Error(), "at attempt 3") {
		t.Fatalf("Modify = %v: the lost connection is reported at attempt %d, want the last one, 3", err, lost.Attempts)
	}
	if calls != 0 {
		t.Fatalf("fn ran %d times; no read reached it", calls)
	}
	if stored := mustGet(t, accounts, direct, 1); stored.Balance != 100 || stored.Version != 1 {
		t.Fatalf("stored %+v, want it untouched", stored)
	}
}
