package pgcctest_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/pgcctest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// bank is the service under test. Its handlers take a pgcc.Beginner, so a test can hand them a FaultPool.
type bank struct {
	db interface {
		pgcc.Beginner
		pgcc.DBTX
	}
	retries int // what a metric would count, through txn.OnRetry
}

// transfer moves amount from one account to another in a retrying transaction. An idempotency key, sent by
// the client, settles a COMMIT whose answer was lost.
func (b *bank) transfer(w http.ResponseWriter, r *http.Request) {
	from, _ := strconv.ParseInt(r.FormValue("from"), 10, 64)
	to, _ := strconv.ParseInt(r.FormValue("to"), 10, 64)
	amount, _ := strconv.ParseInt(r.FormValue("amount"), 10, 64)
	opts := []txn.Option{txn.OnRetry(func(int, error, time.Duration) { b.retries++ })}
	if key := r.Header.Get("Idempotency-Key"); key != "" {
		opts = append(opts, txn.WithIdempotencyKey(key))
	}
	err := txn.Run(r.Context(), b.db, func(ctx context.Context, tx pgx.Tx) error {
		if err := lock.XactLock(ctx, tx, lock.StringKey("transfers", strconv.FormatInt(from, 10)), lock.WithWait(lock.NoWait)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, from); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, to)
		return err
	}, opts...)
	w.WriteHeader(pgcc.HTTPStatus(err))
}

// rename sets an account's owner, provided the client's If-Match names the version it read.
func (b *bank) rename(w http.ResponseWriter, r *http.Request) {
	id, _ := strconv.ParseInt(r.FormValue("id"), 10, 64)
	a, err := accounts.Get(r.Context(), b.db, pgcc.Key{id})
	if err == nil {
		if a.Version, err = repo.ParseETag(r.Header.Get("If-Match")); err == nil {
			a.Owner = r.FormValue("owner")
			err = accounts.Update(r.Context(), b.db, &a)
		}
	}
	w.WriteHeader(pgcc.HTTPStatus(err))
}

// call runs one request against handler and returns the status.
func call(handler http.HandlerFunc, target string, header ...string) int {
	req := httptest.NewRequest(http.MethodPost, target, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	handler(rec, req)
	return rec.Code
}

// faultPool starts a server whose template holds the service's schema, and opens a FaultPool on a database
// copied from it. A test does this with pgcctest.Main in TestMain and db.FaultPool(t); an example has no t.
func faultPool(ctx context.Context) (*pgcctest.FaultPool, func(), error) {
	srv, err := pgcctest.Start(ctx, pgcctest.SQL(serviceSchema))
	if err != nil {
		return nil, nil, err
	}
	db, err := srv.CreateDB(ctx)
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	cfg, err := db.PoolConfig()
	if err == nil {
		var p *pgcctest.FaultPool
		if p, err = pgcctest.OpenFaultPool(ctx, cfg); err == nil {
			return p, func() { p.Close(); _ = db.Drop(ctx); srv.Close() }, nil
		}
	}
	_ = db.Drop(ctx)
	srv.Close()
	return nil, nil, err
}

func balances(ctx context.Context, p *pgcctest.FaultPool) string {
	var s string
	_ = p.Direct().QueryRow(ctx, "SELECT string_agg(id || ':' || balance, ' ' ORDER BY id) FROM accounts").Scan(&s)
	return s
}

// A handler survives serialization failures: the first two COMMITs of the transfer fail with 40001, as under
// contention, and the client still gets 200 with the money moved once.
func ExampleFaultPool_FailCommit() {
	ctx := context.Background()
	p, done, err := faultPool(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer done()
	b := &bank{db: p}

	p.FailCommit(pgerrcode.SerializationFailure, pgcctest.Times(2))
	fmt.Println("status:", call(b.transfer, "/transfer?from=1&to=2&amount=30"))
	fmt.Println("retries:", b.retries)
	fmt.Println("balances:", balances(ctx, p))
	// Output:
	// status: 200
	// retries: 2
	// balances: 1:70 2:80
}

// A lock someone else holds (55P03 on the transfer's first statement, the advisory lock) becomes 423 Locked,
// and a deadlock that keeps coming back until the retries run out becomes 409 Conflict. Nothing is moved.
func ExampleFaultPool_FailStatement() {
	ctx := context.Background()
	p, done, err := faultPool(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer done()
	b := &bank{db: p}

	p.FailStatement(1, pgerrcode.LockNotAvailable)
	fmt.Println("lock not available:", call(b.transfer, "/transfer?from=1&to=2&amount=30"))

	f := p.FailStatement(3, pgerrcode.DeadlockDetected, pgcctest.Always())
	fmt.Println("deadlock on every attempt:", call(b.transfer, "/transfer?from=1&to=2&amount=30"))
	f.Remove()
	fmt.Println("attempts:", f.Fired())
	fmt.Println("balances:", balances(ctx, p))
	// Output:
	// lock not available: 423
	// deadlock on every attempt: 409
	// attempts: 10
	// balances: 1:100 2:50
}

// The transfer's COMMIT reaches the server and its answer is lost. Without an idempotency key the handler
// cannot know whether the money moved, and says 500; with one, txn.Run finds out that it did and the handler
// says 200, without moving it twice.
func ExampleFaultPool_LoseCommitReply() {
	ctx := context.Background()
	p, done, err := faultPool(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer done()
	b := &bank{db: p}

	p.LoseCommitReply()
	fmt.Println("no key:", call(b.transfer, "/transfer?from=1&to=2&amount=10"))
	p.LoseCommitReply()
	fmt.Println("with a key:", call(b.transfer, "/transfer?from=1&to=2&amount=10", "Idempotency-Key", "t-2"))
	fmt.Println("balances:", balances(ctx, p))
	// Output:
	// no key: 500
	// with a key: 200
	// balances: 1:80 2:70
}

// Someone else renames the account between the handler's read and its write: the client's If-Match is stale
// and it gets 412 Precondition Failed; the other writer's change stands.
func ExampleConflictOnce() {
	ctx := context.Background()
	p, done, err := faultPool(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer done()
	b := &bank{db: p}

	f := pgcctest.ConflictOnce(p, accounts, pgcc.Key{int64(1)}, func(a *Account) { a.Owner = "eve" })
	fmt.Println("status:", call(b.rename, "/rename?id=1&owner=zoe", "If-Match", repo.ETag(1)))
	fmt.Println("concurrent writes:", f.Fired())
	a, _ := accounts.Get(ctx, p.Direct(), pgcc.Key{int64(1)})
	fmt.Println("owner:", a.Owner, "version:", a.Version)
	// Output:
	// status: 412
	// concurrent writes: 1
	// owner: eve version: 2
}

// Table.Modify retries a conflict by itself: with one concurrent write forced between its read and its write,
// fn runs exactly twice and both changes are kept.
func ExampleConflictOnce_modify() {
	ctx := context.Background()
	p, done, err := faultPool(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer done()

	pgcctest.ConflictOnce(p, accounts, pgcc.Key{int64(2)}, func(a *Account) { a.Balance += 5 })
	calls := 0
	a, err := accounts.Modify(ctx, p, pgcc.Key{int64(2)}, func(_ context.Context, a *Account) error {
		calls++
		a.Owner = strings.ToUpper(a.Owner)
		return nil
	})
	fmt.Println(a.Owner, a.Balance, a.Version, calls, errors.Is(err, pgcc.ErrConflict))
	// Output:
	// BOB 55 3 2 false
}
