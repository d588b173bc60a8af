// Package poolers_test runs every pgcc feature through PgBouncer, under each pgx query exec mode that can work
// behind transaction pooling (cache_describe, exec, simple_protocol) and in session pooling, with concurrent
// workers and the same exact invariants as the direct tests: bank totals conserved, counters equal to the
// operations acknowledged, each queue job processed once, each idempotency key applied once (a COMMIT whose
// reply is lost between client and pooler settled by its key's look-up through the pooler), fencing tokens
// strictly increasing, session locks refused through transaction pooling and exclusive through session
// pooling.
//
// # The harness behind a pooler
//
// Each test database is created directly on the server, cloned from the migrated template as everywhere else
// (internal/pgtest); only the test's own traffic goes through the pooler, which maps every database name to
// the same name on the server (a `*` entry in its [databases] section). Cloning through the pooler cannot
// work: CREATE DATABASE … TEMPLATE needs the template to have no other session, and a pooler keeps its server
// connection to a database open after its client has gone (server_idle_timeout, ten minutes by default), so
// the next clone fails with "source database … is being accessed by other users" (SQLSTATE 55006). Nothing
// here ever connects to the template through the pooler.
//
// # An external pooler
//
// PGCC_TEST_POOLER_URL points the transaction-mode cases at a pooler of your own instead of the PgBouncer
// the suite starts: a connection string whose database part is replaced by each test's database, so the
// pooler must route any database name to the test server (`* = host=… port=…`) in pool_mode = transaction.
// The session-mode cases always use a PgBouncer of the suite's own, and are skipped when it is not installed.
package poolers_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgbouncer"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/internal/testdb"
	"github.com/pgcc/pgcc/lease"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// EnvPoolerURL names the environment variable pointing the transaction-mode cases at an external pooler.
const EnvPoolerURL = "PGCC_TEST_POOLER_URL"

// The sizes of every case: workers goroutines on a pool of at most maxConns client connections, which the
// transaction-mode pooler multiplexes over txServerConns server connections.
const (
	workers       = 8
	maxConns      = 8
	txServerConns = 3
	// sessionServerConns must exceed every client connection that may be open at once: in session mode each
	// holds a server one, and one queued for a server connection waits until another client disconnects. The
	// lost-COMMIT case has the pool's maxConns, and each worker's key look-up may open two of its own beside
	// them (once, with 10, a look-up's connection queued behind idle pooled ones until its context ended).
	sessionServerConns = 3*maxConns + 2
)

// mode is one way of reaching the server through a pooler.
type mode struct {
	name string
	pool pgbouncer.PoolMode
	exec pgx.QueryExecMode
}

// modes are every combination that can work: transaction pooling with the three exec modes that prepare
// nothing on a server connection across transactions, session pooling with pgx's default. (cache_statement
// through transaction pooling fails with 42P05/26000: its prepared statements live on a server connection
// the next transaction may not get.)
var modes = []mode{
	{"transaction/cache_describe", pgbouncer.TransactionMode, pgx.QueryExecModeCacheDescribe},
	{"transaction/exec", pgbouncer.TransactionMode, pgx.QueryExecModeExec},
	{"transaction/simple_protocol", pgbouncer.TransactionMode, pgx.QueryExecModeSimpleProtocol},
	{"session/cache_statement", pgbouncer.SessionMode, pgx.QueryExecModeCacheStatement},
}

// env is one case's database, reached through the pooler (pool) and directly (direct, for setup and checks).
type env struct {
	mode   mode
	pool   *pgxpool.Pool
	direct *pgxpool.Pool
}

// feature is one scenario run under every mode.
type feature struct {
	name string
	run  func(t *testing.T, e *env)
}

var features = []feature{
	{"txn.Run/bank", testBank},
	{"repo.Modify", testModify},
	{"repo.UpdateAll", testUpdateAll},
	{"repo.InsertOrGet", testInsertOrGet},
	{"lock.Load", testLockLoad},
	{"lock.Row+Rows", testLockRowRows},
	{"lock.Claim", testClaim},
	{"lock.NoWait", testNoWait},
	{"lock.XactLock", testXactLock},
	{"lock.SessionLock", testSessionLock},
	{"lease", testLease},
	{"txn.WithIdempotencyKey", testIdempotency},
	{"txn.WithIdempotencyKey(lost COMMIT)", testLostCommitLookUp},
}

// TestThroughPgBouncer runs every feature under every mode. The modes run in parallel, the features of one
// mode one after the other, which bounds the server connections the suite holds at once.
func TestThroughPgBouncer(t *testing.T) {
	t.Parallel()
	// The server pgtest found; the examples' database is on it. (A database of this test's own would put the
	// parent test under the watchdog, which sees no statement of its own while the subtests run.)
	cfg, err := pgx.ParseConfig(os.Getenv(pgtest.EnvExampleDatabaseURL))
	if err != nil {
		t.Fatal(err)
	}
	poolerDSN := map[pgbouncer.PoolMode]func(db string) string{}
	if ext := os.Getenv(EnvPoolerURL); ext != "" {
		poolerDSN[pgbouncer.TransactionMode] = func(db string) string { return withDatabase(t, ext, db) }
		t.Logf("transaction-mode cases through %s", EnvPoolerURL)
	} else {
		b := pgbouncer.Start(t, pgbouncer.Config{ServerHost: cfg.Host, ServerPort: int(cfg.Port),
			PoolMode: pgbouncer.TransactionMode, PoolSize: txServerConns})
		poolerDSN[pgbouncer.TransactionMode] = b.DSN
	}
	s := pgbouncer.Start(t, pgbouncer.Config{ServerHost: cfg.Host, ServerPort: int(cfg.Port),
		PoolMode: pgbouncer.SessionMode, PoolSize: sessionServerConns})
	poolerDSN[pgbouncer.SessionMode] = s.DSN

	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			// One database per mode, its features one after the other, each starting by recreating its
			// tables: a database per feature would cost a DROP DATABASE (a checkpoint) each.
			db := pgtest.NewDB(t)
			e := &env{mode: m, direct: db.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 2 })}
			dsn := poolerDSN[m.pool](db.Name)
			e.pool = db.Pool(t, func(c *pgxpool.Config) {
				pc, err := pgxpool.ParseConfig(dsn)
				if err != nil {
					t.Fatal(err)
				}
				c.ConnConfig.Host, c.ConnConfig.Port, c.ConnConfig.Fallbacks = pc.ConnConfig.Host, pc.ConnConfig.Port, nil
				c.ConnConfig.User, c.ConnConfig.Password = pc.ConnConfig.User, pc.ConnConfig.Password
				c.ConnConfig.TLSConfig = pc.ConnConfig.TLSConfig
				c.ConnConfig.DefaultQueryExecMode = m.exec
				c.MaxConns = maxConns
			})
			for _, f := range features {
				t.Run(f.name, func(t *testing.T) { f.run(t, e) })
			}
		})
	}
}

// withDatabase returns the URL dsn with its database replaced by db.
func withDatabase(t *testing.T, dsn, db string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("%s: %v", EnvPoolerURL, err)
	}
	u.Path, u.RawPath = "/"+db, ""
	return u.String()
}

// parallel runs fn(w) on workers goroutines and returns the first error any returned.
func parallel(n int, fn func(w int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = fn(w)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// caseCtx bounds one case: a case that cannot finish in time fails instead of hanging.
func caseCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustExec(t *testing.T, db *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t *testing.T, db *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// Account is a row of the bank: balances move between accounts, their sum never changes.
type Account struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
	Version int64 `db:"version"`
}

const accountsN = 4

// bank creates accounts 1..accountsN with balance 100 each, version 1, and returns their table.
func bank(t *testing.T, e *env) *repo.Table[Account] {
	t.Helper()
	mustExec(t, e.direct, `DROP TABLE IF EXISTS accounts`)
	mustExec(t, e.direct, `CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, version bigint NOT NULL)`)
	mustExec(t, e.direct, `INSERT INTO accounts SELECT g, 100, 1 FROM generate_series(1, $1::int) g`, accountsN)
	accounts, err := repo.NewTable[Account]("accounts")
	if err != nil {
		t.Fatal(err)
	}
	return accounts
}

// checkBank asserts the bank's total and the sum of its versions.
func checkBank(t *testing.T, e *env, wantVersions int64) {
	t.Helper()
	sum := queryInt(t, e.direct, `SELECT sum(balance) FROM accounts`)
	versions := queryInt(t, e.direct, `SELECT sum(version) FROM accounts`)
	if sum != 100*accountsN || versions != wantVersions {
		t.Errorf("total %d, versions %d; want %d and %d", sum, versions, 100*accountsN, wantVersions)
	}
}

// retryConflicts is txn.Run's policy for optimistic transfers: a version conflict retries the transaction as
// a serialization failure would.
func retryConflicts(retries *atomic.Int64) []txn.Option {
	return []txn.Option{
		txn.WithMaxAttempts(txn.UnlimitedAttempts),
		txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 20 * time.Millisecond}),
		txn.RetryIf(func(err error) bool { return errors.Is(err, pgcc.ErrConflict) || txn.Retryable(err) }),
		txn.OnRetry(func(int, error, time.Duration) { retries.Add(1) }),
	}
}

// testBank: transfers under SERIALIZABLE with repo Get/Update inside txn.Run; serialization failures and
// version conflicts are retried until every transfer committed once.
func testBank(t *testing.T, e *env) {
	accounts := bank(t, e)
	ctx := caseCtx(t)
	const each = 15
	var retries atomic.Int64
	opts := append(retryConflicts(&retries), txn.WithIsolation(pgx.Serializable))
	err := parallel(workers, func(w int) error {
		for i := range each {
			from, to := int64((w+i)%accountsN+1), int64((w+i+1)%accountsN+1)
			err := txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
				a, err := accounts.Get(ctx, tx, pgcc.Key{from})
				if err != nil {
					return err
				}
				b, err := accounts.Get(ctx, tx, pgcc.Key{to})
				if err != nil {
					return err
				}
				a.Balance, b.Balance = a.Balance-1, b.Balance+1
				if err := accounts.Update(ctx, tx, &a); err != nil {
					return err
				}
				return accounts.Update(ctx, tx, &b)
			}, opts...)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkBank(t, e, accountsN+2*workers*each)
	t.Logf("%d retries", retries.Load())
}

// testModify: concurrent Modify increments of one row; every increment lands once.
func testModify(t *testing.T, e *env) {
	accounts := bank(t, e)
	ctx := caseCtx(t)
	const each = 15
	err := parallel(workers, func(int) error {
		for range each {
			_, err := accounts.Modify(ctx, e.pool, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error {
				a.Balance++
				return nil
			}, txn.WithMaxAttempts(txn.UnlimitedAttempts))
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if b, v := queryInt(t, e.direct, `SELECT balance FROM accounts WHERE id = 1`), queryInt(t, e.direct, `SELECT version FROM accounts WHERE id = 1`); b != 100+workers*each || v != 1+workers*each {
		t.Errorf("balance %d, version %d; want %d and %d", b, v, 100+workers*each, 1+workers*each)
	}
}

// testUpdateAll: each transfer moves one unit within a pair of accounts, both rows written by one UpdateAll; a
// version conflict on either rolls the batch back and txn.Run retries it. (The UPDATE locks its rows in the
// order the plan meets them, not in key order, so two batches on one pair can deadlock: 40P01, retried after
// deadlock_timeout. Lock the rows first with lock.Load where that matters.)
func testUpdateAll(t *testing.T, e *env) {
	accounts := bank(t, e)
	ctx := caseCtx(t)
	const each = 5
	var retries atomic.Int64
	err := parallel(workers, func(w int) error {
		for i := range each {
			first := int64(1 + (w+i)%2*2) // pair 1→2 or 3→4
			err := txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
				a, err := accounts.Get(ctx, tx, pgcc.Key{first})
				if err != nil {
					return err
				}
				b, err := accounts.Get(ctx, tx, pgcc.Key{first + 1})
				if err != nil {
					return err
				}
				a.Balance--
				b.Balance++
				return accounts.UpdateAll(ctx, tx, []*Account{&a, &b})
			}, retryConflicts(&retries)...)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkBank(t, e, accountsN+2*workers*each)
	if got := queryInt(t, e.direct, `SELECT sum(balance) FROM accounts WHERE id IN (2, 4)`); got != 200+workers*each {
		t.Errorf("accounts 2 and 4 hold %d, want %d", got, 200+workers*each)
	}
	t.Logf("%d retries", retries.Load())
}

// testInsertOrGet: every worker get-or-creates the same keys; each key is created exactly once.
func testInsertOrGet(t *testing.T, e *env) {
	accounts := bank(t, e)
	ctx := caseCtx(t)
	const keys = 12
	var created atomic.Int64
	err := parallel(workers, func(w int) error {
		for k := range keys {
			id := int64(100 + (k+w)%keys)
			row := Account{ID: id, Balance: int64(w)}
			ok, err := accounts.InsertOrGet(ctx, e.pool, &row)
			if err != nil {
				return err
			}
			if ok {
				created.Add(1)
			}
			if row.ID != id || row.Version != 1 {
				return fmt.Errorf("InsertOrGet(%d) gave %+v", id, row)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if created.Load() != keys || queryInt(t, e.direct, `SELECT count(*) FROM accounts WHERE id >= 100`) != keys {
		t.Errorf("created %d rows, want %d", created.Load(), keys)
	}
}

// testLockLoad: pessimistic transfers, both accounts locked by one Load in key order: no conflict, no
// deadlock, nothing to retry.
func testLockLoad(t *testing.T, e *env) {
	accounts := bank(t, e)
	ctx := caseCtx(t)
	const each = 15
	var retries atomic.Int64
	err := parallel(workers, func(w int) error {
		for i := range each {
			from, to := int64((w+i)%accountsN+1), int64((w+i+1)%accountsN+1)
			err := txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
				rows, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{from}, {to}})
				if err != nil {
					return err
				}
				if rows[0].ID != from || rows[1].ID != to {
					return fmt.Errorf("Load(%d, %d) returned %d, %d", from, to, rows[0].ID, rows[1].ID)
				}
				rows[0].Balance--
				rows[1].Balance++
				return accounts.UpdateAll(ctx, tx, []*Account{&rows[0], &rows[1]})
			}, txn.OnRetry(func(int, error, time.Duration) { retries.Add(1) }))
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkBank(t, e, accountsN+2*workers*each)
	if retries.Load() != 0 {
		t.Errorf("%d retries; locking both rows in key order must leave nothing to retry", retries.Load())
	}
}

// testLockRowRows: read-modify-write in two statements, made safe by Row (one account) and Rows (two).
func testLockRowRows(t *testing.T, e *env) {
	accounts := bank(t, e)
	ctx := caseCtx(t)
	const each = 10
	err := parallel(workers, func(w int) error {
		for i := range each {
			err := txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
				if w%2 == 0 {
					if err := lock.Row(ctx, tx, accounts, pgcc.Key{int64(1)}); err != nil {
						return err
					}
					var b int64
					if err := tx.QueryRow(ctx, `SELECT balance FROM accounts WHERE id = 1`).Scan(&b); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `UPDATE accounts SET balance = $1 WHERE id = 1`, b+1)
					return err
				}
				keys, err := lock.Rows(ctx, tx, accounts, []pgcc.Key{{int64(3)}, {int64(2 + i%2*2)}})
				if err != nil {
					return err
				}
				if len(keys) != 2 {
					return fmt.Errorf("Rows locked %v", keys)
				}
				var b2, b3, b4 int64
				if err := tx.QueryRow(ctx, `SELECT (SELECT balance FROM accounts WHERE id = 2), (SELECT balance FROM accounts WHERE id = 3), (SELECT balance FROM accounts WHERE id = 4)`).Scan(&b2, &b3, &b4); err != nil {
					return err
				}
				other, bo := int64(2), b2
				if i%2 == 1 {
					other, bo = 4, b4
				}
				if _, err := tx.Exec(ctx, `UPDATE accounts SET balance = $1 WHERE id = 3`, b3-1); err != nil {
					return err
				}
				_, err = tx.Exec(ctx, `UPDATE accounts SET balance = $1 WHERE id = $2`, bo+1, other)
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Even workers added workers/2*each to account 1; odd workers moved units from 3 to 2 and 4.
	want := int64(100*accountsN + workers/2*each)
	if sum := queryInt(t, e.direct, `SELECT sum(balance) FROM accounts`); sum != want {
		t.Errorf("total %d, want %d (lost updates)", sum, want)
	}
	if b1 := queryInt(t, e.direct, `SELECT balance FROM accounts WHERE id = 1`); b1 != 100+workers/2*each {
		t.Errorf("account 1: %d, want %d", b1, 100+workers/2*each)
	}
}

// Job is a row of a work queue: no version column, described for lock by lock.NewTable.
type Job struct {
	ID        int64 `db:"id"`
	Processed int64 `db:"processed"`
}

// testClaim: workers drain a queue with Claim (SKIP LOCKED); every job is processed exactly once.
func testClaim(t *testing.T, e *env) {
	const jobs = 120
	mustExec(t, e.direct, `DROP TABLE IF EXISTS jobs`)
	mustExec(t, e.direct, `CREATE TABLE jobs (id bigint PRIMARY KEY, processed bigint NOT NULL DEFAULT 0)`)
	mustExec(t, e.direct, `INSERT INTO jobs (id) SELECT generate_series(1, $1::int)`, jobs)
	queue, err := lock.NewTable[Job]("jobs")
	if err != nil {
		t.Fatal(err)
	}
	ctx := caseCtx(t)
	var claimed atomic.Int64
	err = parallel(workers, func(int) error {
		for {
			n, err := txn.RunValue(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) (int, error) {
				batch, err := lock.Claim(ctx, tx, queue, 5, lock.Where("processed = 0"))
				if err != nil {
					return 0, err
				}
				ids := make([]int64, len(batch))
				for k, j := range batch {
					ids[k] = j.ID
				}
				_, err = tx.Exec(ctx, `UPDATE jobs SET processed = processed + 1 WHERE id = ANY($1)`, ids)
				return len(batch), err
			})
			if err != nil {
				return err
			}
			if n == 0 {
				return nil
			}
			claimed.Add(int64(n))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if claimed.Load() != jobs || queryInt(t, e.direct, `SELECT count(*) FROM jobs WHERE processed <> 1`) != 0 {
		t.Errorf("claimed %d of %d; jobs not processed exactly once: %d", claimed.Load(), jobs,
			queryInt(t, e.direct, `SELECT count(*) FROM jobs WHERE processed <> 1`))
	}
}

// testNoWait: a row held by one transaction is refused at once to another, as ErrLockNotAvailable naming the
// holder by its real backend pid (not the pooler's cancel key).
func testNoWait(t *testing.T, e *env) {
	accounts := bank(t, e)
	ctx := caseCtx(t)
	holder, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(context.Background())
	if err := lock.Row(ctx, holder, accounts, pgcc.Key{int64(1)}); err != nil {
		t.Fatal(err)
	}
	var holderPID int
	if err := holder.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holderPID); err != nil {
		t.Fatal(err)
	}
	var refused atomic.Int64
	err = parallel(workers/2, func(int) error {
		err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			return lock.Row(ctx, tx, accounts, pgcc.Key{int64(1)}, lock.WithWait(lock.NoWait), lock.WithDiagnostics(e.direct))
		})
		var le *pgcc.LockError
		if !errors.Is(err, pgcc.ErrLockNotAvailable) || !errors.As(err, &le) {
			return fmt.Errorf("NOWAIT on a held row: %v", err)
		}
		if len(le.Blockers) != 1 || le.Blockers[0].PID != holderPID {
			return fmt.Errorf("blockers %v, want backend %d", le.Blockers, holderPID)
		}
		refused.Add(1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		return lock.Row(ctx, tx, accounts, pgcc.Key{int64(1)}, lock.WithWait(lock.NoWait))
	})
	if err != nil || refused.Load() != workers/2 {
		t.Errorf("after the holder ended: %v; refused %d", err, refused.Load())
	}
}

// counter creates a one-row counter table.
func counter(t *testing.T, e *env) {
	t.Helper()
	mustExec(t, e.direct, `DROP TABLE IF EXISTS counter`)
	mustExec(t, e.direct, `CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL, last_token bigint NOT NULL DEFAULT 0)`)
	mustExec(t, e.direct, `INSERT INTO counter (id, n) VALUES (1, 0)`)
}

// incrementUnsafely reads the counter and writes it back in two statements: only a lock makes it exact.
func incrementUnsafely(ctx context.Context, db pgcc.DBTX) error {
	var n int64
	if err := db.QueryRow(ctx, `SELECT n FROM counter WHERE id = 1`).Scan(&n); err != nil {
		return err
	}
	_, err := db.Exec(ctx, `UPDATE counter SET n = $1 WHERE id = 1`, n+1)
	return err
}

// testXactLock: a transaction-scoped advisory lock serialises read-modify-write increments.
func testXactLock(t *testing.T, e *env) {
	counter(t, e)
	ctx := caseCtx(t)
	const each = 15
	key := lock.StringKey("pgcc-test", "xact")
	err := parallel(workers, func(int) error {
		for range each {
			err := txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
				if err := lock.XactLock(ctx, tx, key); err != nil {
					return err
				}
				return incrementUnsafely(ctx, tx)
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, e.direct, `SELECT n FROM counter`); n != workers*each {
		t.Errorf("counter %d, want %d", n, workers*each)
	}
}

// testSessionLock: through transaction pooling every session lock is refused with ErrTransactionPooling and
// none is ever granted or left behind; through session pooling the lock is exclusive and makes
// read-modify-write increments in separate autocommitted statements exact.
func testSessionLock(t *testing.T, e *env) {
	counter(t, e)
	ctx := caseCtx(t)
	key := lock.StringKey("pgcc-test", "session")
	var holding, maxHolding, granted, refused atomic.Int64
	enter := func() {
		granted.Add(1)
		n := holding.Add(1)
		for m := maxHolding.Load(); n > m && !maxHolding.CompareAndSwap(m, n); m = maxHolding.Load() {
		}
	}
	if e.mode.pool == pgbouncer.TransactionMode {
		const tries = 10
		err := parallel(workers, func(int) error {
			for range tries {
				h, ok, err := lock.TrySessionLock(ctx, e.pool, key)
				switch {
				case errors.Is(err, pgcc.ErrTransactionPooling):
					refused.Add(1)
					continue
				case err != nil:
					return err
				case ok:
					enter()
					holding.Add(-1)
					if err := h.Release(ctx); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		left := queryInt(t, e.direct, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
		if granted.Load() != 0 || refused.Load() != workers*tries || left != 0 || maxHolding.Load() > 1 {
			t.Errorf("granted %d, refused %d of %d, %d advisory locks left on server sessions; want 0, all, 0",
				granted.Load(), refused.Load(), workers*tries, left)
		}
		return
	}
	// Session mode. Fewer workers than connections: a holder needs a second connection for its statements
	// while the others wait for the lock on theirs.
	const lockers, each = maxConns / 2, 10
	err := parallel(lockers, func(int) error {
		for range each {
			h, err := lock.SessionLock(ctx, e.pool, key, lock.WithTimeout(30*time.Second))
			if err != nil {
				return err
			}
			enter()
			err = incrementUnsafely(ctx, e.pool)
			holding.Add(-1)
			if rerr := h.Release(ctx); err == nil {
				err = rerr
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, e.direct, `SELECT n FROM counter`); n != lockers*each || maxHolding.Load() != 1 {
		t.Errorf("counter %d (want %d), at most %d holders at once (want 1)", n, lockers*each, maxHolding.Load())
	}
}

// testLease: workers compete for one lease; each grant renews, writes under Guard, and releases. Grants never
// overlap, tokens strictly increase in the order of the guarded writes, and every grant wrote once.
func testLease(t *testing.T, e *env) {
	counter(t, e)
	ctx := caseCtx(t)
	leases := lease.New(e.pool)
	const each = 4
	var grants, holding, maxHolding atomic.Int64
	err := parallel(workers, func(w int) error {
		for done := 0; done < each; {
			l, err := leases.TryAcquire(ctx, "job", fmt.Sprintf("worker-%d", w), 10*time.Second)
			if errors.Is(err, pgcc.ErrHeld) {
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				return err
			}
			n := holding.Add(1)
			for m := maxHolding.Load(); n > m && !maxHolding.CompareAndSwap(m, n); m = maxHolding.Load() {
			}
			err = l.Renew(ctx)
			if err == nil {
				err = txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					if err := lease.Guard(ctx, tx, l.Name, l.Token); err != nil {
						return err
					}
					tag, err := tx.Exec(ctx, `UPDATE counter SET n = n + 1, last_token = $1 WHERE id = 1 AND last_token < $1`, l.Token)
					if err == nil && tag.RowsAffected() != 1 {
						err = fmt.Errorf("token %d is not greater than the last one written", l.Token)
					}
					return err
				})
			}
			holding.Add(-1)
			if rerr := l.Release(ctx); err == nil {
				err = rerr
			}
			if err != nil {
				return err
			}
			grants.Add(1)
			done++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, e.direct, `SELECT n FROM counter`); n != workers*each || grants.Load() != workers*each || maxHolding.Load() != 1 {
		t.Errorf("guarded writes %d, grants %d (want %d), at most %d holders at once (want 1)", n, grants.Load(), workers*each, maxHolding.Load())
	}
	// A holder whose lease was taken over is fenced.
	old, err := leases.TryAcquire(ctx, "short", "old", 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := leases.Acquire(ctx, "short", "new", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	err = txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error { return lease.Guard(ctx, tx, old.Name, old.Token) })
	if !errors.Is(err, pgcc.ErrFenced) {
		t.Errorf("Guard with a superseded token: %v, want ErrFenced", err)
	}
	if err := old.Renew(ctx); err == nil {
		t.Error("Renew of a superseded grant succeeded")
	}
}

// testIdempotency: every worker runs the same keyed increments; each key applies exactly once, every other
// attempt reports ErrAlreadyApplied.
func testIdempotency(t *testing.T, e *env) {
	counter(t, e)
	ctx := caseCtx(t)
	const keys = 6
	var applied, already atomic.Int64
	err := parallel(workers, func(w int) error {
		for k := range keys {
			key := fmt.Sprintf("increment:%d", (k+w)%keys)
			err := txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
				_, err := tx.Exec(ctx, `UPDATE counter SET n = n + 1 WHERE id = 1`)
				return err
			}, txn.WithIdempotencyKey(key))
			switch {
			case err == nil:
				applied.Add(1)
			case errors.Is(err, pgcc.ErrAlreadyApplied):
				already.Add(1)
			default:
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, e.direct, `SELECT n FROM counter`); n != keys || applied.Load() != keys || already.Load() != (workers-1)*keys {
		t.Errorf("counter %d, applied %d, already applied %d; want %d, %d, %d", n, applied.Load(), already.Load(), keys, keys, (workers-1)*keys)
	}
}

// testLostCommitLookUp: the reply to a keyed transaction's COMMIT is lost between the client and the pooler
// (it committed; the client's connection is reset), and the key's look-up, on a connection of its own through
// the pooler or one of the pool's, settles it: Run returns nil and the increment is applied once. Concurrent
// workers keep the pooler's server connections busy meanwhile.
func testLostCommitLookUp(t *testing.T, e *env) {
	counter(t, e)
	ctx := caseCtx(t)
	// In session mode e.pool's idle connections would keep their server connections while the proxied pool
	// below opens its own: close them.
	e.pool.Reset()
	pc := e.pool.Config()
	proxy := faultnet.Start(t, net.JoinHostPort(pc.ConnConfig.Host, strconv.Itoa(int(pc.ConnConfig.Port))))
	host, port, err := net.SplitHostPort(proxy.Addr())
	if err != nil {
		t.Fatal(err)
	}
	portNum, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	pc.ConnConfig.Host, pc.ConnConfig.Port = host, uint16(portNum)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	const each = 5
	lose := proxy.OnQuery(faultnet.IsCommit, faultnet.LoseReply, faultnet.Times(workers*each/2), faultnet.Probability(0.5))
	var settled atomic.Int64
	err = parallel(workers, func(w int) error {
		for i := range each {
			err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
				_, err := tx.Exec(ctx, `UPDATE counter SET n = n + 1 WHERE id = 1`)
				return err
			}, txn.WithIdempotencyKey(fmt.Sprintf("lost:%d:%d", w, i)))
			if err != nil {
				return fmt.Errorf("worker %d, key %d: %w", w, i, err)
			}
			settled.Add(1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if lose.Fired() == 0 {
		t.Fatal("no COMMIT reply was lost")
	}
	if n := queryInt(t, e.direct, `SELECT n FROM counter`); n != workers*each || settled.Load() != workers*each {
		t.Errorf("counter %d after %d calls returned nil; want %d, each applied once (%d COMMIT replies lost)", n, settled.Load(), workers*each, lose.Fired())
	}
	// A connection the loss broke counts as acquired until pgx has closed it: a grace, as for every pool.
	if n := testdb.AwaitReleased(pool, testdb.LeakGrace); n != 0 {
		t.Errorf("%d connections left acquired", n)
	}
	t.Logf("%d COMMIT replies lost between client and pooler, every one settled by its key", lose.Fired())
}
